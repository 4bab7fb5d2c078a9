"""CUDA backend: the Triton kernels of ``fastprm.kernels`` (imported on first use, so Triton stays optional).

float64 exists for gradcheck only: it takes the reference, which computes it exactly.
"""

from __future__ import annotations

import torch

from .contract import check_steps
from .reference import reference_backward, reference_forward


def find_steps(
    input_ids: torch.Tensor, cu_seqlens: torch.Tensor, sep_token_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fastprm::find_steps`` on CUDA (contract of ``cpu.find_steps``)."""
    from fastprm.kernels import score_steps as triton_kernels

    return triton_kernels.find_steps(input_ids, cu_seqlens, sep_token_ids)


def score_steps_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    step_index: torch.Tensor,
    cu_steps: torch.Tensor,
    positive_class: int,
    threshold: float,
) -> tuple[torch.Tensor, ...]:
    """``fastprm::score_steps_forward`` on CUDA (contract of ``cpu.score_steps_forward``)."""
    if hidden.dtype == torch.float64:
        check_steps(step_index, cu_steps, hidden.shape[0])
        return reference_forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold)
    from fastprm.kernels import score_steps as triton_kernels

    return triton_kernels.forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold)


def score_steps_backward(
    grad_step_logits: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, step_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``fastprm::score_steps_backward`` on CUDA (contract of ``cpu.score_steps_backward``)."""
    if hidden.dtype == torch.float64:
        return reference_backward(grad_step_logits, hidden, weight, step_index)
    from fastprm.kernels import score_steps as triton_kernels

    return triton_kernels.backward(grad_step_logits, hidden, weight, step_index)
