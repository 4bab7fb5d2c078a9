"""fastprm's fused ops (documented public functions over torch.library ops)."""

from .step_scoring.api import StepScores, find_steps, score_steps, score_steps_reference
from .varlen_attention.api import varlen_attention, varlen_attention_reference

__all__ = [
    "StepScores",
    "find_steps",
    "score_steps",
    "score_steps_reference",
    "varlen_attention",
    "varlen_attention_reference",
]
