"""Pure-PyTorch reference of the rotary op: the specification, the test oracle and the fallback."""

from __future__ import annotations

import torch


def rotary_reference_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' ``apply_rotary_pos_emb`` on ``x`` [T, heads, D] in place: ``x * cos + rotate_half(x) *
    sin`` with ``rotate_half(x) = cat(-x2, x1)`` for the halves x1, x2 of D, and cos / sin [T, D] (the same
    for every head). Returns x."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x.copy_(x * cos[:, None] + rotated * sin[:, None])
