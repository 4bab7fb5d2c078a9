"""Step-level discrimination and calibration: AUROC with tied scores, reliability table, expected
calibration error. A step's confidence is its P(good); its outcome is 1 for a good step, 0 for a bad one.

A NaN (or None) confidence is a step with no score, which is never correct (see :mod:`fastprm.metrics`): it
ranks below every real score in the AUROC (NaN steps tie with each other) and counts as confidence 0 in the
reliability table and the ECE. Nothing is left out, so a PRM that emits NaN is penalised, not flattered.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def nan_lowest(values: Sequence[float | None]) -> np.ndarray:
    """[n] scores as float64 with NaN and None replaced by -inf, the lowest score (a step with no score)."""
    s = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return np.where(np.isnan(s), -np.inf, s)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """[n] values -> [n] float64 1-based ranks, tied values sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2.0)[inverse.reshape(-1)]


def auroc(scores: Sequence[float], outcomes: Sequence[int]) -> float:
    """Area under the ROC curve of ``scores`` [n] separating outcome 1 from 0: the probability that a
    random good step scores above a random bad one, ties counting one half (Mann-Whitney U).
    NaN when either class is empty. NaN scores rank below every real score."""
    s = nan_lowest(scores)
    y = np.asarray(outcomes, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = average_ranks(s)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def reliability_table(confidences: Sequence[float], outcomes: Sequence[int], n_bins: int = 10) -> list[dict]:
    """Equal-width confidence bins over [0, 1] (the last one closed): per bin ``lo``, ``hi``, ``count``,
    mean ``confidence`` and ``accuracy`` (fraction of outcome 1); empty bins have None for the means.
    A NaN confidence counts as 0."""
    c = np.clip(nan_lowest(confidences), 0.0, 1.0)
    y = np.asarray(outcomes, dtype=np.float64)
    bins = np.minimum((c * n_bins).astype(np.int64), n_bins - 1)
    table = []
    for b in range(n_bins):
        inside = bins == b
        count = int(inside.sum())
        table.append(
            {
                "lo": b / n_bins,
                "hi": (b + 1) / n_bins,
                "count": count,
                "confidence": float(c[inside].mean()) if count else None,
                "accuracy": float(y[inside].mean()) if count else None,
            }
        )
    return table


def expected_calibration_error(table: list[dict]) -> float:
    """ECE of a :func:`reliability_table`: the count-weighted mean of |accuracy - confidence|; NaN when
    the table holds no sample."""
    total = sum(b["count"] for b in table)
    if total == 0:
        return float("nan")
    return sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in table if b["count"]) / total
