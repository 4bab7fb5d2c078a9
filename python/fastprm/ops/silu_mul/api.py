"""The documented public function of the SwiGLU op and its argument checks."""

from __future__ import annotations

import torch

from ..native_layer_ops import as_rows, check_tensor, kernel_applies
from .cpu import silu_mul_cpu
from .reference import silu_mul_reference

__all__ = ["silu_mul", "silu_mul_reference"]


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU over a merged gate/up projection.

    Args:
        gate_up: [..., 2I] float32 / bfloat16 / float16: the gate projection's I outputs, then the up
            projection's.

    Returns:
        ``silu(gate) * up`` [..., I] in gate_up's dtype, computed in fp32 with silu rounded to the dtype before
        the product (as transformers' MLP, :func:`silu_mul_reference`); by the C++ kernel on CPU when no
        gradient is needed, else by the reference.
    """
    check_tensor("gate_up", gate_up)
    if gate_up.dim() < 1 or gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up must be [..., 2 * I], got {list(gate_up.shape)}")
    if not kernel_applies("silu_mul", gate_up):
        return silu_mul_reference(gate_up)
    return silu_mul_cpu(as_rows(gate_up)).view(*gate_up.shape[:-1], gate_up.shape[-1] // 2)
