"""What every backend of the step-scoring op shares: the step-layout checks, the output dtype and the output
allocator.

A leaf that imports only torch. It lives next to the Triton launchers, which may import nothing else from
fastprm; the reference and the CPU backend in ``fastprm.ops.step_scoring`` import it from here.
"""

from __future__ import annotations

import os

import torch

NAN_FILL_ENV = "FASTPRM_NAN_FILL_OUTPUTS"
# Tests set FASTPRM_NAN_FILL_OUTPUTS=1 so that an output element a kernel forgets to write shows up as NaN.
fill_outputs_with_nan = os.environ.get(NAN_FILL_ENV) == "1"


def accumulator_dtype(hidden_dtype: torch.dtype) -> torch.dtype:
    """Outputs and accumulation are float32, except that float64 inputs stay float64."""
    return torch.float64 if hidden_dtype == torch.float64 else torch.float32


def empty(*shape: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``torch.empty`` for kernel outputs; NaN-filled (INT_MIN for integers) under FASTPRM_NAN_FILL_OUTPUTS=1."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    if fill_outputs_with_nan:
        out.fill_(float("nan") if out.is_floating_point() else torch.iinfo(dtype).min)
    return out


def check_offsets(offsets: torch.Tensor, total: int, name: str, total_name: str) -> None:
    """Raises ValueError unless ``offsets`` ([B + 1] integers) starts at 0, never decreases and ends at
    ``total``."""
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


def step_count(step_index: torch.Tensor | None, n_rows: int) -> int:
    """K, the number of steps: len(step_index), or ``n_rows`` in rows mode (no step_index: row k is step k)."""
    return n_rows if step_index is None else step_index.shape[0]


def check_steps(step_index: torch.Tensor | None, cu_steps: torch.Tensor, n_rows: int) -> None:
    """Raises ValueError unless step_index [K] / cu_steps [B + 1] describe rows in [0, n_rows) that are strictly
    ascending within each sequence; in rows mode (step_index None) unless cu_steps ends at ``n_rows``."""
    if step_index is None:
        check_offsets(cu_steps, n_rows, "cu_steps", "hidden.shape[0]")
        return
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
