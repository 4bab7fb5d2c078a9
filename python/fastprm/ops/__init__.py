"""fastprm's fused ops (documented public functions over torch.library ops).

The public names load on first use (PEP 562 module ``__getattr__``): importing a leaf of this package, as
``fastprm.kernels`` does with ``step_scoring.contract``, must not load the backends that import the kernels.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_PUBLIC_MODULE = "fastprm.ops.step_scoring.api"

__all__ = ["StepScores", "find_steps", "score_steps", "score_steps_reference"]

if TYPE_CHECKING:
    from .step_scoring.api import StepScores, find_steps, score_steps, score_steps_reference


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'fastprm.ops' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC_MODULE), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
