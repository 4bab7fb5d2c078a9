"""Evaluation metrics of PRM scores: ProcessBench, step calibration, best-of-N and answer matching."""

from .answers import answer_key, answers_equal, extract_answer, normalize_answer
from .best_of_n import AGGREGATES, Problem, aggregate_steps, best_of_n
from .calibration import auroc, expected_calibration_error, reliability_table
from .processbench import Sample, evaluate_processbench, predicted_first_error, threshold_sweep

__all__ = [
    "AGGREGATES",
    "Problem",
    "Sample",
    "aggregate_steps",
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
