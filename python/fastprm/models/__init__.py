"""PRM checkpoints: conventions, heads and the PRM model class.

``PRM`` loads lazily, so the torch-free modules here (``conventions``) import without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from .conventions import CONVENTIONS, Convention

__all__ = ["CONVENTIONS", "PRM", "Convention"]

if TYPE_CHECKING:
    from .prm import PRM


__getattr__, __dir__ = lazy_attributes(__name__, {"PRM": ".prm"})
