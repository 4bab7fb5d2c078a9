"""The first half of a SwiGLU MLP as one GEMM: ``silu(x Wg^T) * (x Wu^T)``, fp32 or bf16, rounded once.

- ``api.py``: the documented public functions :func:`fastprm.ops.pack_gate_up` and
  :func:`fastprm.ops.swiglu_gemm`, and their argument checks;
- ``cpu.py``: the C++ kernel (``csrc/swiglu_gemm*.{h,cpp}``; AVX-512 for fp32, AVX512-BF16 for bf16);
- ``reference.py``: the pure-PyTorch reference (spec, test oracle and fallback).
"""
