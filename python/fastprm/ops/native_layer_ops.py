"""When the C++ decoder-layer kernels (``csrc/layer_ops*.{h,cpp}``) can run a call: shared by the
``rms_norm``, ``silu_mul`` and ``rotary`` ops."""

from __future__ import annotations

import torch

from .._native import native

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def kernel_applies(op: str, *tensors: torch.Tensor | None) -> bool:
    """Whether the extension's ``op`` can compute a call on ``tensors`` (None ones ignored): the extension has
    the op (an older build may not), every tensor is on the CPU in one kernel dtype, and no gradient is
    needed (the kernels have no backward)."""
    given = [t for t in tensors if t is not None]
    if native is None or not hasattr(native, op):
        return False
    if any(t.device.type != "cpu" or t.dtype != given[0].dtype for t in given):
        return False
    if given[0].dtype not in KERNEL_DTYPES:
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in given))


def check_tensor(name: str, t: object, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` as a tensor: TypeError naming ``name`` when it is not one, or not of ``dtype`` (when given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (as x), got {t.dtype}")
    return t


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` [..., W] as the [rows, W] matrix the kernels take (last dimension contiguous); a view where one
    exists."""
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.stride(-1) == 1 or rows.shape[-1] <= 1 else rows.contiguous()
