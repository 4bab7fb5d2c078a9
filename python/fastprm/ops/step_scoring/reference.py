"""Pure-PyTorch reference of the step-scoring op: the specification, the test oracle and the fallback.

Written for clarity with plain differentiable tensor ops; every fast path must match it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...kernels.contract import accumulator_dtype, check_offsets, check_steps
from .result import StepScores


def find_steps_reference(
    input_ids: torch.Tensor, cu_seqlens: torch.Tensor, sep_token_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose id is a separator, grouped by sequence.

    Args:
        input_ids: [N] int32/int64 token ids of the packed batch.
        cu_seqlens: [B + 1] int32/int64 sequence offsets (0 .. N, non-decreasing).
        sep_token_ids: [S] int64 separator ids.

    Returns:
        step_index [K] int64 and cu_steps [B + 1] int64.
    """
    check_offsets(cu_seqlens, input_ids.shape[0], "cu_seqlens", "the number of rows N")
    is_sep = torch.isin(input_ids.long(), sep_token_ids.long())
    step_index = torch.nonzero(is_sep).flatten()
    # Steps before offset cu_seqlens[b] belong to earlier sequences.
    cu_steps = torch.searchsorted(step_index, cu_seqlens.long())
    return step_index, cu_steps


def step_probabilities(step_logits: torch.Tensor, positive_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """P(step good) and its log from [K, C] logits: the sigmoid of the positive class's margin z.

    C = 1: z is the logit (``positive_class=1``) or its negation (``0``). C = 2: z = logit[positive_class] -
    logit[other class], whose sigmoid is the softmax probability of the positive class. Written with the margin
    so that a logit that overflowed to +-inf still gives P = 1 or 0 (log P = 0 or -inf), where softmax and
    log_softmax would subtract inf from inf and give NaN; the kernels compute the same margin.
    """
    if step_logits.shape[1] == 1:
        z = step_logits[:, 0] if positive_class == 1 else -step_logits[:, 0]
    else:
        z = step_logits[:, positive_class] - step_logits[:, 1 - positive_class]
    return torch.sigmoid(z), F.logsigmoid(z)


def reduce_steps(
    probs: torch.Tensor, log_probs: torch.Tensor, cu_steps: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, ...]:
    """Per-sequence reductions of step probabilities.

    Args:
        probs: [K] P(step good); log_probs: [K] its log (exact where probs underflows).
        cu_steps: [B + 1] int64 offsets of each sequence's steps.
        threshold: ``first_error`` is the first step whose probability is not at least ``threshold``.

    Returns:
        min, log_prod, prod, mean, last [B] in probs' dtype (NaN for a sequence without steps), then
        first_error, num_steps, argmin [B] int64: the forward op's outputs after step_logits and step_probs.
        min is the first NaN step if any, else the first of tied minima, and argmin is its global step index
        (-1 without steps); the gradient of min goes to that step only. A NaN step is never correct: it is an
        error for ``first_error`` (-1 when no step is an error).
    """
    K, B = probs.shape[0], cu_steps.shape[0] - 1
    device, dtype = probs.device, probs.dtype
    num_steps = cu_steps[1:] - cu_steps[:-1]
    seq = torch.repeat_interleave(torch.arange(B, device=device), num_steps, output_size=K)
    empty = num_steps == 0
    nan = torch.full((B,), float("nan"), dtype=dtype, device=device)

    sum_log = torch.zeros(B, dtype=dtype, device=device).index_add(0, seq, log_probs)
    sum_prob = torch.zeros(B, dtype=dtype, device=device).index_add(0, seq, probs)
    log_prod = torch.where(empty, nan, sum_log)
    mean = torch.where(empty, nan, sum_prob / num_steps.clamp(min=1))

    key = torch.where(torch.isnan(probs), torch.full_like(probs, -1.0), probs).detach()
    seq_min = torch.full((B,), 2.0, dtype=dtype, device=device).scatter_reduce(0, seq, key, "amin")
    step_ids = torch.arange(K, device=device)
    candidates = torch.where(key == seq_min[seq], step_ids, K)
    argmin = torch.full((B,), K, device=device).scatter_reduce(0, seq, candidates, "amin")
    argmin = torch.where(empty, -1, argmin)

    # "probs >= threshold" is False for NaN, so a NaN step counts as an error.
    errors = torch.where(probs >= threshold, K, step_ids - cu_steps[:-1][seq])
    first_error = torch.full((B,), K, device=device).scatter_reduce(0, seq, errors, "amin")
    first_error = torch.where(first_error == K, -1, first_error)

    # Index K of probs_or_nan stands for "no step": empty sequences read NaN there.
    probs_or_nan = torch.cat([probs, nan[:1]])
    min_ = probs_or_nan[torch.where(empty, K, argmin)]
    last = probs_or_nan[torch.where(empty, K, cu_steps[1:] - 1)]
    return min_, log_prod, torch.exp(log_prod), mean, last, first_error, num_steps, argmin


def step_rows(hidden: torch.Tensor, step_index: torch.Tensor | None) -> torch.Tensor:
    """The [K, H] step rows: ``hidden[step_index]``, or hidden itself in rows mode (step_index None)."""
    return hidden if step_index is None else hidden[step_index]


def reference_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    step_index: torch.Tensor | None,
    cu_steps: torch.Tensor,
    positive_class: int,
    threshold: float,
) -> tuple[torch.Tensor, ...]:
    """The forward op's outputs, in the order of ``fastprm::score_steps_forward``: step_logits [K, C],
    step_probs [K], then :func:`reduce_steps`'s. Floats are float32 (float64 for float64 hidden); no two
    outputs share memory (a registered op's outputs may not alias)."""
    compute = accumulator_dtype(hidden.dtype)
    logits = step_rows(hidden, step_index).to(compute) @ weight.to(compute).T
    if bias is not None:
        logits = logits + bias.to(compute)
    probs, log_probs = step_probabilities(logits, positive_class)
    return (logits, probs, *reduce_steps(probs, log_probs, cu_steps, threshold))


