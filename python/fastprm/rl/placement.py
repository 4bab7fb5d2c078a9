"""Dense token rewards: each step's reward at the policy token that ends the step, zeros elsewhere."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from .transforms import normalize as normalize_rewards
from .transforms import step_rewards


def token_rewards(
    step_scores: Sequence[Sequence[float] | torch.Tensor],
    step_end_tokens: Sequence[Sequence[int]],
    response_length: int | Sequence[int],
    *,
    transform: str = "min_form",
    temperature: float = 0.1,
    normalize: str | None = None,
    group_size: int | None = None,
) -> torch.Tensor:
    """The [B, T] fp32 reward tensor of B responses.

    Args:
        step_scores: per response, P(step good) of each step [K_b].
        step_end_tokens: per response, the index in the response's tokens of the token that ends each step
            [K_b] (two steps may end in one token: their rewards add up there).
        response_length: T, or each response's length [B] (T is then their max; positions past a
            response's length are 0, as padding).
        transform, temperature: see :mod:`fastprm.rl.transforms` (default ``min_form``: the sum of a
            response's rewards from any token on is a soft minimum of the scores of the steps still to come).
        normalize, group_size: ``"batch"`` or ``"group"`` normalisation of the step rewards (after the
            transform), see :func:`fastprm.rl.transforms.normalize`.

    Raises ValueError naming the response (and step) for mismatched lengths or a step end outside its response.
    """
    if len(step_scores) != len(step_end_tokens):
        raise ValueError(
            f"{len(step_scores)} rows of step_scores but {len(step_end_tokens)} of step_end_tokens"
        )
    lengths = (
        [response_length] * len(step_scores) if isinstance(response_length, int) else list(response_length)
    )
    if len(lengths) != len(step_scores):
        raise ValueError(f"{len(lengths)} response lengths for {len(step_scores)} responses")
    rewards = [step_rewards(s, transform, temperature=temperature) for s in step_scores]
    rewards = normalize_rewards(rewards, normalize, group_size)
    out = torch.zeros(len(lengths), max(lengths, default=0), dtype=torch.float32)
    for b, (r, ends, length) in enumerate(zip(rewards, step_end_tokens, lengths)):
        if len(ends) != len(r):
            raise ValueError(f"response {b}: {len(r)} step scores but {len(ends)} step ends")
        for k, end in enumerate(ends):
            if not 0 <= end < length:
                raise ValueError(f"response {b}, step {k}: ends at token {end}, outside its {length} tokens")
        if ends:
            out[b].index_add_(0, torch.as_tensor(list(ends), dtype=torch.int64), r)
    return out


def char_to_token(step_ends: Sequence[int], offsets: Sequence[tuple[int, int]]) -> list[int]:
    """The token holding the last character of each step: ``step_ends`` are exclusive character offsets in
    the response text, ``offsets`` each token's (start, end) characters (a fast tokenizer's
    ``offset_mapping``). A step that ends inside a merged token (``"5.\\n"`` as one token) maps to that
    token; tokens with no characters (special tokens) are never chosen."""
    tokens = [(s, e, i) for i, (s, e) in enumerate(offsets) if e > s]
    starts = [s for s, _, _ in tokens]
    out = []
    for end in step_ends:
        j = bisect.bisect_right(starts, end - 1) - 1
        if j < 0:
            raise ValueError(f"no token holds the character before offset {end}")
        out.append(tokens[j][2])
    return out
