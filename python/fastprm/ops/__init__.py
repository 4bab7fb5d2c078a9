"""fastprm's fused ops (documented public functions over torch.library ops)."""

from .score_steps import StepScores, find_steps, score_steps, score_steps_reference

__all__ = ["StepScores", "find_steps", "score_steps", "score_steps_reference"]
