"""CPU backend: the C++ kernel of ``csrc/swiglu_gemm*.{h,cpp}`` (inference only, AVX512-BF16)."""

from __future__ import annotations

import torch

from ..._native import native


def swiglu_gemm_supported() -> bool:
    """Whether the extension runs the kernel on the running CPU (its selected ISA has AVX512-BF16)."""
    return native is not None and hasattr(native, "swiglu_gemm") and native.swiglu_gemm_supported()


def pack_gate_up_cpu(gate_weight: torch.Tensor, up_weight: torch.Tensor) -> torch.Tensor:
    """The kernel's packed weights (a bf16 vector) of bf16 [I, K] weights whose last dimension is contiguous."""
    return native.swiglu_gemm_pack(gate_weight, up_weight)


def swiglu_gemm_cpu(x: torch.Tensor, packed: torch.Tensor, intermediate: int, hidden: int) -> torch.Tensor:
    """The kernel (spec: ``swiglu_gemm_reference``) on x [M, K] bf16 whose last dimension is contiguous, on
    all of torch's intra-op threads: [M, I] bf16."""
    return native.swiglu_gemm(x, packed, intermediate, hidden, torch.get_num_threads())
