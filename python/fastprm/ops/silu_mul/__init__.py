"""SwiGLU of a merged gate/up projection: ``silu(gate) * up``.

- ``api.py``: the documented public function :func:`fastprm.ops.silu_mul` and its argument checks;
- ``cpu.py``: the C++ kernel (``csrc/layer_ops*.{h,cpp}``);
- ``reference.py``: the pure-PyTorch reference (spec, test oracle and fallback).
"""
