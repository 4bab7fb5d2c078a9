"""CUDA backend: Triton kernels from ``fastprm.kernels`` (imported on first use, so Triton stays optional)."""

from __future__ import annotations

import torch


@torch.library.register_kernel("fastprm::find_steps", "cuda")
def find_steps(input_ids, cu_seqlens, sep_token_ids):
    from fastprm.kernels import score_steps

    return score_steps.find_steps(input_ids, cu_seqlens, sep_token_ids)


@torch.library.register_kernel("fastprm::score_steps_forward", "cuda")
def score_steps_forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold):
    from fastprm.kernels import score_steps

    return score_steps.forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold)


@torch.library.register_kernel("fastprm::score_steps_backward", "cuda")
def score_steps_backward(grad_step_logits, hidden, weight, step_index):
    from fastprm.kernels import score_steps

    return score_steps.backward(grad_step_logits, hidden, weight, step_index)
