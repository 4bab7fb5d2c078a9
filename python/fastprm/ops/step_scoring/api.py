"""The documented public functions of the step-scoring op and their argument checks.

Every check runs on every call, so each is a few attribute reads and its message is built only on failure.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import schema
from .reference import score_steps_reference
from .result import StepScores

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_INDEX_DTYPES = (torch.int32, torch.int64)
_MODE_ERROR = (
    "pass either input_ids, cu_seqlens and sep_token_ids (find mode), step_index and cu_steps (given mode) "
    "or cu_steps alone (rows mode)"
)
_SEPARATOR_ERROR = "sep_token_ids must be an int, a sequence of ints or a 1-D integer tensor"

__all__ = ["StepScores", "find_steps", "score_steps", "score_steps_reference"]


def _check_tensor(t, name: str, ndim: int, dtypes: tuple[torch.dtype, ...], device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but hidden is on {device}")


def _check_offsets_tensor(t, name: str, device: torch.device) -> None:
    _check_tensor(t, name, 1, _INDEX_DTYPES, device)
    if t.shape[0] == 0:
        raise ValueError(f"{name} must have at least one element (it is [B + 1])")


def _as_int64(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.int64 else t.to(torch.int64)


# The same few separators come on every call: their tensor is built once per (ids, device).
_separator_cache: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}


def _separator_tensor(sep_token_ids, device: torch.device) -> torch.Tensor:
    """[S] int64 contiguous separator ids on ``device``."""
    if isinstance(sep_token_ids, torch.Tensor):
        if sep_token_ids.dim() > 1 or sep_token_ids.dtype not in _INDEX_DTYPES:
            raise ValueError(_SEPARATOR_ERROR)
        seps = sep_token_ids.reshape(-1).to(device=device, dtype=torch.int64).contiguous()
    else:
        ids = (sep_token_ids,) if isinstance(sep_token_ids, int) else sep_token_ids
        if not (
            isinstance(ids, Sequence) and not isinstance(ids, str) and all(isinstance(s, int) for s in ids)
        ):
            raise ValueError(_SEPARATOR_ERROR)
        key = (tuple(ids), device)
        seps = _separator_cache.get(key)
        if seps is None:
            seps = _separator_cache[key] = torch.tensor(key[0], dtype=torch.int64, device=device)
    if seps.numel() == 0:
        raise ValueError("sep_token_ids must name at least one separator id")
    return seps


def find_steps(
    input_ids: torch.Tensor, cu_seqlens: torch.Tensor, sep_token_ids: int | Sequence[int] | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a packed batch whose token is a separator, grouped by sequence.

    Args:
        input_ids: [N] int32/int64 token ids.
        cu_seqlens: [B + 1] int32/int64 offsets, 0 .. N, non-decreasing (empty sequences allowed).
        sep_token_ids: one id or a few ids; every row holding one of them ends a step.

    Returns:
        step_index [K] int64 (flat rows, ascending) and cu_steps [B + 1] int64.

    Raises:
        ValueError: naming the argument, for any malformed input.
    """
    device = input_ids.device if isinstance(input_ids, torch.Tensor) else torch.device("cpu")
    _check_tensor(input_ids, "input_ids", 1, _INDEX_DTYPES, device)
    _check_offsets_tensor(cu_seqlens, "cu_seqlens", device)
    seps = _separator_tensor(sep_token_ids, device)
    return schema.find_steps(input_ids.contiguous(), cu_seqlens.contiguous(), seps)


