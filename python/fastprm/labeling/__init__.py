"""Automatic step labels: Monte Carlo rollouts from each step's prefix (:func:`mc_label`)."""

from .mc import METHODS, StepLabels, hard_rule, is_correct, mc_label

__all__ = ["METHODS", "StepLabels", "hard_rule", "is_correct", "mc_label"]
