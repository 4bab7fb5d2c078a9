"""Pure-PyTorch reference of the SwiGLU GEMM: the specification, the test oracle and the fallback."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def swiglu_gemm_reference(
    x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor
) -> torch.Tensor:
    """``silu(x gate_weight^T) * (x up_weight^T)`` [..., I] for x [..., K] and weights [I, K]: both GEMMs,
    SiLU and the product in fp32, rounded once to x's dtype (transformers' MLP rounds after each GEMM and
    after SiLU too)."""
    gate = F.linear(x.float(), gate_weight.float())
    up = F.linear(x.float(), up_weight.float())
    return (F.silu(gate) * up).to(x.dtype)
