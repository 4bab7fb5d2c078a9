"""``PRMTrainer``: transformers ``Trainer`` with the fused step loss, so DDP / FSDP / DeepSpeed work unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments

from .batches import StepCollator, TokenBudgetBatchSampler
from .loss import step_bce_sum


@dataclass
class PRMTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the step loss and batching options of PRM training."""

    label_mode: str = field(default="all", metadata={"help": "all, last or first_error"})
    pos_weight: float | None = field(default=None, metadata={"help": "weight of the positive BCE term"})
    batch_tokens: int | None = field(
        default=None,
        metadata={"help": "token budget per batch (length-sorted batches); default: fixed batch size"},
    )
    packed: bool = field(
        default=False,
        metadata={"help": "pack each batch into one varlen sequence (no padding) instead of right-padding"},
    )
    remove_unused_columns: bool = False


class PRMTrainer(Trainer):
    """Trains a :class:`fastprm.models.PRM` on :class:`~fastprm.training.batches.StepDataset` items.

    The loss is the per-step BCE of :func:`fastprm.training.loss.step_bce`, averaged over the counted steps of
    the whole global batch (every rank divides by the all-reduced step count), so N processes on N shards
    train exactly like one process on the whole batch.
    """

    def __init__(self, model, args: PRMTrainingArguments, pad_id: int | None = None, **kwargs):
        pad_id = pad_id if pad_id is not None else (model.tokenizer.pad_token_id or 0)
        kwargs.setdefault("data_collator", StepCollator(pad_id, packed=args.packed))
        kwargs.setdefault("compute_metrics", step_metrics)
        super().__init__(model=model, args=args, **kwargs)
        self.loss_is_scaled_for_ga = False  # a per-batch mean: Trainer divides by the accumulation steps

    def get_train_dataloader(self) -> DataLoader:
        if self.args.batch_tokens is None:
            return super().get_train_dataloader()
        lengths = [item["length"] for item in self.train_dataset]
        sampler = TokenBudgetBatchSampler(lengths, self.args.batch_tokens, seed=self.args.seed)
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
        )
        return self.accelerator.prepare(loader)

    def _step_loss(self, model, inputs):
        step_logits, step_probs = model(
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["step_index"],
            inputs["cu_steps"],
            position_ids=inputs.get("position_ids"),
        )
        unwrapped = self.accelerator.unwrap_model(model)
        labels, cu_steps = inputs["step_labels"], inputs["cu_steps"]
        loss_sum, counted = step_bce_sum(
            step_logits, labels, cu_steps, positive_class=unwrapped.convention.positive_class,
            mode=self.args.label_mode, pos_weight=self.args.pos_weight,
        )  # fmt: skip
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world > 1 and model.training:
            # Gradients are averaged over ranks: scale by world / global count to get the global mean.
            total = counted.detach().clone()
            dist.all_reduce(total)
            return loss_sum * world / total.clamp(min=1), step_probs
        return loss_sum / counted.clamp(min=1), step_probs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, step_probs = self._step_loss(model, inputs)
        return (loss, step_probs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, step_probs = self._step_loss(model, inputs)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), step_probs.detach().float(), inputs["step_labels"]

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints keep Trainer's own layout (exact resume); a final save writes fastprm's format."""
        if _internal_call:
            return super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self.accelerator.unwrap_model(self.model).save_pretrained(output_dir or self.args.output_dir)


def step_metrics(prediction) -> dict[str, float]:
    """Step accuracy (threshold 0.5) and step AUROC of evaluation predictions."""
    from ..metrics import auroc

    probs = np.asarray(prediction.predictions, dtype=np.float64).reshape(-1)
    labels = np.asarray(prediction.label_ids, dtype=np.float64).reshape(-1) >= 0.5
    return {
        "step_accuracy": float(((probs >= 0.5) == labels).mean()) if len(labels) else float("nan"),
        "step_auroc": float(auroc(probs, labels.astype(np.int64))),
    }
