"""Per-machine choice of how the Scorer runs (batch layout, token budget, GEMM route, compilation), by
measurement: :func:`tuned_plan` (cached), :func:`calibrate` (measure now), :class:`ScoringPlan`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

_SOURCES = {
    "ScoringPlan": ".plan",
    "calibrate": ".calibration",
    "calibration_key": ".calibration",
    "fallback_plan": ".calibration",
    "tuned_plan": ".calibration",
}
__all__ = ["ScoringPlan", "calibrate", "calibration_key", "fallback_plan", "tuned_plan"]

if TYPE_CHECKING:
    from .calibration import calibrate, calibration_key, fallback_plan, tuned_plan
    from .plan import ScoringPlan

__getattr__, __dir__ = lazy_attributes(__name__, _SOURCES)
