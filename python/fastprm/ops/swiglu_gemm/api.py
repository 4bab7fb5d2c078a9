"""The documented public functions of the SwiGLU GEMM and their argument checks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..native_layer_ops import as_rows, check_tensor
from .cpu import pack_gate_up_cpu, swiglu_gemm_cpu, swiglu_gemm_supported
from .reference import swiglu_gemm_reference

__all__ = ["PackedGateUp", "pack_gate_up", "swiglu_gemm", "swiglu_gemm_reference", "swiglu_gemm_supported"]


@dataclass(frozen=True)
class PackedGateUp:
    """Gate and up weights packed for :func:`swiglu_gemm` (the kernel's layout: per 16 output columns, per
    pair of inputs, 16 gate pairs then 16 up pairs).

    Attributes:
        packed: bf16 vector.
        intermediate: I, the weights' rows.
        hidden: K, the weights' columns (x's last dimension).
    """

    packed: torch.Tensor
    intermediate: int
    hidden: int


def pack_gate_up(gate_weight: torch.Tensor, up_weight: torch.Tensor) -> PackedGateUp:
    """Packs a SwiGLU MLP's gate and up projection weights for :func:`swiglu_gemm`.

    Args:
        gate_weight, up_weight: [I, K] bfloat16 (``nn.Linear`` weights: [out_features, in_features]).

    Raises:
        RuntimeError: the running CPU has no AVX512-BF16 (see :func:`swiglu_gemm_supported`).
    """
    for name, w in (("gate_weight", gate_weight), ("up_weight", up_weight)):
        check_tensor(name, w, torch.bfloat16)
        if w.dim() != 2 or w.device.type != "cpu":
            raise ValueError(f"{name} must be a 2-D CPU tensor [I, K], got {list(w.shape)} on {w.device}")
    if gate_weight.shape != up_weight.shape:
        raise ValueError(
            f"up_weight must have gate_weight's shape {list(gate_weight.shape)}, got {list(up_weight.shape)}"
        )
    if not swiglu_gemm_supported():
        raise RuntimeError("the SwiGLU GEMM needs a CPU with AVX512-BF16 (and the C++ extension)")
    gate, up = (w.detach().contiguous() for w in (gate_weight, up_weight))
    return PackedGateUp(pack_gate_up_cpu(gate, up), gate.shape[0], gate.shape[1])


def swiglu_gemm(x: torch.Tensor, weights: PackedGateUp) -> torch.Tensor:
    """SwiGLU's first half in one GEMM (inference): ``silu(x Wg^T) * (x Wu^T)``.

    Args:
        x: [..., K] bfloat16 on the CPU.
        weights: from :func:`pack_gate_up`.

    Returns:
        [..., I] bfloat16: the products of bf16 values summed in fp32 (AVX512-BF16 dot products of pairs),
        SiLU and the product in fp32, rounded once (:func:`swiglu_gemm_reference`; the sum order differs).
    """
    check_tensor("x", x, torch.bfloat16)
    if x.dim() < 1 or x.shape[-1] != weights.hidden or x.device.type != "cpu":
        raise ValueError(f"x must be a CPU tensor [..., {weights.hidden}], got {list(x.shape)} on {x.device}")
    out = swiglu_gemm_cpu(as_rows(x), weights.packed, weights.intermediate, weights.hidden)
    return out.view(*x.shape[:-1], weights.intermediate)
