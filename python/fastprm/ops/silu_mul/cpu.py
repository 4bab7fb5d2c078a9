"""CPU backend: the C++ kernel of ``csrc/layer_ops*.{h,cpp}`` (inference only, no backward)."""

from __future__ import annotations

import torch

from ..._native import native


def silu_mul_cpu(gate_up: torch.Tensor) -> torch.Tensor:
    """The kernel (spec: ``silu_mul_reference``) on a 2-D [N, 2I] tensor whose last dimension is contiguous,
    on all of torch's intra-op threads; for callers that checked ``kernel_applies``."""
    return native.silu_mul(gate_up, torch.get_num_threads())
