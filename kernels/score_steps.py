"""Triton kernels of the fused step-scoring op (the CUDA path) and their Python launchers.

The launchers have the contracts of ``fastprm::find_steps``, ``fastprm::score_steps_forward`` and
``fastprm::score_steps_backward`` (the reference, ``fastprm/ops/step_scoring/reference.py``, is the spec) for
float32 / bfloat16 / float16 hidden states; a step_index of None (rows mode: hidden holds exactly the step rows,
row k being step k) reaches the kernels as a None pointer, which Triton compiles as a constant, so rows mode gets
kernels without the index loads; the caller (``fastprm/ops/step_scoring/cuda.py``) decides what runs
elsewhere. Every result is deterministic and batch-invariant: no float atomics, and each sum is taken in a
fixed order. From fastprm this imports only the op's contract (``contract.py``, a leaf).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .contract import check_offsets, check_steps, empty, step_count

_FIND_BLOCK_ROWS = 1024
_FIND_BLOCK_SEPS = 16
_FORWARD_BLOCK_STEPS = 16
_FORWARD_BLOCK_H = 128
_REDUCE_BLOCK_STEPS = 128
_GRAD_HIDDEN_BLOCK_H = 1024
_GRAD_WEIGHT_BLOCK_STEPS = 32
_GRAD_WEIGHT_BLOCK_H = 64


def _block(n: int, cap: int) -> int:
    """Power-of-two block covering ``n`` elements, between 16 and ``cap``."""
    return max(16, min(triton.next_power_of_2(n), cap))


def _float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a contiguous float32 tensor (the head and gradients are read as float32)."""
    return t.to(torch.float32).contiguous()


@triton.jit
def _load_columns(ptr, steps, mask, C: tl.constexpr):
    """Columns 0 and 1 at ``steps`` of a [K, C] matrix, 0 off the mask (the second is the first when C = 1)."""
    first = tl.load(ptr + steps * C, mask=mask, other=0.0)
    second = first
    if C == 2:
        second = tl.load(ptr + steps * C + 1, mask=mask, other=0.0)
    return first, second


@triton.jit
def _step_rows(step_index_ptr, steps, mask):
    """int64 rows of hidden holding ``steps``: step_index[steps], or the steps themselves in rows mode (a None
    step_index_ptr)."""
    rows = steps.to(tl.int64)  # int64 like the loaded index: row offsets may pass 2**31
    if step_index_ptr is not None:
        rows = tl.load(step_index_ptr + steps, mask=mask, other=0)
    return rows


@triton.jit
def _load_step_rows(hidden_ptr, rows, row_mask, cols, col_mask, stride_n, stride_h):
    """[len(rows), len(cols)] float32 tile of hidden at the given rows and columns (0 off the masks)."""
    offsets = rows[:, None] * stride_n + cols[None, :].to(tl.int64) * stride_h  # int64: may pass 2**31
    return tl.load(
        hidden_ptr + offsets,
        mask=row_mask[:, None] & col_mask[None, :],
        other=0.0,
    ).to(tl.float32)


# ---------------------------------------------------------------------------------------------------------------
# find_steps
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _separator_flags(ids_ptr, seps_ptr, rows, mask, S, BLOCK_ROWS: tl.constexpr, BLOCK_SEPS: tl.constexpr):
    """[BLOCK_ROWS] int32: 1 where the row holds one of the S separator ids, 0 elsewhere (and off the end)."""
    ids = tl.load(ids_ptr + rows, mask=mask, other=0).to(tl.int64)
    flags = tl.zeros([BLOCK_ROWS], dtype=tl.int32)
    for s0 in range(0, S, BLOCK_SEPS):
        s = s0 + tl.arange(0, BLOCK_SEPS)
        seps = tl.load(seps_ptr + s, mask=s < S, other=0)
        hit = (ids[:, None] == seps[None, :]) & (s < S)[None, :]
        # Reduce int32, not bool: bool reductions saturate in the Triton interpreter.
        flags = tl.maximum(flags, tl.max(hit.to(tl.int32), axis=1))
    return tl.where(mask, flags, 0)


