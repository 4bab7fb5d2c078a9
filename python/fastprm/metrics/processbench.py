"""ProcessBench: locate the first wrong step of a solution (or say every step is right).

The predicted first error is the first step whose score is below a threshold, -1 when none is. On each
subset, accuracy is measured separately on the erroneous solutions (prediction == label) and on the
all-correct ones (prediction == -1); the official metric is their harmonic mean (F1), averaged over subsets.

Missing scores (the rule of :mod:`fastprm.metrics`): a NaN step score is never correct, so it is an error
at that step at every threshold, and the F1 at a threshold, the threshold sweep and the step metrics agree.
A solution with no scored step (every step dropped by truncation) is no prediction: it is left out of every
metric and counted (``unscored_rows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .calibration import auroc, expected_calibration_error, nan_lowest, reliability_table

# ProcessBench's own sweep grid: 0.00, 0.01, ..., 1.00.
DEFAULT_THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(101))


@dataclass
class Sample:
    """One scored ProcessBench solution.

    Attributes:
        subset: e.g. ``gsm8k``; F1 is computed per subset, then averaged.
        label: 0-based index of the first wrong step, -1 when all steps are correct.
        step_scores: P(step good) of each scored step (fewer than the steps when truncation dropped some;
            none when it dropped them all); NaN or None for a step with no score.
    """

    subset: str
    label: int
    step_scores: Sequence[float]


def predicted_first_error(step_scores: Sequence[float | None], threshold: float) -> int | None:
    """Index of the first step that is NaN or scores below ``threshold`` (finite), -1 when there is none;
    None when no step was scored (no prediction)."""
    if len(step_scores) == 0:
        return None
    below = nan_lowest(step_scores) < threshold
    return int(below.argmax()) if below.any() else -1


def harmonic_mean(a: float, b: float) -> float:
    """2ab / (a + b); 0 when both are 0, NaN when either is NaN (an empty class)."""
    if np.isnan(a) or np.isnan(b):
        return float("nan")
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def subset_scores(labels: Sequence[int], predictions: Sequence[int]) -> dict:
    """Counts and accuracies of one subset: ``n_error``, ``n_correct``, ``error_accuracy`` (erroneous
    solutions whose first error is found exactly), ``correct_accuracy`` (all-correct solutions predicted
    -1) and their ``f1``. An accuracy over an empty class is NaN."""
    labels_a, preds = np.asarray(labels), np.asarray(predictions)
    erroneous = labels_a != -1
    hit = labels_a == preds
    error_acc = float(hit[erroneous].mean()) if erroneous.any() else float("nan")
    correct_acc = float(hit[~erroneous].mean()) if (~erroneous).any() else float("nan")
    return {
        "n_error": int(erroneous.sum()),
        "n_correct": int((~erroneous).sum()),
        "error_accuracy": error_acc,
        "correct_accuracy": correct_acc,
        "f1": harmonic_mean(error_acc, correct_acc),
    }


def exact_threshold_interval(step_scores: Sequence[float], label: int) -> tuple[float, float]:
    """(lo, hi) such that the predicted first error equals ``label`` exactly for thresholds lo < t <= hi.

    The label's step must score below t (lo = its score) while every earlier step scores at least t
    (hi = their minimum); an all-correct solution needs t <= its minimum score. Empty when lo >= hi. A NaN
    step is -inf here: below every threshold.
    """
    s = nan_lowest(step_scores)
    if label == -1:
        return -np.inf, float(s.min()) if s.size else np.inf
    if label >= s.size:  # the wrong step was not scored (truncated): never found
        return np.inf, -np.inf
    return float(s[label]), float(s[:label].min()) if label else np.inf


def _mean_defined(values: Sequence[float]) -> float:
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def scored(samples: Sequence[Sample]) -> list[Sample]:
    """The samples that are predictions: those with at least one scored step."""
    return [s for s in samples if len(s.step_scores)]


def threshold_sweep(samples: Sequence[Sample], thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict:
    """F1 at every threshold: ``{"thresholds": [T], "f1": {subset: [T], ..., "average": [T]}}``.

    Each sample is right on an interval of thresholds (:func:`exact_threshold_interval`), so the sweep is
    one [samples, T] comparison per subset instead of T passes over the steps. Samples with no scored step
    are left out.
    """
    samples = scored(samples)
    t = np.asarray(thresholds, dtype=np.float64)
    f1: dict[str, list[float]] = {}
    for subset in sorted({s.subset for s in samples}):
        members = [s for s in samples if s.subset == subset]
        lo, hi = np.array([exact_threshold_interval(s.step_scores, s.label) for s in members]).T
        right = (t[None, :] > lo[:, None]) & (t[None, :] <= hi[:, None])  # [samples, T]
        erroneous = np.array([s.label != -1 for s in members])
        error_acc = right[erroneous].mean(0) if erroneous.any() else np.full(t.shape, np.nan)
        correct_acc = right[~erroneous].mean(0) if (~erroneous).any() else np.full(t.shape, np.nan)
        f1[subset] = [harmonic_mean(a, b) for a, b in zip(error_acc, correct_acc)]
    f1["average"] = [_mean_defined([per_subset[i] for per_subset in f1.values()]) for i in range(t.size)]
    return {"thresholds": t.tolist(), "f1": f1}


def step_outcomes(label: int, n_steps: int) -> list[int]:
    """Known step outcomes of a ProcessBench solution: 1 for the steps before the first wrong one, 0 for
    that step; steps after it are unlabelled and left out. All ``n_steps`` are 1 when ``label`` is -1."""
    if label == -1:
        return [1] * n_steps
    return [1] * min(label, n_steps) + ([0] if label < n_steps else [])


def evaluate_processbench(
    samples: Sequence[Sample],
    threshold: float = 0.5,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    n_bins: int = 10,
) -> dict:
    """Everything ``fastprm eval processbench`` reports.

    Returns ``{"threshold", "predictions": [n] (None for a sample with no scored step), "unscored_rows"
    (those samples, left out of every metric), "subsets": {name: subset_scores}, "average": {error_accuracy,
    correct_accuracy, f1} (means over subsets), "sweep": threshold_sweep, "best": {"threshold", "f1"}
    (best average F1, lowest threshold on ties), "steps": {"n", "n_nan", "auroc", "ece", "reliability"}}``;
    the step metrics use the labelled steps of :func:`step_outcomes` (``n_nan`` of them have no score).
    """
    predictions = [predicted_first_error(s.step_scores, threshold) for s in samples]
    kept = scored(samples)
    subsets = {}
    for subset in sorted({s.subset for s in kept}):
        members = [(s, p) for s, p in zip(samples, predictions) if p is not None and s.subset == subset]
        subsets[subset] = subset_scores([s.label for s, _ in members], [p for _, p in members])
    average = {
        k: _mean_defined([v[k] for v in subsets.values()])
        for k in ("error_accuracy", "correct_accuracy", "f1")
    }
    sweep = threshold_sweep(kept, thresholds)
    avg_f1 = np.asarray(sweep["f1"]["average"])
    best_i = int(np.nanargmax(avg_f1)) if not np.isnan(avg_f1).all() else None
    confidences, outcomes = [], []
    for s in kept:
        known = step_outcomes(s.label, len(s.step_scores))
        confidences += list(s.step_scores[: len(known)])
        outcomes += known
    table = reliability_table(confidences, outcomes, n_bins)
    return {
        "threshold": threshold,
        "predictions": predictions,
        "unscored_rows": len(samples) - len(kept),
        "subsets": subsets,
        "average": average,
        "sweep": sweep,
        "best": {
            "threshold": None if best_i is None else sweep["thresholds"][best_i],
            "f1": float("nan") if best_i is None else float(avg_f1[best_i]),
        },
        "steps": {
            "n": len(outcomes),
            "n_nan": int(np.isneginf(nan_lowest(confidences)).sum()),
            "auroc": auroc(confidences, outcomes),
            "ece": expected_calibration_error(table),
            "reliability": table,
        },
    }
