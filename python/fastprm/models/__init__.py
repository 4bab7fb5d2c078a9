"""PRM checkpoints: conventions, heads and the PRM model class.

``PRM`` loads lazily, so the torch-free modules here (``conventions``) import without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .conventions import CONVENTIONS, Convention

__all__ = ["CONVENTIONS", "PRM", "Convention"]

if TYPE_CHECKING:
    from .prm import PRM


def __getattr__(name: str):
    if name == "PRM":
        from .prm import PRM

        return PRM
    raise AttributeError(f"module 'fastprm.models' has no attribute {name!r}")
