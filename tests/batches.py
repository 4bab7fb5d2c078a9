"""Packed test batches for the step-scoring op."""

from __future__ import annotations

import math

import torch

SEP = 7


def packed_ids(rows: list[list[int]], dtype: torch.dtype = torch.int64) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [N] and cu_seqlens [B + 1] for a list of per-sequence id lists."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    cu = torch.zeros(len(rows) + 1, dtype=dtype)
    cu[1:] = torch.cumsum(lengths, 0)
    flat = [i for r in rows for i in r]
    return torch.tensor(flat, dtype=dtype), cu


def edge_case_rows() -> list[list[int]]:
    """Every layout the op must handle, in one batch."""
    return [
        [],  # empty sequence
        [1, 2, 3],  # no step
        [SEP, 1, 2, SEP],  # separator first and last
        [SEP],  # length 1, a step
        [4],  # length 1, no step
        [SEP, SEP, SEP, SEP],  # all separators
        [1, 2, SEP, 3, 4, 5, SEP, 6],  # trailing tokens after the last step
        [],
    ]


def random_rows(gen: torch.Generator, batch: int, max_len: int, sep_rate: float = 0.2) -> list[list[int]]:
    rows = []
    for _ in range(batch):
        n = int(torch.randint(0, max_len + 1, (1,), generator=gen))
        ids = torch.randint(0, 6, (n,), generator=gen)
        ids[torch.rand(n, generator=gen) < sep_rate] = SEP
        rows.append(ids.tolist())
    return rows


def nan_step_batch(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [8, 1], weight [1, 1], step_index [8], cu_steps [4] of three sequences whose step probabilities
    are [NaN, 0.9, 0.9] (NaN first), [0.9, 0.2, NaN, 0.1] (NaN after a real error) and [NaN] (NaN only)."""
    probs = [[math.nan, 0.9, 0.9], [0.9, 0.2, math.nan, 0.1], [math.nan]]
    logits = [math.log(p / (1 - p)) if p == p else p for row in probs for p in row]
    hidden = torch.tensor(logits).unsqueeze(1).to(dtype)
    return hidden, torch.ones(1, 1, dtype=dtype), torch.arange(8), torch.tensor([0, 3, 7, 8])


def overflowing_logits_batch(
    dtype: torch.dtype, C: int, sign: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [3, 4] (dtype), weight [C, 4] float32, step_index [3], cu_steps [3]: sequences [row 0, row 1]
    and [row 2], where row 1 holds +-the dtype's largest finite value, so that its logit of class C - 1
    overflows float32 to sign * inf; every other logit is 0."""
    hidden = torch.zeros(3, 4, dtype=dtype)
    hidden[1, :2] = sign * torch.finfo(dtype).max
    weight = torch.zeros(C, 4)
    weight[C - 1, :2] = 1e34 if dtype == torch.float16 else 1.0  # fp16's max needs a large weight to overflow
    return hidden, weight, torch.tensor([0, 1, 2]), torch.tensor([0, 2, 3])
