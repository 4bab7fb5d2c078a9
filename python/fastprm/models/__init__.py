"""PRM checkpoints: conventions, heads and the PRM model class."""

from .conventions import CONVENTIONS, Convention
from .prm import PRM

__all__ = ["CONVENTIONS", "PRM", "Convention"]
