"""Pure-PyTorch reference of the SwiGLU op: the specification, the test oracle and the fallback."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate, up`` the halves of ``gate_up`` [..., 2I]: [..., I] in its dtype, as
    transformers' Llama-family MLP computes ``act_fn(gate_proj(x)) * up_proj(x)``."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
