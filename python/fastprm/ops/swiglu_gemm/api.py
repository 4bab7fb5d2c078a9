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
    step of inputs (one fp32 input, a pair of bf16 ones), the 16 gate columns' inputs then the 16 up ones').

    Attributes:
        packed: a vector of the weights' dtype.
        intermediate: I, the weights' rows.
        hidden: K, the weights' columns (x's last dimension).
    """

    packed: torch.Tensor
    intermediate: int
    hidden: int


def pack_gate_up(gate_weight: torch.Tensor, up_weight: torch.Tensor) -> PackedGateUp:
    """Packs a SwiGLU MLP's gate and up projection weights for :func:`swiglu_gemm`.

    Args:
        gate_weight, up_weight: [I, K] float32 or bfloat16, one dtype (``nn.Linear`` weights:
            [out_features, in_features]).

    Raises:
        RuntimeError: the running CPU cannot run the kernel in that dtype (fp32 needs AVX-512, bf16
            AVX512-BF16; see :func:`swiglu_gemm_supported`).
    """
    check_tensor("gate_weight", gate_weight)
    if gate_weight.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"gate_weight must be float32 or bfloat16, got {gate_weight.dtype}")
    check_tensor("up_weight", up_weight, gate_weight.dtype)
    for name, w in (("gate_weight", gate_weight), ("up_weight", up_weight)):
        if w.dim() != 2 or w.device.type != "cpu":
            raise ValueError(f"{name} must be a 2-D CPU tensor [I, K], got {list(w.shape)} on {w.device}")
    if gate_weight.shape != up_weight.shape:
        raise ValueError(
            f"up_weight must have gate_weight's shape {list(gate_weight.shape)}, got {list(up_weight.shape)}"
        )
    if not swiglu_gemm_supported(gate_weight.dtype):
        need = "AVX-512" if gate_weight.dtype == torch.float32 else "AVX512-BF16"
        raise RuntimeError(
            f"the SwiGLU GEMM in {gate_weight.dtype} needs a CPU with {need} (and the C++ extension)"
        )
    gate, up = (w.detach().contiguous() for w in (gate_weight, up_weight))
    return PackedGateUp(pack_gate_up_cpu(gate, up), gate.shape[0], gate.shape[1])


def swiglu_gemm(x: torch.Tensor, weights: PackedGateUp) -> torch.Tensor:
    """SwiGLU's first half in one GEMM (inference): ``silu(x Wg^T) * (x Wu^T)``.

    Args:
        x: [..., K] on the CPU, in the weights' dtype (float32 or bfloat16).
        weights: from :func:`pack_gate_up`.

    Returns:
        [..., I] in x's dtype: the sums in fp32 (bf16: AVX512-BF16 dot products of pairs, each product
        exact), SiLU and the product in fp32, rounded once (:func:`swiglu_gemm_reference`; the sum order
        differs).

    Raises:
        RuntimeError: x needs a gradient (the kernel has no backward: use :func:`swiglu_gemm_reference`).
    """
    check_tensor("x", x, weights.packed.dtype)
    if torch.is_grad_enabled() and x.requires_grad:
        raise RuntimeError(
            "swiglu_gemm is inference-only (no backward); under autograd use swiglu_gemm_reference"
        )
    if x.dim() < 1 or x.shape[-1] != weights.hidden or x.device.type != "cpu":
        raise ValueError(f"x must be a CPU tensor [..., {weights.hidden}], got {list(x.shape)} on {x.device}")
    out = swiglu_gemm_cpu(as_rows(x), weights.packed, weights.intermediate, weights.hidden)
    return out.view(*x.shape[:-1], weights.intermediate)
