"""Dense PRM rewards of policy responses: split each response into steps, score them with the PRM, place each
step's reward at the policy token that ends it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .placement import char_to_token, token_rewards
from .text import DEFAULT_SPLIT, problem_of, response_steps

if TYPE_CHECKING:
    from ..models.prm import PRM
    from ..scoring import Scorer


@dataclass
class PRMTokenRewards:
    """What :func:`prm_token_rewards` computed.

    Attributes:
        rewards: [B, T] fp32, T the longest response in policy tokens; a step's reward at its end token.
        response_ids: per response, the policy token ids ``rewards`` is aligned with.
        step_scores: per response, P(step good) of each rewarded step.
        step_end_tokens: per response, the token index where each rewarded step ends.
    """

    rewards: torch.Tensor
    response_ids: list[list[int]]
    step_scores: list[list[float]]
    step_end_tokens: list[list[int]]


def scorer_of(prm: PRM | Scorer) -> Scorer:
    """``prm`` itself when it is a Scorer (keep one across calls: it reads the calibration once), else a
    Scorer of it."""
    from ..scoring import Scorer

    return prm if isinstance(prm, Scorer) else Scorer(prm)


def step_scores_of(
    scorer: Scorer, problems: Sequence[str], solutions: Sequence[Sequence[str]]
) -> list[list[float]]:
    """P(step good) of each solution's steps, in one scoring call; a solution with no step is not scored and
    gets []."""
    scored = [i for i, steps in enumerate(solutions) if steps]
    results = scorer.score([problems[i] for i in scored], [solutions[i] for i in scored])
    step_scores: list[list[float]] = [[] for _ in solutions]
    for i, result in zip(scored, results):
        step_scores[i] = result.step_scores
    return step_scores


def prm_token_rewards(
    prm: PRM | Scorer,
    prompts: Sequence[str],
    responses: Sequence[str],
    policy_tokenizer,
    *,
    split: str = DEFAULT_SPLIT,
    transform: str = "min_form",
    temperature: float = 0.1,
    normalize: str | None = None,
    group_size: int | None = None,
    truncated: Sequence[bool] | None = None,
    reward_unfinished: bool = False,
    problem_regex: str | None = None,
) -> PRMTokenRewards:
    """Dense step rewards of ``responses`` to ``prompts``, in the policy's tokens.

    The problem is the prompt's last chat user turn (or the prompt; ``problem_regex`` overrides); the
    response, with end-of-turn markers cut, is split at the regex ``split``; the PRM scores the steps; each
    step's reward (``transform``, ``normalize``: :func:`~fastprm.rl.placement.token_rewards`) goes to
    the policy token holding the step's last character, found through the offsets of ``policy_tokenizer``
    (a fast tokenizer; the response is tokenized without special tokens). A response cut by the length
    limit (``truncated[b]``) whose last step has no separator after it: that step gets no reward, unless
    ``reward_unfinished``. A response without steps gets a zero row.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    if truncated is not None and len(truncated) != len(responses):
        raise ValueError(f"{len(truncated)} truncated flags for {len(responses)} responses")
    if not getattr(policy_tokenizer, "is_fast", False):
        raise ValueError(
            "policy_tokenizer must be a fast tokenizer: step ends are mapped through its offsets"
        )
    encoded = policy_tokenizer(list(responses), add_special_tokens=False, return_offsets_mapping=True)
    steps = [
        response_steps(r, split, bool(truncated[b]) if truncated is not None else False)
        for b, r in enumerate(responses)
    ]
    kept = [s.steps if reward_unfinished or not s.unfinished else s.steps[:-1] for s in steps]
    step_scores = step_scores_of(scorer_of(prm), [problem_of(p, problem_regex) for p in prompts], kept)
    ends = [
        char_to_token(s.ends[: len(step_scores[b])], offsets) if step_scores[b] else []
        for b, (s, offsets) in enumerate(zip(steps, encoded["offset_mapping"]))
    ]
    ids = [list(i) for i in encoded["input_ids"]]
    rewards = token_rewards(
        step_scores, ends, [len(i) for i in ids], transform=transform, temperature=temperature,
        normalize=normalize, group_size=group_size,
    )  # fmt: skip
    return PRMTokenRewards(rewards, ids, step_scores, ends)
