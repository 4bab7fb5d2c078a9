"""CPU backend: the C++ kernel of ``csrc/swiglu_gemm*.{h,cpp}`` (inference only; AVX-512 for fp32,
AVX512-BF16 for bf16)."""

from __future__ import annotations

import torch

from ..._native import native


def swiglu_gemm_supported(dtype: torch.dtype) -> bool:
    """Whether the extension runs the kernel in ``dtype`` on the running CPU (its selected ISA)."""
    if native is None or not hasattr(native, "swiglu_gemm_dtypes"):
        return False
    return str(dtype).removeprefix("torch.") in native.swiglu_gemm_dtypes()


def pack_gate_up_cpu(gate_weight: torch.Tensor, up_weight: torch.Tensor) -> torch.Tensor:
    """The kernel's packed weights (a vector of their dtype) of [I, K] weights whose last dimension is
    contiguous."""
    return native.swiglu_gemm_pack(gate_weight, up_weight)


def swiglu_gemm_cpu(x: torch.Tensor, packed: torch.Tensor, intermediate: int, hidden: int) -> torch.Tensor:
    """The kernel (spec: ``swiglu_gemm_reference``) on x [M, K] whose last dimension is contiguous, on all of
    torch's intra-op threads: [M, I] in x's dtype."""
    return native.swiglu_gemm(x, packed, intermediate, hidden, torch.get_num_threads())
