"""Evaluation metrics of PRM scores: ProcessBench, step calibration, best-of-N and answer matching.

One rule for missing scores everywhere: **a NaN step is never correct** (a step with no score, NaN or null in
a ``fastprm score`` output, is one the PRM did not vouch for). A NaN step score ranks below every real score:
it is below every threshold (the predicted first error is the first step that is NaN or below the
threshold), it ranks lowest in the step AUROC and it falls in the lowest calibration bin with confidence 0.
A NaN solution score (aggregate) is never picked by a ``prm-*`` rule and weighs 0 in a weighted vote. A
solution with no scored step at all (every step dropped by truncation) is no prediction: ProcessBench
leaves it out and counts it.

The submodules load lazily, so ``AGGREGATES`` (the CLI's choices) imports without numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

# The solution scores fastprm score reports, and the aggregates best-of-N selects by.
AGGREGATES = ("min", "prod", "mean", "last")

_LAZY = {
    "answer_key": ".answers",
    "answers_equal": ".answers",
    "extract_answer": ".answers",
    "normalize_answer": ".answers",
    "Problem": ".bon",
    "best_of_n": ".bon",
    "auroc": ".calibration",
    "expected_calibration_error": ".calibration",
    "reliability_table": ".calibration",
    "Sample": ".processbench",
    "evaluate_processbench": ".processbench",
    "predicted_first_error": ".processbench",
    "threshold_sweep": ".processbench",
}

__all__ = [
    "AGGREGATES",
    "Problem",
    "Sample",
    "answer_key",
    "answers_equal",
    "auroc",
    "best_of_n",
    "evaluate_processbench",
    "expected_calibration_error",
    "extract_answer",
    "normalize_answer",
    "predicted_first_error",
    "reliability_table",
    "threshold_sweep",
]

if TYPE_CHECKING:
    from .answers import answer_key, answers_equal, extract_answer, normalize_answer
    from .bon import Problem, best_of_n
    from .calibration import auroc, expected_calibration_error, reliability_table
    from .processbench import Sample, evaluate_processbench, predicted_first_error, threshold_sweep


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
