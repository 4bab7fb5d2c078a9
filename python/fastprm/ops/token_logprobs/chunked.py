"""The chunked forward and backward every device runs: torch GEMMs over (vocabulary, row) chunks into one
reused tile, with a device's row kernels (:class:`TileKernels`) doing the rest of each tile.

The vocabulary loop is outside, so each weight chunk is converted once; the rows keep a running max and sum of
exponentials (an online log-sum-exp) across vocabulary chunks. The matrix products run in the call's GEMM
dtype (``gemm_dtype``, :func:`~fastprm.ops.token_logprobs.reference.gemm_dtype_of`; see :class:`Gemm`);
everything else (the logits tile, the log-sum-exp, the softmax, the gradients' sums over chunks) runs in the
accumulator dtype, float32 (float64 for float64 hidden). Peak extra memory is one [row_chunk_size,
chunk_size] accumulator tile and a GEMM-dtype copy of it, one converted weight chunk and one converted row
chunk, plus the [N] row state (and, backward, grad_hidden in the accumulator dtype, one weight chunk's
gradient in it and grad_weight in weight's dtype).
"""

from __future__ import annotations

from typing import Protocol

import torch

from ...kernels.contract import accumulator_dtype, empty


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


def _fast_gemm(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether torch multiplies ``dtype`` matrices on ``device`` about as fast as float32 ones or faster.

    16-bit GEMMs on a CPU are fast only where torch hands them to oneDNN, as it does when oneDNN is enabled and
    has kernels for the CPU (``_is_mkldnn_*_supported``: AVX-512 or AMX for bf16, AVX512-FP16 or AMX-FP16 for
    fp16); elsewhere torch's fallback GEMM is several times slower than float32. On an AMD EPYC Zen 5, 2
    threads, a 2048 x 896 x 4096 GEMM: bf16 800 GFLOP/s, float32 180, fp16 (no AVX512-FP16) 38.
    """
    if device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return True
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_fp16_supported()


class Gemm:
    """The op's matrix products in ``dtype``, as a ``dtype`` GEMM (``torch.mm``) takes them: operands rounded
    to ``dtype``, products summed in float32 or wider inside the GEMM, the result rounded to ``dtype``. The
    results are then added into accumulator-dtype tensors (the logits tile, the gradients).

    Where ``dtype`` is 16-bit and the device has no fast GEMM for it (:func:`_fast_gemm`), the operands stay
    16-bit values held in float32 and a float32 GEMM's result is rounded to ``dtype``: the same numbers, up to
    the order of the sums, at float32 speed.
    """

    def __init__(self, dtype: torch.dtype, accumulator: torch.dtype, device: torch.device):
        self.dtype = dtype
        # What torch.mm receives: the GEMM dtype itself, or its values held in the accumulator dtype.
        self.operand_dtype = dtype if _fast_gemm(dtype, device) else accumulator

    def operand(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` rounded to the GEMM dtype, held in the operand dtype (``t`` itself when it already is)."""
        return t.to(self.dtype).to(self.operand_dtype)

    def product_into(self, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool) -> None:
        """``out += a @ b`` (``out = a @ b`` when not ``accumulate``: out's old contents, NaN included, are
        ignored). ``a`` and ``b`` come from :meth:`operand`; ``out`` is in the accumulator dtype."""
        if out.dtype == self.dtype:
            # Nothing to round: the GEMM writes into out itself (beta = 0 ignores its old contents).
            out.addmm_(a, b, beta=1.0 if accumulate else 0.0)
            return
        product = torch.mm(a, b).to(self.dtype)  # .to rounds a float32 GEMM's result; a no-op otherwise
        if accumulate:
            out.add_(product)
        else:
            out.copy_(product)


def _tile(buffer: torch.Tensor, n: int, v: int) -> torch.Tensor:
    """A contiguous [n, v] view of the front of ``buffer`` (the GEMMs write it with ``out=``-style calls)."""
    return buffer[: n * v].view(n, v)


def _logits_into(
    tile: torch.Tensor, rows: torch.Tensor, w: torch.Tensor, temperature: float, gemm: Gemm
) -> torch.Tensor:
    """tile = (rows @ w.T) / temperature, the product in the GEMM dtype, the division in the tile's."""
    gemm.product_into(tile, rows, w.T, accumulate=False)
    return tile if temperature == 1.0 else tile.div_(temperature)


def forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    chunk_size: int,
    row_chunk_size: int,
    gemm_dtype: torch.dtype,
    kernels: TileKernels,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logprobs [N] and lse [N] (accumulator dtype) of ``fastprm::token_logprobs_forward``; targets int64."""
    N, V = hidden.shape[0], weight.shape[0]
    acc = accumulator_dtype(hidden.dtype)
    gemm = Gemm(gemm_dtype, acc, hidden.device)
    # contract.empty: NaN-filled under the tests, so a value the loop fails to write (a target's logit) shows.
    row_max, sum_exp, target_logit = (empty(N, dtype=acc, device=hidden.device) for _ in range(3))
    buffer = empty(min(N, row_chunk_size) * min(V, chunk_size), dtype=acc, device=hidden.device)
    for v0 in range(0, V, chunk_size):
        w = gemm.operand(weight[v0 : v0 + chunk_size])
        for r0 in range(0, N, row_chunk_size):
            rows = slice(r0, r0 + row_chunk_size)
            h = gemm.operand(hidden[rows])
            logits = _logits_into(_tile(buffer, h.shape[0], w.shape[0]), h, w, temperature, gemm)
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
    gemm_dtype: torch.dtype,
    kernels: TileKernels,
) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_hidden [N, H] (hidden's dtype) and grad_weight [V, H] (weight's dtype) of
    ``fastprm::token_logprobs_backward``, the softmax recomputed tile by tile from the saved lse; both are
    summed in the accumulator dtype."""
    (N, H), V = hidden.shape, weight.shape[0]
    acc = accumulator_dtype(hidden.dtype)
    if N == 0:
        return hidden.new_zeros(0, H), weight.new_zeros(V, H)
    gemm = Gemm(gemm_dtype, acc, hidden.device)
    grad_hidden = hidden.new_zeros(N, H, dtype=acc)
    # A vocabulary chunk's weight gradient is final after its row loop, so it is summed in an accumulator-dtype
    # chunk and only then stored in weight's dtype: no [V, H] float32 copy of a 16-bit LM head.
    grad_weight = empty(V, H, dtype=weight.dtype, device=weight.device)
    grad_w_chunk = empty(min(V, chunk_size), H, dtype=acc, device=hidden.device)
    scale = grad_logprobs.to(acc) / temperature
    buffer = empty(min(N, row_chunk_size) * min(V, chunk_size), dtype=acc, device=hidden.device)
    for v0 in range(0, V, chunk_size):
        w = gemm.operand(weight[v0 : v0 + chunk_size])
        grad_w = grad_w_chunk[: w.shape[0]]
        for r0 in range(0, N, row_chunk_size):
            rows = slice(r0, r0 + row_chunk_size)
            h = gemm.operand(hidden[rows])
            grad_logits = _logits_into(_tile(buffer, h.shape[0], w.shape[0]), h, w, temperature, gemm)
            kernels.grad(grad_logits, targets[rows], v0, lse[rows], scale[rows])
            # d loss / d logits enters the GEMMs rounded to the GEMM dtype, as in autograd through eager's.
            g = gemm.operand(grad_logits)
            gemm.product_into(grad_hidden[rows], g, w, accumulate=True)
            # The first row chunk writes the chunk's gradient (no zero-fill pass), later ones add.
            gemm.product_into(grad_w, g.T, h, accumulate=r0 > 0)
        grad_weight[v0 : v0 + chunk_size].copy_(grad_w)
    return grad_hidden.to(hidden.dtype), grad_weight
