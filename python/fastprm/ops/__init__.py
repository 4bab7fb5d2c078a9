"""fastprm's fused ops (documented public functions over torch.library ops)."""

from .step_scoring.api import StepScores, find_steps, score_steps, score_steps_reference

__all__ = ["StepScores", "find_steps", "score_steps", "score_steps_reference"]
