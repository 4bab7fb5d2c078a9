"""The documented public function of the RMSNorm op and its argument checks."""

from __future__ import annotations

import torch

from ..native_layer_ops import as_rows, check_tensor, kernel_applies
from .cpu import rms_norm_cpu
from .reference import rms_norm_reference

__all__ = ["rms_norm", "rms_norm_reference"]


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm as transformers' Llama-family layers compute it, with the residual add fused in front.

    Args:
        x: [..., H] float32 / bfloat16 / float16.
        weight: [H] of x's dtype.
        eps: added to the mean square (>= 0).
        residual: [..., H] like x, or None.

    Returns:
        ``rmsnorm(x) * weight`` [..., H]; with a residual, ``(h, rmsnorm(h) * weight)`` for
        ``h = x + residual``, both in one pass. Computed in fp32 and rounded where transformers rounds
        (:func:`rms_norm_reference`), by the C++ kernel on CPU when no gradient is needed, else by the
        reference.
    """
    check_tensor("x", x)
    check_tensor("weight", weight, x.dtype)
    if x.dim() < 1 or weight.shape != x.shape[-1:]:
        raise ValueError(
            f"weight must be [{x.shape[-1] if x.dim() else '?'}] (x's last dimension), got "
            f"{list(weight.shape)}"
        )
    if residual is not None:
        check_tensor("residual", residual, x.dtype)
        if residual.shape != x.shape:
            raise ValueError(f"residual must have x's shape {list(x.shape)}, got {list(residual.shape)}")
    if not isinstance(eps, (int, float)) or not 0 <= eps < float("inf"):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not kernel_applies("rms_norm", x, weight, residual):
        return rms_norm_reference(x, weight, eps, residual)
    out = rms_norm_cpu(
        as_rows(x), weight.contiguous(), float(eps), None if residual is None else as_rows(residual)
    )
    if residual is None:
        return out.view(x.shape)
    return out[0].view(x.shape), out[1].view(x.shape)
