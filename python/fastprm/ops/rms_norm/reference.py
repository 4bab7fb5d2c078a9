"""Pure-PyTorch reference of the RMSNorm op: the specification, the test oracle and the fallback."""

from __future__ import annotations

import torch


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``Qwen2RMSNorm`` / ``LlamaRMSNorm`` (transformers 5.x): ``weight * (h * rsqrt(mean(h^2)
    + eps)).to(x.dtype)`` with h = x in fp32.

    Args:
        x: [..., H] float tensor.
        weight: [H] (its dtype decides the product's, as in transformers).
        eps: added to the mean square.
        residual: [..., H] added to x first (the decoder layer's residual add, rounded to x's dtype), or None.

    Returns:
        The normalised [..., H]; with a residual, (x + residual, the normalised sum).
    """
    if residual is not None:
        x = x + residual
    h = x.float()
    normed = weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return normed if residual is None else (x, normed)
