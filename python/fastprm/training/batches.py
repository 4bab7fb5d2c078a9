"""Training batches: tokenized step examples, length-sorted token-budget batching and the collator."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Sampler

from ..batching import token_budget_batches
from ..packing import pack_rows, pad_rows
from ..tokenization import StepTokenizer


@dataclass
class SkippedRow:
    source_row: int
    reason: str


class StepDataset(Dataset):
    """Step examples tokenized for one convention: items are dicts with ``input_ids``, ``step_ends``,
    ``step_labels`` and ``length``.

    Rows longer than ``max_length`` lose their trailing steps (and labels); rows left with no step are
    skipped and listed in ``skipped``.
    """

    def __init__(self, examples: Sequence, tokenizer: StepTokenizer):
        rows = tokenizer([e.prompt for e in examples], [e.steps for e in examples])
        self.items: list[dict] = []
        self.skipped: list[SkippedRow] = []
        for example, row in zip(examples, rows):
            if not row.step_ends:
                self.skipped.append(SkippedRow(example.source_row, "no step fits in max_length"))
                continue
            self.items.append(
                {
                    "input_ids": row.input_ids,
                    "step_ends": row.step_ends,
                    "step_labels": list(example.labels[: len(row.step_ends)]),
                    "length": len(row.input_ids),
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class StepCollator:
    """Collates items into one batch for :meth:`fastprm.models.PRM.forward`: right-padded [B, T] rows, or
    with ``packed=True`` one [1, N] varlen sequence with per-row position_ids (no padding tokens at all).

    Returns input_ids, attention_mask (None unless padded rows differ in length), position_ids (packed
    only), step_index [K] (flat rows of the hidden states), cu_steps [B + 1] and step_labels [K] float32.
    """

    def __init__(self, pad_id: int, packed: bool = False):
        self.pad_id = pad_id
        self.packed = packed

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor | None]:
        ids, ends = [it["input_ids"] for it in items], [it["step_ends"] for it in items]
        batch = pack_rows(ids, ends) if self.packed else pad_rows(ids, ends, self.pad_id)
        labels = torch.tensor([x for it in items for x in it["step_labels"]], dtype=torch.float32)
        return {**vars(batch), "step_labels": labels}


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Batches of similar-length rows whose padded size fits ``batch_tokens``, in a seeded random order that
    changes with :meth:`set_epoch` (deterministic, so a resumed run sees the same batches)."""

    def __init__(self, lengths: Sequence[int], batch_tokens: int, seed: int = 0, shuffle: bool = True):
        self.batches = token_budget_batches(lengths, batch_tokens)
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.batches)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        return (self.batches[i] for i in order)

    def __len__(self) -> int:
        return len(self.batches)
