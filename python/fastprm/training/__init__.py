"""PRM training: the fused step loss, batching and a transformers-Trainer-based trainer."""

from .batches import StepCollator, StepDataset, TokenBudgetBatchSampler
from .loss import step_bce, step_loss_mask
from .trainer import PRMTrainer, PRMTrainingArguments

__all__ = [
    "PRMTrainer",
    "PRMTrainingArguments",
    "StepCollator",
    "StepDataset",
    "TokenBudgetBatchSampler",
    "step_bce",
    "step_loss_mask",
]
