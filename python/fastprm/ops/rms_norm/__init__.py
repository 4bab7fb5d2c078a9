"""RMSNorm of transformers' Llama-family layers, optionally fused with the residual add before it.

- ``api.py``: the documented public function :func:`fastprm.ops.rms_norm` and its argument checks;
- ``cpu.py``: the C++ kernel (``csrc/layer_ops*.{h,cpp}``);
- ``reference.py``: the pure-PyTorch reference (spec, test oracle and fallback).
"""
