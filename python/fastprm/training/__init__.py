"""PRM training: the fused step loss, batching and a transformers-Trainer-based trainer.

Names load lazily, so ``fastprm.training.label_modes`` imports without torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .label_modes import LABEL_MODES

_LAZY = {
    "PRMTrainer": "fastprm.training.trainer",
    "PRMTrainingArguments": "fastprm.training.trainer",
    "StepCollator": "fastprm.training.batches",
    "StepDataset": "fastprm.training.batches",
    "TokenBudgetBatchSampler": "fastprm.training.batches",
    "step_bce": "fastprm.training.loss",
    "step_bce_sum": "fastprm.training.loss",
    "step_loss_mask": "fastprm.training.loss",
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


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'fastprm.training' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
