"""The fused step-scoring op: find step rows, project them through the head, reduce per sequence.

Layout: ``naive.py`` is the pure-PyTorch reference (spec, oracle, fallback); ``schema.py`` declares the
torch.library ops with their fake and autograd implementations; ``cpu.py`` (C++) and ``cuda.py`` (Triton)
register the device kernels; this module is the documented public function.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import cpu, cuda, schema  # noqa: F401  (cuda registers its kernels on import)
from .naive import score_steps_reference
from .result import StepScores

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_INDEX_DTYPES = (torch.int32, torch.int64)

__all__ = ["StepScores", "find_steps", "score_steps", "score_steps_reference"]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_tensor(t, name: str, ndim: int, dtypes: tuple[torch.dtype, ...], device: torch.device) -> None:
    # Messages are built only on failure: this runs on every call.
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but hidden is on {device}")


def _as_int64(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.int64 else t.to(torch.int64)


_separator_cache: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}


def _separator_tensor(sep_token_ids, device: torch.device) -> torch.Tensor:
    if isinstance(sep_token_ids, torch.Tensor):
        _require(
            sep_token_ids.dim() <= 1 and sep_token_ids.dtype in _INDEX_DTYPES,
            "sep_token_ids must be an int, a sequence of ints or a 1-D integer tensor",
        )
        seps = sep_token_ids.reshape(-1).to(device=device, dtype=torch.int64)
    else:
        ids = (sep_token_ids,) if isinstance(sep_token_ids, int) else sep_token_ids
        _require(
            isinstance(ids, Sequence) and not isinstance(ids, str) and all(isinstance(s, int) for s in ids),
            "sep_token_ids must be an int, a sequence of ints or a 1-D integer tensor",
        )
        key = (tuple(ids), device)
        if key not in _separator_cache:  # the same few separators on every call: build their tensor once
            _separator_cache[key] = torch.tensor(list(ids), dtype=torch.int64, device=device)
        seps = _separator_cache[key]
    _require(seps.numel() > 0, "sep_token_ids must name at least one separator id")
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
    """
    device = input_ids.device if isinstance(input_ids, torch.Tensor) else torch.device("cpu")
    _check_tensor(input_ids, "input_ids", 1, _INDEX_DTYPES, device)
    _check_tensor(cu_seqlens, "cu_seqlens", 1, _INDEX_DTYPES, device)
    _require(cu_seqlens.shape[0] >= 1, "cu_seqlens must have at least one element (it is [B + 1])")
    seps = _separator_tensor(sep_token_ids, device)
    if _eager_cpu(device):
        return cpu.find_steps(input_ids, cu_seqlens, seps)
    return torch.ops.fastprm.find_steps(input_ids, cu_seqlens, seps)


def _eager_cpu(device: torch.device) -> bool:
    return device.type == "cpu" and not torch.compiler.is_compiling()


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

    The step rows are either found (``input_ids`` + ``cu_seqlens`` + ``sep_token_ids``: every row whose id is
    a separator ends a step) or given (``step_index`` + ``cu_steps``). Only those rows are read: they are
    projected through the head, turned into P(step good), and reduced per sequence.

    Args:
        hidden: [N, H] float32 / bfloat16 / float16 (float64 for gradcheck) hidden states of the packed batch;
            any strides.
        weight: [C, H] head. C = 1: P(good) = sigmoid(logit); C = 2: softmax over the two logits.
        bias: [C] or None.
        input_ids: [N] int32/int64 (find mode).
        cu_seqlens: [B + 1] int32/int64 sequence offsets (find mode).
        sep_token_ids: separator id(s) (find mode).
        step_index: [K] flat rows of the steps, strictly ascending within each sequence (given mode).
        cu_steps: [B + 1] offsets of each sequence's steps in step_index (given mode).
        positive_class: the class whose probability is P(good): 0 or 1 (C = 1: 1 means sigmoid(logit), 0 means
            sigmoid(-logit)).
        threshold: ``first_error`` is the first step with probability below it.

    Returns:
        :class:`StepScores`. Gradients flow from step_logits, step_probs, min (to the first minimal step),
        prod/log_prod, mean and last to hidden, weight and bias.

    Raises:
        ValueError: naming the argument, for any malformed input.
    """
    _require(isinstance(hidden, torch.Tensor), f"hidden must be a torch.Tensor, got {type(hidden).__name__}")
    device = hidden.device
    _check_tensor(hidden, "hidden", 2, _FLOAT_DTYPES, device)
    _check_tensor(weight, "weight", 2, _FLOAT_DTYPES, device)
    C, H = weight.shape
    _require(C in (1, 2), f"weight must have C = 1 or 2 rows (sigmoid or 2-class softmax head), got C = {C}")
    _require(hidden.shape[1] == H, f"weight has H = {H} columns but hidden has {hidden.shape[1]}")
    if bias is not None:
        _check_tensor(bias, "bias", 1, _FLOAT_DTYPES, device)
        _require(bias.shape[0] == C, f"bias must be [C] = [{C}], got shape {tuple(bias.shape)}")
    _require(positive_class in (0, 1), f"positive_class must be 0 or 1, got {positive_class!r}")
    _require(
        isinstance(threshold, (int, float)), f"threshold must be a number, got {type(threshold).__name__}"
    )

    find_args = (input_ids, cu_seqlens, sep_token_ids)
    given_args = (step_index, cu_steps)
    finding = all(a is not None for a in find_args)
    giving = all(a is not None for a in given_args)
    _require(
        finding != giving
        and not (finding and any(a is not None for a in given_args))
        and not (giving and any(a is not None for a in find_args)),
        "pass either input_ids, cu_seqlens and sep_token_ids (find mode) or step_index and cu_steps (given mode)",
    )
    if finding:
        _require(
            isinstance(input_ids, torch.Tensor)
            and input_ids.dim() == 1
            and input_ids.shape[0] == hidden.shape[0],
            f"input_ids must be [N] = [{hidden.shape[0]}] (one id per hidden row)",
        )
        step_index, cu_steps = find_steps(input_ids, cu_seqlens, sep_token_ids)
    else:
        _check_tensor(step_index, "step_index", 1, _INDEX_DTYPES, device)
        _check_tensor(cu_steps, "cu_steps", 1, _INDEX_DTYPES, device)
        _require(cu_steps.shape[0] >= 1, "cu_steps must have at least one element (it is [B + 1])")
        step_index, cu_steps = _as_int64(step_index), _as_int64(cu_steps)

    args = (hidden, weight, bias, step_index, cu_steps, int(positive_class), float(threshold))
    if _eager_cpu(device):
        outputs = schema.EagerCPUForward.apply(*args)
    else:
        outputs = torch.ops.fastprm.score_steps_forward(*args)
    return StepScores.from_op_outputs(outputs, step_index, cu_steps)
