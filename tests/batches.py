"""Packed test batches for the step-scoring op."""

from __future__ import annotations

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
