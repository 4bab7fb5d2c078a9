"""fastprm: fast Process Reward Models (fused step scoring and training on packed batches).

The public names load lazily (PEP 562 module ``__getattr__``), so ``import fastprm`` and ``fastprm --help``
do not import torch or transformers; the first use of a name imports what it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes

__version__ = "0.1.0"

# Public name -> the module that defines it.
_SOURCES = {
    "PRM": ".models.prm",
    "Scorer": ".scoring",
    "SolutionScores": ".scoring",
    "StepScores": ".ops",
    "find_steps": ".ops",
    "score_steps": ".ops",
    "score_steps_reference": ".ops",
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


__getattr__, __dir__ = lazy_attributes(__name__, _SOURCES)
