"""Loads the C++ extension ``fastprm._C`` and selects its CPU code path.

``FASTPRM_CPU_ISA`` (portable | avx2 | avx512 | avx512_bf16) forces a path; by default the best one the
running CPU supports is used. When the extension is missing, the pure-PyTorch reference takes over after one warning.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

import torch  # noqa: F401  (the extension looks up torch's types when it loads)

from .kernels.contract import fill_outputs_with_nan

ISA_ENV = "FASTPRM_CPU_ISA"


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
    _C.set_fill_outputs_with_nan(fill_outputs_with_nan)
    return _C


native: ModuleType | None = _load()


def available_isas() -> list[str]:
    """CPU code paths of the C++ extension that the running CPU supports, best last."""
    return native.available_isas() if native else []
