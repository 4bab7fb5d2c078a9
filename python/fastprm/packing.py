"""Backbone batches from tokenized rows: right-padded [B, T] or packed varlen [1, N], with the step rows of each.

Scoring and training share these so that both hand the backbone and the fused head exactly the same layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class BackboneBatch:
    """One backbone forward's inputs and where its step rows are.

    Attributes:
        input_ids: [B, T] right-padded, or [1, N] packed (rows concatenated), int64.
        attention_mask: [B, T] int64 (1 = real token) when padded rows differ in length, else None.
        position_ids: [1, N] int64 restarting at 0 for every packed row (transformers builds the
            block-diagonal causal mask from it), or None for padded batches.
        step_index: [K] int64, flat rows of the [B * T] (or [N]) hidden states that close a step.
        cu_steps: [B + 1] int64, offsets of each row's steps in ``step_index``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    step_index: torch.Tensor
    cu_steps: torch.Tensor

    def to(self, device: torch.device | str) -> BackboneBatch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return BackboneBatch(*(move(getattr(self, f)) for f in self.__dataclass_fields__))


def cu_seqlens(lengths: Sequence[int]) -> torch.Tensor:
    """[len(lengths) + 1] int64 exclusive prefix sums: 0, l0, l0 + l1, ..."""
    out = torch.zeros(len(lengths) + 1, dtype=torch.long)
    out[1:] = torch.tensor(list(lengths), dtype=torch.long).cumsum(0)
    return out


def _step_index(step_ends: Sequence[Sequence[int]], row_starts: Sequence[int]) -> torch.Tensor:
    return torch.tensor(
        [start + e for start, ends in zip(row_starts, step_ends) for e in ends], dtype=torch.long
    )


def pad_rows(
    input_ids: Sequence[Sequence[int]], step_ends: Sequence[Sequence[int]], pad_id: int
) -> BackboneBatch:
    """Right-pads rows into [B, T]; the mask is left out when every row has the same length, so the
    backbone runs plain causal attention."""
    lengths = [len(ids) for ids in input_ids]
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad_id, dtype=torch.long)
    for b, row in enumerate(input_ids):
        ids[b, : lengths[b]] = torch.as_tensor(row, dtype=torch.long)
    mask = None
    if min(lengths) != T:
        mask = (torch.arange(T) < torch.tensor(lengths).unsqueeze(1)).long()
    return BackboneBatch(
        input_ids=ids,
        attention_mask=mask,
        position_ids=None,
        step_index=_step_index(step_ends, [b * T for b in range(len(lengths))]),
        cu_steps=cu_seqlens([len(e) for e in step_ends]),
    )


def pack_rows(input_ids: Sequence[Sequence[int]], step_ends: Sequence[Sequence[int]]) -> BackboneBatch:
    """Concatenates rows into one [1, N] sequence with per-row position_ids: no padding at all, and
    attention never crosses rows (transformers reads row boundaries from the position_ids restarts)."""
    lengths = [len(ids) for ids in input_ids]
    starts = cu_seqlens(lengths)
    return BackboneBatch(
        input_ids=torch.tensor([t for row in input_ids for t in row], dtype=torch.long).unsqueeze(0),
        attention_mask=None,
        position_ids=torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0),
        step_index=_step_index(step_ends, starts[:-1].tolist()),
        cu_steps=cu_seqlens([len(e) for e in step_ends]),
    )
