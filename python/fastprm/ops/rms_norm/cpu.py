"""CPU backend: the C++ kernel of ``csrc/layer_ops*.{h,cpp}`` (inference only, no backward)."""

from __future__ import annotations

import torch

from ..._native import native


def rms_norm_cpu(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The kernel (spec: ``rms_norm_reference``) on 2-D [N, H] tensors whose last dimension is contiguous, on
    all of torch's intra-op threads; for callers that checked ``kernel_applies``."""
    return native.rms_norm(x, weight, eps, residual, torch.get_num_threads())
