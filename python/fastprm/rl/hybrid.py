"""One reward per response from outcome and process: ``w_o * outcome + w_p * agg(step scores)``, with a gate."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ..metrics import AGGREGATES
from ..metrics.answers import answers_equal, extract_answer

GATES = ("none", "correct", "cap")


def aggregate(step_scores: Sequence[float], how: str = "min") -> float:
    """min / prod / mean / last of a response's step scores; NaN when there is none or one is NaN (as the
    scorer's aggregates)."""
    if how not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {how!r}")
    scores = [float(s) for s in step_scores]
    if not scores or any(math.isnan(s) for s in scores):
        return math.nan
    if how == "min":
        return min(scores)
    if how == "prod":
        return math.prod(scores)
    if how == "mean":
        return sum(scores) / len(scores)
    return scores[-1]


def outcome_rewards(
    responses: Sequence[str],
    references: Sequence[str | None],
    check: Callable[[str, str], bool] | None = None,
) -> list[float]:
    """1.0 where a response's answer matches its reference, else 0.0 (also with no reference). ``check``
    (response, reference) -> bool replaces fastprm's answer checker (the final ``\\boxed{}`` or "the answer
    is", compared as numbers or normalised text: :mod:`fastprm.metrics.answers`)."""
    if len(responses) != len(references):
        raise ValueError(f"{len(references)} references for {len(responses)} responses")
    out = []
    for response, reference in zip(responses, references):
        if reference is None:
            out.append(0.0)
        elif check is not None:
            out.append(float(bool(check(response, reference))))
        else:
            out.append(float(answers_equal(extract_answer(response), str(reference))))
    return out


def hybrid_rewards(
    step_scores: Sequence[Sequence[float]],
    outcomes: Sequence[float],
    *,
    outcome_weight: float = 1.0,
    process_weight: float = 1.0,
    aggregate_by: str = "min",
    gate: str = "none",
    cap: float = 0.0,
    empty_process: float = 0.0,
) -> list[float]:
    """``outcome_weight * outcome + process_weight * process`` per response, ``process`` being the
    ``aggregate_by`` of its step scores (``empty_process`` when it has none or a NaN).

    Gates on the process part: ``none``; ``correct``: only when the outcome is right (outcome >= 1), else 0,
    so a wrong answer never earns process reward; ``cap``: when the outcome is wrong, at most ``cap``.
    """
    if gate not in GATES:
        raise ValueError(f"gate must be one of {', '.join(GATES)}, got {gate!r}")
    if len(step_scores) != len(outcomes):
        raise ValueError(f"{len(outcomes)} outcomes for {len(step_scores)} responses")
    out = []
    for scores, outcome in zip(step_scores, outcomes):
        process = aggregate(scores, aggregate_by)
        process = empty_process if math.isnan(process) else process
        if outcome < 1:
            if gate == "correct":
                process = 0.0
            elif gate == "cap":
                process = min(process, cap)
        out.append(outcome_weight * float(outcome) + process_weight * process)
    return out
