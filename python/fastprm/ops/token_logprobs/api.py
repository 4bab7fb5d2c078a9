"""The documented public function of the token log-probability op and its argument checks."""

from __future__ import annotations

import math

import torch

from . import schema
from .reference import gemm_dtype_of, token_logprobs_reference

__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_ROW_CHUNK_SIZE", "token_logprobs", "token_logprobs_reference"]

# A 2048 x 4096 float32 tile is 32 MiB, small next to the [N, V] logits it replaces and large enough that the
# GEMMs dominate (bench_logprobs.py: the forward within 1% of its GEMMs alone); other sizes are not tuned yet.
DEFAULT_CHUNK_SIZE = 4096
DEFAULT_ROW_CHUNK_SIZE = 2048

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_INDEX_DTYPES = (torch.int32, torch.int64)


def _check_tensor(t, name: str, dtypes: tuple[torch.dtype, ...], ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be positive, got {value}")


def token_logprobs(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    row_chunk_size: int = DEFAULT_ROW_CHUNK_SIZE,
    temperature: float = 1.0,
    gemm_dtype: str = "input",
) -> torch.Tensor:
    """log p(targets[n]) under softmax(hidden[n] @ lm_head_weight.T / temperature), without the [N, V] logits.

    The vocabulary is taken ``chunk_size`` rows of the LM head at a time and the rows ``row_chunk_size`` at a
    time: each (rows, vocabulary) chunk is one GEMM, its logits upcast into a reused [row_chunk_size,
    chunk_size] float32 tile, folded into a per-row online log-sum-exp, and the target's logit is read from the
    chunk that holds it. The backward recomputes the softmax chunk by chunk from the saved per-row
    log-sum-exp: d logprob / d logits = (onehot(target) - softmax) / temperature, projected back by two more
    GEMMs per chunk.

    Args:
        hidden: [N, H] float32 / bfloat16 / float16 (float64 for gradcheck) rows, e.g. a causal LM's final
            hidden states at the positions before each target token; any strides.
        lm_head_weight: [V, H] float LM head (any float dtype).
        targets: [N] int32 / int64 token ids in [0, V).
        chunk_size: vocabulary rows per chunk (need not divide V).
        row_chunk_size: hidden rows per chunk (need not divide N).
        temperature: finite, positive divisor of the logits.
        gemm_dtype: the dtype of the matrix products (the logits GEMM and, backward, the two gradient GEMMs).
            It matters only for 16-bit inputs (float32 / float64 ones multiply in their own dtype either way):

            - ``"input"`` (default): the inputs' dtype, as eager ``log_softmax(hidden @ lm_head_weight.T)`` and
              transformers compute it: bf16 / fp16 logits (rounded to 16 bits), upcast to float32 for the
              log-softmax; backward, d loss / d logits rounded to 16 bits enters 16-bit gradient GEMMs. On a GPU
              or a CPU with AVX512-BF16 or AMX, bf16 GEMMs are several times faster than float32 ones (4.5x on
              an AMD EPYC Zen 5). Where a device has no fast 16-bit GEMM (fp16 on most CPUs), a float32 GEMM
              over the same values runs instead, its result rounded to 16 bits: the same numbers. As in eager,
              fp16 logits beyond +-65,504 overflow to +-inf (a +inf logit makes its row NaN).
            - ``"float32"``: 16-bit operands upcast, float32 GEMMs: logits never rounded to 16 bits (a bf16
              logit near 20 is off by up to 0.06), at float32 GEMM speed.

            The log-sum-exp, the softmax and the sums over chunks run in float32 either way.

    Returns:
        [N] float32 (float64 for float64 hidden) log-probabilities; gradients flow to hidden and
        lm_head_weight. A row with a NaN (or inf) in hidden gives NaN in that row only.

    Raises:
        TypeError / ValueError: naming the argument, for a wrong type, dtype, shape or device, a target out of
        [0, V), a non-finite or non-positive temperature, a non-positive chunk size or an unknown
        ``gemm_dtype``.
    """
    _check_tensor(hidden, "hidden", _FLOAT_DTYPES, 2)
    _check_tensor(lm_head_weight, "lm_head_weight", _FLOAT_DTYPES, 2)
    _check_tensor(targets, "targets", _INDEX_DTYPES, 1)
    for t, name in ((lm_head_weight, "lm_head_weight"), (targets, "targets")):
        if t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {hidden.device}")
    (N, H), V = hidden.shape, lm_head_weight.shape[0]
    if lm_head_weight.shape[1] != H:
        raise ValueError(f"lm_head_weight has H = {lm_head_weight.shape[1]} columns but hidden has {H}")
    if V == 0:
        raise ValueError("lm_head_weight must have at least one row (V >= 1)")
    if targets.shape[0] != N:
        raise ValueError(
            f"targets must be [N] = [{N}] (one per hidden row), got shape {tuple(targets.shape)}"
        )
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and positive, got {temperature!r}")
    _check_positive_int(chunk_size, "chunk_size")
    _check_positive_int(row_chunk_size, "row_chunk_size")
    gemm = gemm_dtype_of(hidden.dtype, lm_head_weight.dtype, gemm_dtype)
    if N:
        bad = torch.nonzero(
            (targets < 0) | (targets >= V)
        ).flatten()  # one host sync, as the checks of score_steps
        if bad.numel():
            n = int(bad[0])
            raise ValueError(f"targets[{n}] = {int(targets[n])} is out of range [0, {V})")
    targets = targets.to(torch.int64).contiguous()
    logprobs, _lse = schema.token_logprobs_forward(
        hidden, lm_head_weight, targets, float(temperature), chunk_size, row_chunk_size, gemm
    )
    return logprobs
