"""CPU backend: the C++ kernel of ``csrc/layer_ops*.{h,cpp}`` (inference only, no backward)."""

from __future__ import annotations

import torch

from ..._native import native


def rotary_cpu_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The kernel (spec: ``rotary_reference_``) on x [T, heads, D] (D contiguous, any token and head strides)
    and cos / sin [T, D] (last dimension contiguous), in place, on all of torch's intra-op threads; for callers
    that checked ``kernel_applies``. Returns x."""
    native.rotary(x, cos, sin, torch.get_num_threads())
    return x
