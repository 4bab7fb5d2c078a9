"""Solution aggregates of raw step scores, as ``fastprm score`` reports them: the op reference's reductions
(the one specification of min / prod / mean / last), for tests that start from step scores in a file."""

from __future__ import annotations

import torch

from fastprm.ops.step_scoring.reference import reduce_steps


def step_aggregates(step_scores: list[float]) -> dict[str, float]:
    """{"min", "prod", "mean", "last"} of one solution's step scores (NaN when it has none)."""
    probs = torch.tensor(step_scores, dtype=torch.float64)
    min_, _, prod, mean, last, *_ = reduce_steps(probs, probs.log(), torch.tensor([0, len(step_scores)]), 0.5)
    return {"min": float(min_[0]), "prod": float(prod[0]), "mean": float(mean[0]), "last": float(last[0])}
