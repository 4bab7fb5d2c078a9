"""Per-step sums of per-token values over a packed variable-length batch (e.g. an implicit PRM's token
rewards summed into step rewards).

Steps are given as :func:`fastprm.ops.score_steps`'s given mode gives them (``step_index`` / ``cu_steps``,
what :func:`fastprm.ops.find_steps` returns): step k ends at row ``step_index[k]`` and starts after the
previous step of its sequence, or at the sequence's first row. Plain differentiable torch ops: one
``index_add`` over the rows, so gradients flow to ``values`` and torch.compile traces it.
"""

from __future__ import annotations

import torch

from ..kernels.contract import accumulator_dtype, check_offsets, check_steps

__all__ = ["step_sums"]


def step_sums(
    values: torch.Tensor, cu_seqlens: torch.Tensor, step_index: torch.Tensor, cu_steps: torch.Tensor
) -> torch.Tensor:
    """Sum of ``values`` over each step's rows.

    Args:
        values: [N] float per-row values of the packed batch.
        cu_seqlens: [B + 1] int32/int64 sequence offsets, 0 .. N, non-decreasing.
        step_index: [K] int32/int64 last row of each step, strictly ascending within each sequence and inside
            its sequence's rows.
        cu_steps: [B + 1] int32/int64 offsets of each sequence's steps in step_index, 0 .. K.

    Returns:
        [K] sums, float32 (float64 for float64 values): step k of sequence b sums rows
        ``step_index[k - 1] + 1 .. step_index[k]`` (from ``cu_seqlens[b]`` for the sequence's first step). Rows
        after a sequence's last step belong to no step. A NaN row makes its own step NaN only.

    Raises:
        ValueError: naming the argument, for malformed offsets or steps.
    """
    for t, name, floating in ((values, "values", True), (cu_seqlens, "cu_seqlens", False),
                              (step_index, "step_index", False), (cu_steps, "cu_steps", False)):  # fmt: skip
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.is_floating_point() != floating:
            kind = "float" if floating else "integer"
            raise ValueError(f"{name} must be a 1-D {kind} torch.Tensor")
    N, K, device = values.shape[0], step_index.shape[0], values.device
    cu_seqlens, step_index, cu_steps = (
        t.to(device=device, dtype=torch.int64) for t in (cu_seqlens, step_index, cu_steps)
    )
    check_offsets(cu_seqlens, N, "cu_seqlens", "len(values)")
    check_steps(step_index, cu_steps, N)
    if cu_steps.shape[0] != cu_seqlens.shape[0]:
        raise ValueError(f"cu_steps has {cu_steps.shape[0]} offsets but cu_seqlens has {cu_seqlens.shape[0]}")
    B = cu_seqlens.shape[0] - 1
    seq_of_step = torch.repeat_interleave(torch.arange(B, device=device), cu_steps.diff(), output_size=K)
    outside = torch.nonzero(
        (step_index < cu_seqlens[seq_of_step]) | (step_index >= cu_seqlens[seq_of_step + 1])
    ).flatten()
    if outside.numel():
        k = int(outside[0])
        raise ValueError(
            f"step_index[{k}] = {int(step_index[k])} is outside its sequence {int(seq_of_step[k])}"
        )
    # Steps are ascending over the whole batch, so a row's step is the first one ending at or after it, if that
    # step is in the row's sequence.
    rows = torch.arange(N, device=device)
    step_of_row = torch.searchsorted(step_index, rows)
    seq_of_row = torch.repeat_interleave(torch.arange(B, device=device), cu_seqlens.diff(), output_size=N)
    inside = step_of_row < cu_steps[seq_of_row + 1]
    acc = accumulator_dtype(values.dtype)
    return values.new_zeros(K, dtype=acc).index_add(0, step_of_row[inside], values[inside].to(acc))
