"""CPU backend: the C++ kernels in ``csrc/`` (reference fallback when the extension is missing)."""

from __future__ import annotations

import numpy as np
import torch

from ..._native import empty, native
from .naive import check_steps, find_steps_reference, reference_backward, reference_forward
from .schema import accumulator_dtype

# Codes of fastprm::DType in csrc/row_ops.h.
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3}


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Contiguous ``t`` in ``dtype``, without a copy when it already is."""
    return (t if t.dtype == dtype else t.to(dtype)).contiguous()


def _view(t: torch.Tensor) -> np.ndarray:
    """Zero-copy NumPy view; 16-bit floats travel as int16 words."""
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return t.detach().numpy()


def find_steps(input_ids, cu_seqlens, sep_token_ids):
    if native is None:
        return find_steps_reference(input_ids, cu_seqlens, sep_token_ids)
    step_index, cu_steps = native.find_steps(
        _view(input_ids.contiguous()), _view(cu_seqlens.contiguous()), _view(_as(sep_token_ids, torch.int64))
    )
    return torch.from_numpy(step_index), torch.from_numpy(cu_steps)


def score_steps_forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold):
    if native is None:
        check_steps(step_index, cu_steps, hidden.shape[0])
        return reference_forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold)
    acc = accumulator_dtype(hidden.dtype)
    K, B, C = step_index.shape[0], cu_steps.shape[0] - 1, weight.shape[0]
    # Two buffers for the eight outputs (allocation and the NumPy hand-over cost more than small kernels).
    floats = empty(K * C + K + 4 * B, dtype=acc, device="cpu")
    ints = empty(2 * B, dtype=torch.int64, device="cpu")
    forward = native.score_forward_f64 if acc == torch.float64 else native.score_forward_f32
    forward(
        _view(hidden),
        _DTYPE_CODES[hidden.dtype],
        _view(_as(weight, acc)),
        None if bias is None else _view(_as(bias, acc)),
        _view(step_index.contiguous()),
        _view(cu_steps.contiguous()),
        positive_class,
        threshold,
        _view(floats),
        _view(ints),
    )
    step_logits, step_probs, per_sequence = floats.split([K * C, K, 4 * B])
    return (
        step_logits.view(K, C),
        step_probs,
        *per_sequence.view(4, B).unbind(0),
        *ints.view(2, B).unbind(0),
    )


def score_steps_backward(grad_step_logits, hidden, weight, step_index):
    if native is None:
        return reference_backward(grad_step_logits, hidden, weight, step_index)
    acc = accumulator_dtype(hidden.dtype)
    C, H = weight.shape
    grad_hidden = torch.zeros(hidden.shape, dtype=hidden.dtype)
    grad_weight, grad_bias = empty(C, H, dtype=acc, device="cpu"), empty(C, dtype=acc, device="cpu")
    backward = native.score_backward_f64 if acc == torch.float64 else native.score_backward_f32
    backward(
        _view(hidden),
        _DTYPE_CODES[hidden.dtype],
        _view(_as(weight, acc)),
        _view(_as(grad_step_logits, acc)),
        _view(step_index.contiguous()),
        _view(grad_hidden),
        _view(grad_weight),
        _view(grad_bias),
    )
    return grad_hidden, grad_weight, grad_bias


torch.library.register_kernel("fastprm::find_steps", "cpu", find_steps)
torch.library.register_kernel(
    "fastprm::score_steps_forward",
    "cpu",
    # Outputs of a registered op may not alias each other: give each its own storage there.
    lambda *args: tuple(t.clone() for t in score_steps_forward(*args)),
)
torch.library.register_kernel("fastprm::score_steps_backward", "cpu", score_steps_backward)
