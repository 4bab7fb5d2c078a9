"""CUDA backend: the Triton kernels of ``fastprm.kernels`` (imported on first use, so Triton stays optional).

Each function has the contract of its CPU counterpart in ``cpu.py``. float64 exists for gradcheck only: it
takes the reference, which computes it exactly.
"""

from __future__ import annotations

import torch

from ...kernels.contract import check_steps
from .reference import reference_backward, reference_forward


def find_steps(input_ids, cu_seqlens, sep_token_ids):
    """``fastprm::find_steps`` on CUDA."""
    from fastprm.kernels import score_steps as triton_kernels

    return triton_kernels.find_steps(input_ids, cu_seqlens, sep_token_ids)


def score_steps_forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold):
    """``fastprm::score_steps_forward`` on CUDA."""
    if hidden.dtype == torch.float64:
        check_steps(step_index, cu_steps, hidden.shape[0])
        return reference_forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold)
    from fastprm.kernels import score_steps as triton_kernels

    return triton_kernels.forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold)


def score_steps_backward(grad_step_logits, hidden, weight, step_index):
    """``fastprm::score_steps_backward`` on CUDA."""
    if hidden.dtype == torch.float64:
        return reference_backward(grad_step_logits, hidden, weight, step_index)
    from fastprm.kernels import score_steps as triton_kernels

    return triton_kernels.backward(grad_step_logits, hidden, weight, step_index)
