"""Loads the C++ extension ``fastprm._C`` and selects its CPU code path.

``FASTPRM_CPU_ISA`` (portable | avx2 | avx512 | avx512_bf16) forces a path; by default the best one this CPU
runs is used. When the extension is missing, the pure-PyTorch reference takes over after one warning.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

import torch

ISA_ENV = "FASTPRM_CPU_ISA"
NAN_FILL_ENV = "FASTPRM_NAN_FILL_OUTPUTS"


def _load() -> ModuleType | None:
    try:
        from . import _C
    except ImportError as err:
        warnings.warn(
            f"fastprm's C++ extension could not be loaded ({err}); CPU ops fall back to the pure-PyTorch "
            "reference, which is correct but slower. Reinstall fastprm from source to build it.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    forced = os.environ.get(ISA_ENV, "").strip()
    if forced:
        try:
            _C.set_isa(forced)
        except ValueError as err:
            raise ValueError(f"{ISA_ENV}={forced!r}: {err}") from None
    return _C


native: ModuleType | None = _load()
_nan_fill = os.environ.get(NAN_FILL_ENV) == "1"


def available_isas() -> list[str]:
    """CPU code paths of the C++ extension that this machine can run, best last."""
    return native.available_isas() if native else []


def empty(*shape: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``torch.empty`` for kernel outputs; NaN/garbage-filled when FASTPRM_NAN_FILL_OUTPUTS=1 so that tests
    catch any element a kernel forgets to write."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    if _nan_fill:
        out.fill_(float("nan") if out.is_floating_point() else torch.iinfo(dtype).min)
    return out
