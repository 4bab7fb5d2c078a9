"""bf16 matmuls on CPUs without native bf16 math: fp32 GEMMs over the bf16 values.

Without AVX512-BF16 / AMX, torch's bf16 GEMM on CPU is a generic kernel about 7x slower than the fp32 GEMM of
the same shape (measured on an AVX2 Zen 3 at Qwen2.5-0.5B widths, benchmarks/results/bench_score.md). A product
of two bf16 numbers is exact in fp32, so upcasting both operands, running the fp32 GEMM (fp32 accumulation, as
native bf16 GEMMs accumulate) and rounding the result to bf16 computes what a native bf16 matmul computes, up to
summation order. Activations stay bf16 between ops and the weights stay bf16 in memory: the upcast is one
transient pass over a weight per call, small next to the GEMM it feeds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .. import _native

# Functions whose bf16 CPU kernels are the slow generic GEMM; every other op keeps its bf16 kernel.
_MATMULS = {
    F.linear,
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.mm,
    torch.bmm,
    F.scaled_dot_product_attention,
}


def native_bf16() -> bool:
    """Whether the CPU running this process has native bf16 dot products (AVX512-BF16, which AMX CPUs have
    too)."""
    return "avx512_bf16" in _native.available_isas()


class Fp32Matmuls(TorchFunctionMode):
    """Within this mode, matmuls of bf16 CPU tensors run as fp32 GEMMs and return bf16."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _MATMULS and _is_cpu_bf16(args[0]):
            up = [a.float() if _is_cpu_bf16(a) else a for a in args]
            kw = {k: v.float() if _is_cpu_bf16(v) else v for k, v in kwargs.items()}
            return func(*up, **kw).to(torch.bfloat16)
        return func(*args, **kwargs)


def _is_cpu_bf16(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16 and x.device.type == "cpu"