def reference_backward(
    grad_step_logits: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    step_index: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projects d loss / d step logits [K, C] back to hidden [N, H], weight [C, H] and bias [C].

    Same contract as ``fastprm::score_steps_backward``: grad_hidden in hidden's dtype, the rest float32
    (float64 for float64 hidden).
    """
    rows = step_rows(hidden, step_index).to(grad_step_logits.dtype)
    grad_rows = (grad_step_logits @ weight.to(grad_step_logits.dtype)).to(hidden.dtype)
    if step_index is None:  # rows mode: row k of hidden is step k, so every row gets its step's gradient
        grad_hidden = grad_rows.contiguous()
    else:
        grad_hidden = torch.zeros_like(hidden, memory_format=torch.contiguous_format)
        grad_hidden.index_add_(0, step_index, grad_rows)
    return grad_hidden, grad_step_logits.T @ rows, grad_step_logits.sum(0)


def score_steps_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    step_index: torch.Tensor | None,
    cu_steps: torch.Tensor,
    positive_class: int = 1,
    threshold: float = 0.5,
) -> StepScores:
    """Score the given step rows of a packed batch (see :func:`fastprm.ops.score_steps`).

    Args:
        hidden: [N, H] float rows; computed in float32 (float64 stays float64).
        weight: [C, H] head, C in {1, 2}. bias: [C] or None.
        step_index: [K] int64 rows of the steps, ascending within each sequence; or None (rows mode):
            hidden is [K, H], exactly the step rows in order.
        cu_steps: [B + 1] int64 offsets of each sequence's steps (ending at N in rows mode).

    Returns:
        StepScores; gradients flow to hidden, weight and bias through plain autograd.
    """
    check_steps(step_index, cu_steps, hidden.shape[0])
    outputs = reference_forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold)
    return StepScores.from_op_outputs(outputs, step_index, cu_steps)
