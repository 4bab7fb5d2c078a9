"""Causal variable-length attention for inference on CPU, with grouped-query heads and a cached prefix per row.

- ``api.py``: the documented public function :func:`fastprm.ops.varlen_attention` and its argument checks;
- ``cpu.py``: the C++ kernel (``csrc/attention*.{h,cpp}``) and when it applies;
- ``reference.py``: the pure-PyTorch reference (spec, test oracle and fallback).
"""
