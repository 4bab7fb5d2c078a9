"""fastprm: fast Process Reward Models (fused step scoring and training on packed batches).

The public names load lazily (PEP 562 module ``__getattr__``), so ``import fastprm`` and ``fastprm --help``
do not import torch or transformers; the first use of a name imports what it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> the module that defines it.
_LAZY = {
    "PRM": "fastprm.models.prm",
    "Scorer": "fastprm.scoring",
    "SolutionScores": "fastprm.scoring",
    "StepScores": "fastprm.ops",
    "find_steps": "fastprm.ops",
    "score_steps": "fastprm.ops",
    "score_steps_reference": "fastprm.ops",
}

__all__ = [
    "PRM",
    "Scorer",
    "SolutionScores",
    "StepScores",
    "__version__",
    "find_steps",
    "score_steps",
    "score_steps_reference",
]

if TYPE_CHECKING:
    from .models.prm import PRM
    from .ops import StepScores, find_steps, score_steps, score_steps_reference
    from .scoring import Scorer, SolutionScores


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'fastprm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
