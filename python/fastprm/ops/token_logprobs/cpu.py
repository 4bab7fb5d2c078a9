"""CPU backend: the chunked loop of ``chunked.py`` (torch GEMMs: MKL / oneDNN do the matrix work) with the
per-tile row work as a few torch ops, each one vectorised pass over the tile."""

from __future__ import annotations

import torch

from . import chunked


def _target_columns(
    logits: torch.Tensor, targets: torch.Tensor, v0: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tile column of each row's target (clamped into the tile) and whether the target is in the tile."""
    local = targets - v0
    inside = (local >= 0) & (local < logits.shape[1])
    return local.clamp(0, logits.shape[1] - 1), inside


class TorchTileKernels:
    """:class:`~fastprm.ops.token_logprobs.chunked.TileKernels` as torch ops."""

    @staticmethod
    def update(logits, targets, v0, row_max, sum_exp, target_logit, first):
        columns, inside = _target_columns(logits, targets, v0)
        picked = logits.gather(1, columns[:, None]).squeeze(1)
        target_logit.copy_(torch.where(inside, picked, target_logit))
        # amax and maximum propagate NaN, so a NaN row stays NaN and no other row sees it.
        new_max = logits.amax(dim=1) if first else torch.maximum(row_max, logits.amax(dim=1))
        chunk_sum = logits.sub_(new_max[:, None]).exp_().sum(dim=1)
        if first:
            sum_exp.copy_(chunk_sum)
        else:
            sum_exp.mul_(torch.exp(row_max - new_max)).add_(chunk_sum)
        row_max.copy_(new_max)

    @staticmethod
    def grad(logits, targets, v0, lse, scale):
        logits.sub_(lse[:, None]).exp_().mul_(-scale[:, None])
        columns, inside = _target_columns(logits, targets, v0)
        rows = torch.arange(logits.shape[0], device=logits.device)
        logits.index_put_((rows, columns), torch.where(inside, scale, 0.0), accumulate=True)


def token_logprobs_forward(hidden, weight, targets, temperature, chunk_size, row_chunk_size, gemm_dtype):
    """``fastprm::token_logprobs_forward``: hidden [N, H] and weight [V, H] float (any dtype), targets [N]
    int64 in [0, V) -> logprobs [N], lse [N] in the accumulator dtype, the products in ``gemm_dtype``."""
    return chunked.forward(
        hidden, weight, targets, temperature, chunk_size, row_chunk_size, gemm_dtype, TorchTileKernels
    )


def token_logprobs_backward(
    grad_logprobs, hidden, weight, targets, lse, temperature, chunk_size, row_chunk_size, gemm_dtype
):
    """``fastprm::token_logprobs_backward`` -> grad_hidden [N, H], grad_weight [V, H] (hidden's and weight's
    dtypes)."""
    return chunked.backward(
        grad_logprobs,
        hidden,
        weight,
        targets,
        lse,
        temperature,
        chunk_size,
        row_chunk_size,
        gemm_dtype,
        TorchTileKernels,
    )
