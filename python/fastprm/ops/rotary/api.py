"""The documented public function of the rotary op and its argument checks."""

from __future__ import annotations

import torch

from ..native_layer_ops import check_tensor, kernel_applies
from .cpu import rotary_cpu_
from .reference import rotary_reference_

__all__ = ["rotary_", "rotary_reference_"]


def rotary_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` in place, as transformers' Qwen2 / Llama ``apply_rotary_pos_emb``.

    Args:
        x: [T, heads, D] float32 / bfloat16 / float16, D even; any token and head strides (e.g. the q and k
            heads of a merged QKV projection's output, one view), its heads must not overlap in memory.
        cos, sin: [T, D] of x's dtype (what the model's rotary embedding returns, one row per token).

    Returns:
        x, rotated: ``x * cos + rotate_half(x) * sin`` per head, each product and the sum rounded to the dtype
        as torch's op-by-op forward (:func:`rotary_reference_`); by the C++ kernel on CPU when no gradient is
        needed, else by the reference.
    """
    check_tensor("x", x)
    if x.dim() != 3 or x.shape[-1] % 2:
        raise ValueError(f"x must be [tokens, heads, head_dim] with an even head_dim, got {list(x.shape)}")
    for name, t in (("cos", cos), ("sin", sin)):
        check_tensor(name, t, x.dtype)
        if t.shape != (x.shape[0], x.shape[2]):
            raise ValueError(
                f"{name} must be [{x.shape[0]}, {x.shape[2]}] (x's tokens, head_dim), got {list(t.shape)}"
            )
    if not kernel_applies("rotary", x, cos, sin) or x.stride(-1) != 1:
        return rotary_reference_(x, cos, sin)
    return rotary_cpu_(x, *(t if t.stride(-1) == 1 else t.contiguous() for t in (cos, sin)))
