"""Pure-PyTorch reference of the step-scoring op: the specification, the test oracle and the fallback.

Written for clarity with plain differentiable tensor ops; every fast path must match it.
"""

from __future__ import annotations

import torch

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


def check_offsets(offsets: torch.Tensor, total: int, name: str, total_name: str) -> None:
    """Raises ValueError unless ``offsets`` starts at 0, never decreases and ends at ``total``."""
    if offsets.numel() == 0:
        raise ValueError(f"{name} must have at least one element (it is [B + 1])")
    if int(offsets[0]) != 0:
        raise ValueError(f"{name} must start at 0, got {int(offsets[0])}")
    drops = torch.nonzero(offsets[1:] < offsets[:-1]).flatten()
    if drops.numel():
        b = int(drops[0]) + 1
        raise ValueError(
            f"{name} must be non-decreasing, but {name}[{b}] = {int(offsets[b])} < {name}[{b - 1}] = "
            f"{int(offsets[b - 1])}"
        )
    if int(offsets[-1]) != total:
        raise ValueError(f"{name} must end at {total_name} = {total}, got {int(offsets[-1])}")


def check_steps(step_index: torch.Tensor, cu_steps: torch.Tensor, n_rows: int) -> None:
    """Raises ValueError unless step_index/cu_steps describe ascending in-range steps per sequence."""
    check_offsets(cu_steps, step_index.shape[0], "cu_steps", "len(step_index)")
    bad = torch.nonzero((step_index < 0) | (step_index >= n_rows)).flatten()
    if bad.numel():
        k = int(bad[0])
        raise ValueError(
            f"step_index[{k}] = {int(step_index[k])} is out of range for hidden with {n_rows} rows"
        )
    # A step may not precede the one before it, except at the first step of a sequence.
    K = step_index.shape[0]
    starts = cu_steps[:-1][cu_steps[:-1] < K]
    first_of_sequence = torch.zeros(K, dtype=torch.bool, device=step_index.device)
    first_of_sequence[starts] = True
    not_ascending = torch.ones(K, dtype=torch.bool, device=step_index.device)
    not_ascending[1:] = step_index[1:] <= step_index[:-1]
    bad = torch.nonzero(not_ascending & ~first_of_sequence).flatten()
    if bad.numel():
        k = int(bad[0])
        seq = int(torch.searchsorted(cu_steps, torch.tensor(k, device=cu_steps.device), right=True)) - 1
        raise ValueError(
            f"step_index must be strictly ascending within each sequence, but sequence {seq} has "
            f"step_index[{k}] = {int(step_index[k])} after {int(step_index[k - 1])}"
        )


def step_probabilities(step_logits: torch.Tensor, positive_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """P(step good) and its log from [K, C] logits: sigmoid for C = 1, softmax for C = 2.

    For C = 1, ``positive_class=1`` reads the logit as the good class and ``0`` as the bad class.
    """
    if step_logits.shape[1] == 1:
        z = step_logits[:, 0] if positive_class == 1 else -step_logits[:, 0]
        return torch.sigmoid(z), torch.nn.functional.logsigmoid(z)
    return (
        torch.softmax(step_logits, dim=-1)[:, positive_class],
        torch.log_softmax(step_logits, dim=-1)[:, positive_class],
    )


def reference_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    step_index: torch.Tensor,
    cu_steps: torch.Tensor,
    positive_class: int,
    threshold: float,
) -> tuple[torch.Tensor, ...]:
    """The forward op's outputs, in the order of ``fastprm::score_steps_forward``.

    Returns step_logits [K, C], step_probs [K], min, log_prod, mean, last [B] (float32, or float64 for float64
    hidden) and first_error, argmin [B] int64 (argmin is the global step index of ``min``, -1 when no step).
    """
    compute = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    device = hidden.device
    K, B = step_index.shape[0], cu_steps.shape[0] - 1
    num_steps = cu_steps[1:] - cu_steps[:-1]
    seq = torch.repeat_interleave(torch.arange(B, device=device), num_steps, output_size=K)
    empty = num_steps == 0
    nan = torch.full((B,), float("nan"), dtype=compute, device=device)

    logits = hidden[step_index].to(compute) @ weight.to(compute).T
    if bias is not None:
        logits = logits + bias.to(compute)
    probs, log_probs = step_probabilities(logits, positive_class)

    log_prod = torch.zeros(B, dtype=compute, device=device).index_add(0, seq, log_probs)
    mean = torch.zeros(B, dtype=compute, device=device).index_add(0, seq, probs) / num_steps.clamp(min=1)

    # min: the first NaN step if any, else the first of tied minima; the gradient goes to that step only.
    key = torch.where(torch.isnan(probs), torch.full_like(probs, -1.0), probs).detach()
    seq_min = torch.full((B,), 2.0, dtype=compute, device=device).scatter_reduce(0, seq, key, "amin")
    step_ids = torch.arange(K, device=device)
    candidates = torch.where(key == seq_min[seq], step_ids, K)
    argmin = torch.full((B,), K, device=device).scatter_reduce(0, seq, candidates, "amin")
    argmin = torch.where(empty, -1, argmin)

    local = step_ids - cu_steps[:-1][seq]
    errors = torch.where(probs < threshold, local, K)
    first_error = torch.full((B,), K, device=device).scatter_reduce(0, seq, errors, "amin")
    first_error = torch.where(first_error == K, -1, first_error)

    if K:
        min_ = torch.where(empty, nan, probs[argmin.clamp(min=0)])
        last = torch.where(empty, nan, probs[(cu_steps[1:] - 1).clamp(min=0)])
    else:
        min_, last = nan, nan
    return (
        logits,
        probs,
        min_,
        torch.where(empty, nan, log_prod),
        torch.where(empty, nan, mean),
        last,
        first_error,
        argmin,
    )


def reference_backward(
    grad_step_logits: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, step_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projects d loss / d step logits [K, C] back to hidden [N, H], weight [C, H] and bias [C].

    Same contract as ``fastprm::score_steps_backward``: grad_hidden in hidden's dtype, the rest float32
    (float64 for float64 hidden).
    """
    rows = hidden[step_index].to(grad_step_logits.dtype)
    grad_hidden = torch.zeros_like(hidden, memory_format=torch.contiguous_format)
    grad_hidden.index_add_(
        0, step_index, (grad_step_logits @ weight.to(grad_step_logits.dtype)).to(hidden.dtype)
    )
    return grad_hidden, grad_step_logits.T @ rows, grad_step_logits.sum(0)


def score_steps_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    step_index: torch.Tensor,
    cu_steps: torch.Tensor,
    positive_class: int = 1,
    threshold: float = 0.5,
) -> StepScores:
    """Score the given step rows of a packed batch (see :func:`fastprm.ops.score_steps`).

    Args:
        hidden: [N, H] float rows; computed in float32 (float64 stays float64).
        weight: [C, H] head, C in {1, 2}. bias: [C] or None.
        step_index: [K] int64 rows of the steps, ascending within each sequence.
        cu_steps: [B + 1] int64 offsets of each sequence's steps.

    Returns:
        StepScores; gradients flow to hidden, weight and bias through plain autograd.
    """
    check_steps(step_index, cu_steps, hidden.shape[0])
    outputs = reference_forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold)
    return StepScores.from_op_outputs(outputs, step_index, cu_steps)
