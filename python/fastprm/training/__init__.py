"""PRM training: the fused step loss, batching and a transformers-Trainer-based trainer.

Names load lazily, so ``fastprm.training.label_modes`` imports without torch or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from .label_modes import LABEL_MODES

_LAZY = {
    "PRMTrainer": ".trainer",
    "PRMTrainingArguments": ".trainer",
    "StepCollator": ".batches",
    "StepDataset": ".batches",
    "TokenBudgetBatchSampler": ".batches",
    "step_bce": ".loss",
    "step_bce_sum": ".loss",
    "step_loss_mask": ".loss",
}

__all__ = [
    "LABEL_MODES",
    "PRMTrainer",
    "PRMTrainingArguments",
    "StepCollator",
    "StepDataset",
    "TokenBudgetBatchSampler",
    "step_bce",
    "step_bce_sum",
    "step_loss_mask",
]

if TYPE_CHECKING:
    from .batches import StepCollator, StepDataset, TokenBudgetBatchSampler
    from .loss import step_bce, step_bce_sum, step_loss_mask
    from .trainer import PRMTrainer, PRMTrainingArguments


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
