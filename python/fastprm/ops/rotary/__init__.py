"""Rotary position embedding of query / key heads in place (transformers' half-rotation layout).

- ``api.py``: the documented public function :func:`fastprm.ops.rotary_` and its argument checks;
- ``cpu.py``: the C++ kernel (``csrc/layer_ops*.{h,cpp}``);
- ``reference.py``: the pure-PyTorch reference (spec, test oracle and fallback).
"""
