"""Best-of-N: how often a selection rule picks a correct solution among N candidates of a problem.

Rules, each an expected accuracy (ties share the credit, so nothing is left to chance):

* ``prm-<agg>``: the candidate with the highest aggregated PRM score (``min``, ``prod``, ``mean``, ``last``);
* ``weighted-<agg>``: the answer with the highest sum of aggregated scores over its candidates;
* ``majority``: the most frequent answer;
* ``random``: a uniformly random candidate (the fraction of correct candidates);
* ``oracle``: correct when any candidate is.

Vote rules need answers and skip candidates without one. A candidate whose aggregate is NaN or None (no
score; see :mod:`fastprm.metrics`) is never picked by a ``prm-*`` rule (when no candidate has a score, none
is picked: no credit) and weighs 0 in a ``weighted-*`` vote; it still votes in ``majority``. Smaller N are subsampled from a problem's
candidates in balanced orders: the first N of every cyclic shift of a few seeded permutations, so each
candidate is drawn equally often; N = 1 then gives exactly ``random`` and N = all gives the full pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import AGGREGATES
from .calibration import nan_lowest


@dataclass
class Problem:
    """The N candidate solutions of one problem.

    Attributes:
        correct: [N] whether each candidate is correct.
        scores: aggregate name -> [N] aggregated PRM scores (NaN or None when a candidate has none).
        answers: [N] answer keys (:func:`~fastprm.metrics.answers.answer_key`, None when a candidate
            states none), or None when answers are unknown (vote rules are then skipped).
    """

    correct: Sequence[bool]
    scores: dict[str, Sequence[float]]
    answers: Sequence[str | None] | None = None


def rule_names(aggregates: Sequence[str], with_votes: bool) -> list[str]:
    """The rules evaluated for these aggregates, selection by score first, baselines last."""
    names = [f"prm-{a}" for a in aggregates]
    if with_votes:
        names += [f"weighted-{a}" for a in aggregates] + ["majority"]
    return [*names, "random", "oracle"]


def balanced_orders(n: int, bases: int, seed: int) -> np.ndarray:
    """[bases * n, n] candidate orders: every cyclic shift of ``bases`` seeded permutations of range(n)."""
    rng = np.random.default_rng(seed)
    shifts = (np.arange(n)[:, None] + np.arange(n)[None, :]) % n  # [n shifts, n positions]
    return np.concatenate([rng.permutation(n)[shifts] for _ in range(bases)])


def best_credit(values: np.ndarray, credit: np.ndarray) -> np.ndarray:
    """[O, K] values and credits (credit broadcastable) -> [O] mean credit over each row's maxima, so tied
    maxima share it; rows whose values are all -inf (nothing to pick) get 0."""
    top = (values == values.max(axis=1, keepdims=True)) & (values > -np.inf)
    n_top = top.sum(axis=1)
    total = (top * np.broadcast_to(credit, values.shape)).sum(axis=1)
    return np.where(n_top > 0, total / np.maximum(n_top, 1), 0.0)


def _vote_credit(
    answer_ids: np.ndarray, weights: np.ndarray, answer_correct: np.ndarray, n_answers: int
) -> np.ndarray:
    """[O, N] answer ids (-1 for none) and vote weights -> [O] credit of the answer with the largest total."""
    onehot = answer_ids[..., None] == np.arange(n_answers)  # [O, N, A]
    totals = (onehot * weights[..., None]).sum(axis=1)  # [O, A]
    present = onehot.any(axis=1)
    return best_credit(np.where(present, totals, -np.inf), answer_correct[None, :])


def problem_accuracy(problem: Problem, rules: Sequence[str], n: int, bases: int = 4, seed: int = 0) -> dict:
    """Expected accuracy of each rule on one problem with ``n`` candidates drawn (all when fewer)."""
    correct = np.asarray(problem.correct, dtype=np.float64)
    size = len(correct)
    orders = balanced_orders(size, bases, seed)[:, : min(n, size)]  # [O, n]
    picked = correct[orders]
    votes = [r for r in rules if r == "majority" or r.startswith("weighted-")]
    if votes and problem.answers is None:
        raise ValueError(f"rules {votes} need the candidates' answers")
    if problem.answers is not None:
        keys = sorted({a for a in problem.answers if a is not None})
        ids = np.array([-1 if a is None else keys.index(a) for a in problem.answers])
        # An answer's correctness is that of its candidates (the mean, should they disagree).
        answer_correct = np.array([correct[ids == k].mean() for k in range(len(keys))])
    out = {}
    for rule in rules:
        kind, _, agg = rule.partition("-")
        if kind == "random":
            credit = picked.mean(axis=1)
        elif kind == "oracle":
            credit = picked.max(axis=1)
        elif kind == "prm":
            credit = best_credit(nan_lowest(problem.scores[agg])[orders], picked)
        else:  # votes: majority counts candidates, weighted sums their scores (0 for no score)
            scores = nan_lowest(problem.scores[agg]) if kind == "weighted" else np.ones(size)
            weights = np.where(np.isneginf(scores), 0.0, scores)
            credit = _vote_credit(ids[orders], weights[orders], answer_correct, len(keys))
        out[rule] = float(credit.mean())
    return out


def best_of_n(
    problems: Sequence[Problem],
    aggregates: Sequence[str] = AGGREGATES,
    ns: Sequence[int] | None = None,
    bases: int = 4,
    seed: int = 0,
) -> dict:
    """Mean accuracy over problems of every rule, with all candidates and for each N.

    Returns ``{"rules": [R], "n_problems", "accuracy": {rule: float}, "curve": {"n": [ns], rule: [per n]}}``;
    ``ns`` defaults to the powers of two below the largest pool plus its size (a problem with fewer
    candidates uses all of them). Vote rules are included only when every problem has answers.
    """
    rules = rule_names(aggregates, with_votes=all(p.answers is not None for p in problems))
    largest = max(len(p.correct) for p in problems)
    if ns is None:
        ns = [2**k for k in range(largest.bit_length()) if 2**k < largest] + [largest]
    mean_at = {}
    for n in sorted({*ns, largest}):
        per_problem = [problem_accuracy(p, rules, n, bases, seed) for p in problems]
        mean_at[n] = {rule: float(np.mean([acc[rule] for acc in per_problem])) for rule in rules}
    return {
        "rules": rules,
        "n_problems": len(problems),
        "accuracy": mean_at[largest],
        "curve": {"n": list(ns), **{rule: [mean_at[n][rule] for n in ns] for rule in rules}},
    }
