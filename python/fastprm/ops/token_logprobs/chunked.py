"""The chunked forward and backward every device runs: torch GEMMs over (vocabulary, row) chunks into one
reused tile, with a device's row kernels (:class:`TileKernels`) doing the rest of each tile.

The vocabulary loop is outside, so each weight chunk is converted to the accumulator dtype once; the rows
keep a running max and sum of exponentials (an online log-sum-exp) across vocabulary chunks. bf16 / fp16
operands are upcast per chunk and multiplied as float32 GEMMs: the products are exact in float32 and
accumulated in float32, and the logits are never rounded to 16 bits (which would cost ~0.1 nats at a logit of
20). Peak extra memory is one [row_chunk_size, chunk_size] tile, one converted weight chunk and one converted
row chunk, plus the [N] row state (and, backward, the float32 gradients).
"""

from __future__ import annotations

from typing import Protocol

import torch

from ...kernels.contract import accumulator_dtype


class TileKernels(Protocol):
    """A device's work on one [n, v] logits tile, the vocabulary chunk starting at column ``v0``."""

    def update(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        v0: int,
        row_max: torch.Tensor,
        sum_exp: torch.Tensor,
        target_logit: torch.Tensor,
        first: bool,
    ) -> None:
        """Folds the tile into the rows' running max and sum of exp (set, not merged, when ``first``) and
        stores the target logit of each row whose target lies in the chunk. May overwrite ``logits``."""

    def grad(
        self, logits: torch.Tensor, targets: torch.Tensor, v0: int, lse: torch.Tensor, scale: torch.Tensor
    ) -> None:
        """Turns the tile into d loss / d (hidden @ W.T) in place: scale * (onehot(targets) - exp(logits -
        lse)), scale being grad_logprobs / temperature per row."""


def _tile(buffer: torch.Tensor, n: int, v: int) -> torch.Tensor:
    """A contiguous [n, v] view of the front of ``buffer`` (the GEMMs write it with ``out=``-style calls)."""
    return buffer[: n * v].view(n, v)


def _logits_into(tile: torch.Tensor, rows: torch.Tensor, w: torch.Tensor, temperature: float) -> torch.Tensor:
    """tile = rows @ w.T / temperature; beta = 0 ignores the tile's old contents (NaN included)."""
    return tile.addmm_(rows, w.T, beta=0.0, alpha=1.0 / temperature)


def forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    chunk_size: int,
    row_chunk_size: int,
    kernels: TileKernels,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logprobs [N] and lse [N] (accumulator dtype) of ``fastprm::token_logprobs_forward``; targets int64."""
    N, V = hidden.shape[0], weight.shape[0]
    acc = accumulator_dtype(hidden.dtype)
    row_max, sum_exp, target_logit = (hidden.new_empty(N, dtype=acc) for _ in range(3))
    buffer = hidden.new_empty(min(N, row_chunk_size) * min(V, chunk_size), dtype=acc)
    for v0 in range(0, V, chunk_size):
        w = weight[v0 : v0 + chunk_size].to(acc)
        for r0 in range(0, N, row_chunk_size):
            rows = slice(r0, r0 + row_chunk_size)
            h = hidden[rows].to(acc)
            logits = _logits_into(_tile(buffer, h.shape[0], w.shape[0]), h, w, temperature)
            kernels.update(
                logits, targets[rows], v0, row_max[rows], sum_exp[rows], target_logit[rows], v0 == 0
            )
    lse = row_max + torch.log(sum_exp)
    return target_logit - lse, lse


def backward(
    grad_logprobs: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    temperature: float,
    chunk_size: int,
    row_chunk_size: int,
    kernels: TileKernels,
) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_hidden [N, H] and grad_weight [V, H] (accumulator dtype) of ``fastprm::token_logprobs_backward``,
    the softmax recomputed tile by tile from the saved lse."""
    (N, H), V = hidden.shape, weight.shape[0]
    acc = accumulator_dtype(hidden.dtype)
    grad_hidden = hidden.new_zeros(N, H, dtype=acc)
    grad_weight = hidden.new_zeros(V, H, dtype=acc) if N == 0 else hidden.new_empty(V, H, dtype=acc)
    scale = grad_logprobs.to(acc) / temperature
    buffer = hidden.new_empty(min(N, row_chunk_size) * min(V, chunk_size), dtype=acc)
    for v0 in range(0, V, chunk_size):
        w = weight[v0 : v0 + chunk_size].to(acc)
        grad_w = grad_weight[v0 : v0 + chunk_size]
        for r0 in range(0, N, row_chunk_size):
            rows = slice(r0, r0 + row_chunk_size)
            h = hidden[rows].to(acc)
            grad_logits = _logits_into(_tile(buffer, h.shape[0], w.shape[0]), h, w, temperature)
            kernels.grad(grad_logits, targets[rows], v0, lse[rows], scale[rows])
            grad_hidden[rows].addmm_(grad_logits, w)
            # The first row chunk writes the weight chunk's gradient (beta = 0: no zero-fill pass), later ones add.
            grad_w.addmm_(grad_logits.T, h, beta=0.0 if r0 == 0 else 1.0)
    return grad_hidden, grad_weight
