"""CPU backend: the C++ kernels in ``csrc/`` (reference fallback when the extension is missing)."""

from __future__ import annotations

import numpy as np
import torch

from ..._native import empty, native
from .naive import check_steps, find_steps_reference, reference_backward, reference_forward
from .schema import accumulator_dtype

# Codes of fastprm::DType in csrc/row_ops.h.
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3}


def _view(t: torch.Tensor) -> np.ndarray:
    """Zero-copy NumPy view; 16-bit floats travel as int16 words."""
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return t.detach().numpy()


def find_steps(input_ids, cu_seqlens, sep_token_ids):
    if native is None:
        return find_steps_reference(input_ids, cu_seqlens, sep_token_ids)
    input_ids, cu_seqlens = input_ids.contiguous(), cu_seqlens.contiguous()
    seps = sep_token_ids.to(torch.int64).contiguous()
    counts = torch.from_numpy(native.find_steps_counts(_view(input_ids), _view(cu_seqlens), _view(seps)))
    cu_steps = torch.zeros(cu_seqlens.shape[0], dtype=torch.int64)
    torch.cumsum(counts, 0, out=cu_steps[1:])
    step_index = empty(int(cu_steps[-1]), dtype=torch.int64, device="cpu")
    native.find_steps_fill(
        _view(input_ids), _view(cu_seqlens), _view(seps), _view(cu_steps), _view(step_index)
    )
    return step_index, cu_steps


def score_steps_forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold):
    if native is None:
        check_steps(step_index, cu_steps, hidden.shape[0])
        return reference_forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold)
    acc = accumulator_dtype(hidden.dtype)
    K, B, C = step_index.shape[0], cu_steps.shape[0] - 1, weight.shape[0]
    outputs = (
        empty(K, C, dtype=acc, device="cpu"),
        *(empty(n, dtype=acc, device="cpu") for n in (K, B, B, B, B)),
        empty(B, dtype=torch.int64, device="cpu"),
        empty(B, dtype=torch.int64, device="cpu"),
    )
    forward = native.score_forward_f64 if acc == torch.float64 else native.score_forward_f32
    forward(
        _view(hidden),
        _DTYPE_CODES[hidden.dtype],
        _view(weight.to(acc).contiguous()),
        None if bias is None else _view(bias.to(acc).contiguous()),
        _view(step_index.contiguous()),
        _view(cu_steps.contiguous()),
        positive_class,
        threshold,
        *(_view(o) for o in outputs),
    )
    return outputs


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
        _view(weight.to(acc).contiguous()),
        _view(grad_step_logits.to(acc).contiguous()),
        _view(step_index.contiguous()),
        _view(grad_hidden),
        _view(grad_weight),
        _view(grad_bias),
    )
    return grad_hidden, grad_weight, grad_bias


torch.library.register_kernel("fastprm::find_steps", "cpu", find_steps)
torch.library.register_kernel("fastprm::score_steps_forward", "cpu", score_steps_forward)
torch.library.register_kernel("fastprm::score_steps_backward", "cpu", score_steps_backward)
