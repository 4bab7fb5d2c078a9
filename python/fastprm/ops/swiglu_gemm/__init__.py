"""The first half of a SwiGLU MLP as one GEMM: ``silu(x Wg^T) * (x Wu^T)``, bf16, rounded once.

- ``api.py``: the documented public functions :func:`fastprm.ops.pack_gate_up` and
  :func:`fastprm.ops.swiglu_gemm`, and their argument checks;
- ``cpu.py``: the C++ kernel (``csrc/swiglu_gemm*.{h,cpp}``, CPUs with AVX512-BF16);
- ``reference.py``: the pure-PyTorch reference (spec, test oracle and fallback).
"""
