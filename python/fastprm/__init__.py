"""fastprm: fast Process Reward Models (fused step scoring and training on packed batches)."""

from .ops import StepScores, score_steps

__version__ = "0.1.0"

__all__ = ["StepScores", "__version__", "score_steps"]
