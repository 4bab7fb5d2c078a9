"""CPU backend: the C++ kernels in ``csrc/``, with the reference as the fallback when the extension is missing.

The extension reads the torch tensors itself and re-checks everything it dereferences; outputs come back as
fresh tensors (none shares memory with another, as a registered op's outputs must).
"""

from __future__ import annotations

import torch

from ..._native import native
from .contract import check_steps
from .reference import find_steps_reference, reference_backward, reference_forward


def find_steps(
    input_ids: torch.Tensor, cu_seqlens: torch.Tensor, sep_token_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fastprm::find_steps`` on CPU: input_ids [N] and cu_seqlens [B + 1] int32/int64, sep_token_ids [S]
    int64 -> step_index [K], cu_steps [B + 1] int64."""
    if native is None:
        return find_steps_reference(input_ids, cu_seqlens, sep_token_ids)
    return native.find_steps(input_ids, cu_seqlens, sep_token_ids)


def score_steps_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    step_index: torch.Tensor,
    cu_steps: torch.Tensor,
    positive_class: int,
    threshold: float,
) -> tuple[torch.Tensor, ...]:
    """``fastprm::score_steps_forward`` on CPU (see ``reference.reference_forward`` for the outputs).

    hidden [N, H] float32/bfloat16/float16/float64 with any strides; weight [C, H] and bias [C] of any float
    dtype (used in the accumulator dtype); step_index [K], cu_steps [B + 1] int64.
    """
    if native is None:
        check_steps(step_index, cu_steps, hidden.shape[0])
        return reference_forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold)
    return native.score_forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold)


def score_steps_backward(
    grad_step_logits: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, step_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``fastprm::score_steps_backward`` on CPU: grad_step_logits [K, C] contiguous in the accumulator dtype
    -> grad_hidden [N, H] (hidden's dtype, contiguous), grad_weight [C, H], grad_bias [C]."""
    if native is None:
        return reference_backward(grad_step_logits, hidden, weight, step_index)
    return native.score_backward(grad_step_logits, hidden, weight, step_index)
