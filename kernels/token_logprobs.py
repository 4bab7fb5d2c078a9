"""Triton row kernels of the token log-probability op (the CUDA path) and their launchers.

The GEMMs stay with cuBLAS (``fastprm/ops/token_logprobs/chunked.py`` runs them in the call's GEMM dtype and
upcasts their logits into a float32 tile); these kernels do the rest of each tile in one pass over it, one
program per row: :func:`update` folds the tile into the row's online log-sum-exp and picks the target's
logit, :func:`grad` turns the tile into d loss / d logits in place. They have the contract of
``chunked.TileKernels``; the reference, ``fastprm/ops/token_logprobs/reference.py``, is the spec.
Deterministic: each row's sums run in a fixed order. Imports nothing from fastprm.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK_V = 1024


def _block(v: int) -> int:
    return max(16, min(triton.next_power_of_2(v), _BLOCK_V))


@triton.jit
def _update_kernel(
    logits_ptr,
    targets_ptr,
    row_max_ptr,
    sum_exp_ptr,
    target_logit_ptr,
    v,
    v0,
    stride,
    FIRST: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    m = tl.full([], float("-inf"), tl.float32)
    s = tl.zeros([], dtype=tl.float32)
    for c0 in range(0, v, BLOCK_V):
        cols = c0 + tl.arange(0, BLOCK_V)
        mask = cols < v
        x = tl.load(base + cols, mask=mask, other=float("-inf"))
        new_m = tl.maximum(m, tl.max(x, axis=0))
        # A NaN logit makes its exp NaN, so the sum (and the row's lse) is NaN whether or not max kept it.
        alpha = tl.where(m == float("-inf"), 0.0, tl.exp(m - new_m))
        s = s * alpha + tl.sum(tl.where(mask, tl.exp(x - new_m), 0.0), axis=0)
        m = new_m
    if FIRST:
        tl.store(row_max_ptr + row, m)
        tl.store(sum_exp_ptr + row, s)
    else:
        old_m = tl.load(row_max_ptr + row)
        old_s = tl.load(sum_exp_ptr + row)
        new_m = tl.maximum(old_m, m)
        tl.store(row_max_ptr + row, new_m)
        tl.store(sum_exp_ptr + row, old_s * tl.exp(old_m - new_m) + s * tl.exp(m - new_m))
    local = tl.load(targets_ptr + row) - v0
    inside = (local >= 0) & (local < v)
    picked = tl.load(base + local, mask=inside, other=0.0)
    tl.store(target_logit_ptr + row, picked, mask=inside)


@triton.jit
def _grad_kernel(logits_ptr, targets_ptr, lse_ptr, scale_ptr, v, v0, stride, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    lse = tl.load(lse_ptr + row)
    scale = tl.load(scale_ptr + row)
    local = tl.load(targets_ptr + row) - v0
    for c0 in range(0, v, BLOCK_V):
        cols = c0 + tl.arange(0, BLOCK_V)
        mask = cols < v
        x = tl.load(base + cols, mask=mask, other=0.0)
        onehot = tl.where(cols == local, 1.0, 0.0)
        tl.store(base + cols, scale * (onehot - tl.exp(x - lse)), mask=mask)


def _check_tile(logits: torch.Tensor) -> None:
    if logits.dtype != torch.float32 or logits.stride(1) != 1:
        raise ValueError("the logits tile must be float32 with unit column stride")


def update(
    logits: torch.Tensor,
    targets: torch.Tensor,
    v0: int,
    row_max: torch.Tensor,
    sum_exp: torch.Tensor,
    target_logit: torch.Tensor,
    first: bool,
) -> None:
    """Folds the [n, v] float32 tile (vocabulary columns v0 .. v0 + v) into row_max / sum_exp [n] (set when
    ``first``) and stores target_logit [n] where targets [n] int64 falls in the tile."""
    _check_tile(logits)
    n, v = logits.shape
    if n:
        _update_kernel[(n,)](
            logits, targets, row_max, sum_exp, target_logit, v, v0, logits.stride(0), first, _block(v)
        )


def grad(
    logits: torch.Tensor, targets: torch.Tensor, v0: int, lse: torch.Tensor, scale: torch.Tensor
) -> None:
    """In place: logits [n, v] float32 -> scale * (onehot(targets - v0) - exp(logits - lse)); lse, scale [n]
    float32, targets [n] int64."""
    _check_tile(logits)
    n, v = logits.shape
    if n:
        _grad_kernel[(n,)](logits, targets, lse, scale, v, v0, logits.stride(0), _block(v))