@triton.jit
def _count_separators_kernel(
    ids_ptr, seps_ptr, counts_ptr, N, S, BLOCK_ROWS: tl.constexpr, BLOCK_SEPS: tl.constexpr
):
    block = tl.program_id(0)
    rows = block.to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    flags = _separator_flags(ids_ptr, seps_ptr, rows, rows < N, S, BLOCK_ROWS, BLOCK_SEPS)
    tl.store(counts_ptr + block, tl.sum(flags, axis=0))


@triton.jit
def _fill_steps_kernel(
    ids_ptr,
    seps_ptr,
    block_start_ptr,
    step_index_ptr,
    N,
    S,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_SEPS: tl.constexpr,
):
    block = tl.program_id(0)
    rows = block.to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    flags = _separator_flags(ids_ptr, seps_ptr, rows, rows < N, S, BLOCK_ROWS, BLOCK_SEPS)
    # Steps before this block, plus the separators before each row within it.
    slot = tl.load(block_start_ptr + block) + tl.cumsum(flags, axis=0) - 1
    tl.store(step_index_ptr + slot, rows, mask=flags == 1)


def find_steps(
    input_ids: torch.Tensor, cu_seqlens: torch.Tensor, sep_token_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fastprm::find_steps``: input_ids [N], cu_seqlens [B + 1] int32/int64 and sep_token_ids [S] int64 ->
    step_index [K] (ascending rows) and cu_steps [B + 1], int64."""
    N, device = input_ids.shape[0], input_ids.device
    check_offsets(cu_seqlens, N, "cu_seqlens", "the number of rows N")
    ids = input_ids.contiguous()
    seps = sep_token_ids.to(torch.int64).contiguous()
    S = seps.shape[0]
    block_seps = min(triton.next_power_of_2(max(S, 1)), _FIND_BLOCK_SEPS)
    num_blocks = triton.cdiv(N, _FIND_BLOCK_ROWS)

    counts = empty(num_blocks, dtype=torch.int32, device=device)
    if num_blocks:
        _count_separators_kernel[(num_blocks,)](ids, seps, counts, N, S, _FIND_BLOCK_ROWS, block_seps)
    block_start = torch.zeros(num_blocks + 1, dtype=torch.int64, device=device)
    torch.cumsum(counts, 0, out=block_start[1:])
    K = int(block_start[-1])  # the output size depends on the data: one host sync
    step_index = empty(K, dtype=torch.int64, device=device)
    if K:
        _fill_steps_kernel[(num_blocks,)](
            ids, seps, block_start, step_index, N, S, _FIND_BLOCK_ROWS, block_seps
        )
    # step_index is ascending, so the steps before sequence b are those before row cu_seqlens[b].
    cu_steps = torch.searchsorted(step_index, cu_seqlens.to(torch.int64))
    return step_index, cu_steps


# ---------------------------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _log1p(x):
    """log(1 + x) accurate for tiny x (Triton has no portable log1p): log(u) * x / (u - 1) with u = 1 + x
    cancels the rounding of u (Goldberg's trick)."""
    u = 1.0 + x
    exact = u == 1.0
    return tl.where(exact, x, tl.log(u) * (x / tl.where(exact, 1.0, u - 1.0)))


@triton.jit
def _probability(first, second, C: tl.constexpr, POSITIVE_CLASS: tl.constexpr):
    """P(step good) and its log from the logits of a step (``second`` is ignored when C = 1).

    Both are sigmoid(z) of the positive margin z, computed from exp(-|z|) so nothing overflows; a NaN logit
    gives NaN for both.
    """
    if C == 1:
        z = first if POSITIVE_CLASS == 1 else -first
    else:
        z = second - first if POSITIVE_CLASS == 1 else first - second
    e = tl.exp(-tl.abs(z))
    nonneg = z >= 0
    prob = tl.where(nonneg, 1.0 / (1.0 + e), e / (1.0 + e))
    log_prob = tl.where(nonneg, 0.0, z) - _log1p(e)
    return prob, log_prob


@triton.jit
def _step_logits_kernel(
    hidden_ptr,
    weight_ptr,
    bias_ptr,
    step_index_ptr,
    logits_ptr,
    probs_ptr,
    K,
    H,
    stride_n,
    stride_h,
    C: tl.constexpr,
    POSITIVE_CLASS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    steps = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    step_mask = steps < K
    rows = _step_rows(step_index_ptr, steps, step_mask)
    acc0 = tl.zeros([BLOCK_K], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_K], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        cols = h0 + tl.arange(0, BLOCK_H)
        col_mask = cols < H
        x = _load_step_rows(hidden_ptr, rows, step_mask, cols, col_mask, stride_n, stride_h)
        w0 = tl.load(weight_ptr + cols, mask=col_mask, other=0.0)
        acc0 += tl.sum(x * w0[None, :], axis=1)
        if C == 2:
            w1 = tl.load(weight_ptr + H + cols, mask=col_mask, other=0.0)
            acc1 += tl.sum(x * w1[None, :], axis=1)
    if bias_ptr is not None:
        acc0 += tl.load(bias_ptr)
        if C == 2:
            acc1 += tl.load(bias_ptr + 1)
    tl.store(logits_ptr + steps * C, acc0, mask=step_mask)
    if C == 2:
        tl.store(logits_ptr + steps * C + 1, acc1, mask=step_mask)
    prob, _ = _probability(acc0, acc1, C, POSITIVE_CLASS)
    tl.store(probs_ptr + steps, prob, mask=step_mask)


@triton.jit
def _reduce_sequences_kernel(
    logits_ptr,
    probs_ptr,
    cu_steps_ptr,
    min_ptr,
    log_prod_ptr,
    prod_ptr,
    mean_ptr,
    last_ptr,
    first_error_ptr,
    num_steps_ptr,
    argmin_ptr,
    threshold,
    C: tl.constexpr,
    POSITIVE_CLASS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per sequence walks its steps in order, in blocks aligned to the sequence's first step, so
    # a sequence's results depend on nothing else in the batch.
    b = tl.program_id(0)
    start = tl.load(cu_steps_ptr + b)
    end = tl.load(cu_steps_ptr + b + 1)
    n = end - start
    sum_log = 0.0
    sum_prob = 0.0
    best_key = 2.0  # above any probability
    best = start
    first_error = n  # "none yet"
    for k0 in range(start, end, BLOCK):
        steps = k0 + tl.arange(0, BLOCK)
        mask = steps < end
        first, second = _load_columns(logits_ptr, steps, mask, C)
        prob, log_prob = _probability(first, second, C, POSITIVE_CLASS)
        sum_log += tl.sum(tl.where(mask, log_prob, 0.0), axis=0)
        sum_prob += tl.sum(tl.where(mask, prob, 0.0), axis=0)
        # NaN ranks below every probability, so the first NaN step wins the min.
        key = tl.where(mask, tl.where(prob != prob, -1.0, prob), 2.0)
        block_min = tl.min(key, axis=0)
        block_arg = tl.min(tl.where(key == block_min, steps, end), axis=0)
        best = tl.where(block_min < best_key, block_arg, best)  # strict: earlier blocks win ties
        best_key = tl.minimum(best_key, block_min)
        # A NaN step is never correct: it is an error whatever the threshold.
        errors = tl.where(mask & ((prob < threshold) | (prob != prob)), steps - start, n)
        first_error = tl.minimum(first_error, tl.min(errors, axis=0))

    has_steps = n > 0
    nan = float("nan")
    tl.store(argmin_ptr + b, tl.where(has_steps, best, -1))
    tl.store(min_ptr + b, tl.load(probs_ptr + best, mask=has_steps, other=nan))
    tl.store(last_ptr + b, tl.load(probs_ptr + end - 1, mask=has_steps, other=nan))
    log_prod = tl.where(has_steps, sum_log, nan)
    tl.store(log_prod_ptr + b, log_prod)
    tl.store(prod_ptr + b, tl.exp(log_prod))
    tl.store(mean_ptr + b, tl.where(has_steps, sum_prob / tl.maximum(n, 1).to(tl.float32), nan))
    tl.store(first_error_ptr + b, tl.where(first_error == n, -1, first_error))
    tl.store(num_steps_ptr + b, n)


def forward(hidden, weight, bias, step_index, cu_steps, positive_class: int, threshold: float):
    """``fastprm::score_steps_forward``: scores the step rows and reduces them per sequence.

    Args:
        hidden: [N, H] float32/bfloat16/float16, any strides.
        weight: [C, H] head, C in {1, 2}; bias: [C] or None (any float dtype, used as float32).
        step_index: [K] int64 rows of the steps, ascending within each sequence, or None (rows mode: hidden
            is [K, H], row k is step k).
        cu_steps: [B + 1] int64 offsets of each sequence's steps.
        positive_class: 0 or 1; threshold: ``first_error`` is the first step whose probability is below it or
            NaN.

    Returns:
        step_logits [K, C], step_probs [K], min, log_prod, prod, mean, last [B] float32, and first_error,
        num_steps, argmin [B] int64 (argmin: global step index of the min, -1 for a sequence without steps).
    """
    check_steps(step_index, cu_steps, hidden.shape[0])
    device = hidden.device
    K, B = step_count(step_index, hidden.shape[0]), cu_steps.shape[0] - 1
    C, H = weight.shape
    cu_steps = cu_steps.contiguous()
    if step_index is not None:
        step_index = step_index.contiguous()
    logits = empty(K, C, dtype=torch.float32, device=device)
    probs = empty(K, dtype=torch.float32, device=device)
    min_, log_prod, prod, mean, last = (empty(B, dtype=torch.float32, device=device) for _ in range(5))
    first_error, num_steps, argmin = (empty(B, dtype=torch.int64, device=device) for _ in range(3))

    if K:
        _step_logits_kernel[(triton.cdiv(K, _FORWARD_BLOCK_STEPS),)](
            hidden,
            _float32(weight),
            None if bias is None else _float32(bias),
            step_index,
            logits,
            probs,
            K,
            H,
            hidden.stride(0),
            hidden.stride(1),
            C=C,
            POSITIVE_CLASS=positive_class,
            BLOCK_K=_FORWARD_BLOCK_STEPS,
            BLOCK_H=_block(H, _FORWARD_BLOCK_H),
        )
    if B:
        _reduce_sequences_kernel[(B,)](
            logits,
            probs,
            cu_steps,
            min_,
            log_prod,
            prod,
            mean,
            last,
            first_error,
            num_steps,
            argmin,
            threshold,
            C=C,
            POSITIVE_CLASS=positive_class,
            BLOCK=_REDUCE_BLOCK_STEPS,
        )
    return logits, probs, min_, log_prod, prod, mean, last, first_error, num_steps, argmin


# ---------------------------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _grad_hidden_kernel(
    grad_logits_ptr,
    weight_ptr,
    step_index_ptr,
    order_ptr,
    group_start_ptr,
    grad_hidden_ptr,
    H,
    C: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    # One program per distinct step row: the steps on that row (order[group_start[g] : group_start[g + 1]])
    # are summed in step order, then projected once, so a shared row needs no atomics. In rows mode (None
    # step_index, order and group_start) program g is step g alone, on row g.
    g = tl.program_id(0).to(tl.int64)  # int64: row offsets may pass 2**31
    start = g
    end = g + 1
    row = g
    if step_index_ptr is not None:
        start = tl.load(group_start_ptr + g)
        end = tl.load(group_start_ptr + g + 1)
        row = tl.load(step_index_ptr + tl.load(order_ptr + start))
    g0 = 0.0
    g1 = 0.0
    for i in range(start, end):
        k = i
        if step_index_ptr is not None:
            k = tl.load(order_ptr + i)
        g0 += tl.load(grad_logits_ptr + k * C)
        if C == 2:
            g1 += tl.load(grad_logits_ptr + k * C + 1)
    out_ptr = grad_hidden_ptr + row * H  # int64 row offset
    for h0 in range(0, H, BLOCK_H):
        cols = h0 + tl.arange(0, BLOCK_H)
        col_mask = cols < H
        value = g0 * tl.load(weight_ptr + cols, mask=col_mask, other=0.0)
        if C == 2:
            value += g1 * tl.load(weight_ptr + H + cols, mask=col_mask, other=0.0)
        tl.store(out_ptr + cols, value.to(grad_hidden_ptr.dtype.element_ty), mask=col_mask)


@triton.jit
def _grad_weight_kernel(
    grad_logits_ptr,
    hidden_ptr,
    step_index_ptr,
    grad_weight_ptr,
    K,
    H,
    stride_n,
    stride_h,
    C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    # Each program owns BLOCK_H columns and walks all steps in order: deterministic without atomics.
    cols = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    acc0 = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_H], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        steps = k0 + tl.arange(0, BLOCK_K)
        step_mask = steps < K
        rows = _step_rows(step_index_ptr, steps, step_mask)
        x = _load_step_rows(hidden_ptr, rows, step_mask, cols, col_mask, stride_n, stride_h)
        g0, g1 = _load_columns(grad_logits_ptr, steps, step_mask, C)
        acc0 += tl.sum(x * g0[:, None], axis=0)
        if C == 2:
            acc1 += tl.sum(x * g1[:, None], axis=0)
    tl.store(grad_weight_ptr + cols, acc0, mask=col_mask)
    if C == 2:
        tl.store(grad_weight_ptr + H + cols, acc1, mask=col_mask)


def backward(
    grad_step_logits: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    step_index: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``fastprm::score_steps_backward``: projects d loss / d step logits back to hidden, weight and bias.

    Args:
        grad_step_logits: [K, C] float32.
        hidden: [N, H] float32/bfloat16/float16, any strides.
        weight: [C, H]; step_index: [K] int64 (a row may appear several times, e.g. across sequences), or None
            (rows mode: N = K, row k is step k).

    Returns:
        grad_hidden [N, H] in hidden's dtype, contiguous, zero outside the step rows (a row hit by several
        steps gets the sum of their gradients); grad_weight [C, H] and grad_bias [C] float32.
    """
    device = hidden.device
    K = step_count(step_index, hidden.shape[0])
    C, H = weight.shape
    grad = _float32(grad_step_logits)
    grad_weight = empty(C, H, dtype=torch.float32, device=device)
    if step_index is None:
        # Rows mode: every row is a step row, written once by its own program; nothing to zero or group.
        grad_hidden = empty(*hidden.shape, dtype=hidden.dtype, device=device)
        groups, order, group_start = K, None, None
    else:
        step_index = step_index.contiguous()
        grad_hidden = torch.zeros(hidden.shape, dtype=hidden.dtype, device=device)
        # Group the steps by row; the stable sort keeps each group in step order.
        sorted_rows, order = torch.sort(step_index, stable=True)
        counts = torch.unique_consecutive(sorted_rows, return_counts=True)[1]
        group_start = torch.zeros(counts.shape[0] + 1, dtype=torch.int64, device=device)
        torch.cumsum(counts, 0, out=group_start[1:])
        groups = counts.shape[0]

    if K:
        _grad_hidden_kernel[(groups,)](
            grad,
            _float32(weight),
            step_index,
            order,
            group_start,
            grad_hidden,
            H,
            C=C,
            BLOCK_H=_block(H, _GRAD_HIDDEN_BLOCK_H),
        )
    if H:
        _grad_weight_kernel[(triton.cdiv(H, _GRAD_WEIGHT_BLOCK_H),)](
            grad,
            hidden,
            step_index,
            grad_weight,
            K,
            H,
            hidden.stride(0),
            hidden.stride(1),
            C=C,
            BLOCK_K=_GRAD_WEIGHT_BLOCK_STEPS,
            BLOCK_H=_GRAD_WEIGHT_BLOCK_H,
        )
    return grad_hidden, grad_weight, grad.sum(0)