def score_steps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    input_ids: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    sep_token_ids: int | Sequence[int] | torch.Tensor | None = None,
    step_index: torch.Tensor | None = None,
    cu_steps: torch.Tensor | None = None,
    positive_class: int = 1,
    threshold: float = 0.5,
) -> StepScores:
    """Score every step of a packed variable-length batch in one fused pass.

    The step rows are given in one of three ways (modes), by the keyword arguments passed:

    - find mode, ``input_ids`` + ``cu_seqlens`` + ``sep_token_ids``: hidden is [N, H], the packed batch, and
      every row whose id is a separator ends a step;
    - given mode, ``step_index`` + ``cu_steps``: hidden is [N, H] and the steps are its rows ``step_index``;
    - rows mode, ``cu_steps`` alone: hidden is [K, H], exactly the step rows in order (sequence b's steps are
      rows ``cu_steps[b]:cu_steps[b + 1]``), e.g. what :meth:`fastprm.models.PRM.step_hidden_states` returns.

    Only the step rows are read: they are projected through the head, turned into P(step good), and reduced per
    sequence.

    Args:
        hidden: [N, H] (find and given mode) or [K, H] (rows mode) float32 / bfloat16 / float16 (float64 for
            gradcheck) hidden states; any strides.
        weight: [C, H] head, any float dtype (used in float32, float64 for float64 hidden). C = 1:
            P(good) = sigmoid(logit); C = 2: softmax over the two logits.
        bias: [C] or None.
        input_ids: [N] int32/int64 (find mode).
        cu_seqlens: [B + 1] int32/int64 sequence offsets (find mode).
        sep_token_ids: separator id(s) (find mode).
        step_index: [K] int32/int64 flat rows of the steps, strictly ascending within each sequence (given
            mode).
        cu_steps: [B + 1] int32/int64 offsets of each sequence's steps, 0 .. K, non-decreasing: into
            step_index (given mode) or into the rows of hidden, so ending at hidden.shape[0] (rows mode).
        positive_class: the class whose probability is P(good): 0 or 1 (C = 1: 1 means sigmoid(logit), 0 means
            sigmoid(-logit)).
        threshold: ``first_error`` is the first step whose probability is below it. A step whose probability
            is NaN is never correct: it counts as an error whatever the threshold.

    Returns:
        :class:`StepScores` (float32 outputs, float64 for float64 hidden; step_index and cu_steps int64,
        step_index None in rows mode).
        Gradients flow from step_logits, step_probs, min (to the first minimal step), prod/log_prod, mean and
        last to hidden, weight and bias.

    Raises:
        ValueError: naming the argument, for any malformed input.
    """
    if not isinstance(hidden, torch.Tensor):
        raise ValueError(f"hidden must be a torch.Tensor, got {type(hidden).__name__}")
    device = hidden.device
    _check_tensor(hidden, "hidden", 2, _FLOAT_DTYPES, device)
    _check_tensor(weight, "weight", 2, _FLOAT_DTYPES, device)
    C, H = weight.shape
    if C != 1 and C != 2:
        raise ValueError(f"weight must have C = 1 or 2 rows (sigmoid or 2-class softmax head), got C = {C}")
    if hidden.shape[1] != H:
        raise ValueError(f"weight has H = {H} columns but hidden has {hidden.shape[1]}")
    if bias is not None:
        _check_tensor(bias, "bias", 1, _FLOAT_DTYPES, device)
        if bias.shape[0] != C:
            raise ValueError(f"bias must be [C] = [{C}], got shape {tuple(bias.shape)}")
    if positive_class != 0 and positive_class != 1:
        raise ValueError(f"positive_class must be 0 or 1, got {positive_class!r}")
    if not isinstance(threshold, (int, float)):
        raise ValueError(f"threshold must be a number, got {type(threshold).__name__}")

    finding = input_ids is not None or cu_seqlens is not None or sep_token_ids is not None
    giving = step_index is not None or cu_steps is not None
    if finding:
        if giving or input_ids is None or cu_seqlens is None or sep_token_ids is None:
            raise ValueError(_MODE_ERROR)
        if (
            not isinstance(input_ids, torch.Tensor)
            or input_ids.dim() != 1
            or input_ids.shape[0] != hidden.shape[0]
        ):
            raise ValueError(f"input_ids must be [N] = [{hidden.shape[0]}] (one id per hidden row)")
        step_index, cu_steps = find_steps(input_ids, cu_seqlens, sep_token_ids)
    else:
        if cu_steps is None:
            raise ValueError(_MODE_ERROR)
        _check_offsets_tensor(cu_steps, "cu_steps", device)
        cu_steps = _as_int64(cu_steps).contiguous()
        # Without step_index (rows mode) hidden holds exactly the step rows; the backend checks that cu_steps
        # ends at its row count, where it reads cu_steps anyway.
        if step_index is not None:
            _check_tensor(step_index, "step_index", 1, _INDEX_DTYPES, device)
            step_index = _as_int64(step_index).contiguous()

    outputs = schema.score_steps_forward(
        hidden, weight, bias, step_index, cu_steps, int(positive_class), float(threshold)
    )
    return StepScores.from_op_outputs(outputs, step_index, cu_steps)
