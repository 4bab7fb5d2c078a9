"""A TRL GRPO reward function backed by a PRM."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .hybrid import hybrid_rewards, outcome_rewards
from .prm_rewards import scorer_of, step_scores_of
from .text import DEFAULT_SPLIT, problem_of, response_steps

if TYPE_CHECKING:
    from ..models.prm import PRM
    from ..scoring import Scorer


def trl_reward_function(
    prm: PRM | Scorer,
    *,
    split: str = DEFAULT_SPLIT,
    aggregate_by: str = "min",
    answer_key: str | None = None,
    outcome_weight: float = 1.0,
    process_weight: float = 1.0,
    gate: str = "none",
    cap: float = 0.0,
    empty_process: float = 0.0,
    problem_regex: str | None = None,
    name: str = "fastprm_prm",
) -> Callable[..., list[float]]:
    """A reward function for TRL's ``GRPOTrainer(reward_funcs=[...])``: ``(prompts, completions, **kwargs)
    -> list[float]``, one reward per completion, named ``name`` in TRL's logs.

    Works with TRL's standard format (prompt and completion strings; the problem is the prompt's last chat
    user turn, or the whole prompt) and its conversational format (message lists; the problem is the last
    user message, the response the completion's messages' contents). Each completion is split at the regex
    ``split`` and scored by the PRM; the reward is the ``aggregate_by`` of its step scores. With
    ``answer_key`` (a dataset column TRL passes through, e.g. ``"answer"``) it is the hybrid reward of
    :func:`~fastprm.rl.hybrid.hybrid_rewards`, the outcome checked by fastprm's answer checker; without,
    the process part alone (``process_weight`` times it).
    """
    scorer = scorer_of(prm)

    def reward(prompts, completions, **kwargs) -> list[float]:
        problems = [_problem(p, problem_regex) for p in prompts]
        responses = [_response(c) for c in completions]
        steps = [response_steps(r, split).steps for r in responses]
        step_scores = step_scores_of(scorer, problems, steps)
        if answer_key is None:
            outcomes, weight = [0.0] * len(responses), 0.0
        else:
            if answer_key not in kwargs:
                raise KeyError(
                    f"answer_key {answer_key!r} is not a column of the batch ({', '.join(kwargs)})"
                )
            outcomes, weight = outcome_rewards(responses, kwargs[answer_key]), outcome_weight
        return hybrid_rewards(
            step_scores, outcomes, outcome_weight=weight, process_weight=process_weight,
            aggregate_by=aggregate_by, gate=gate if answer_key is not None else "none", cap=cap,
            empty_process=empty_process,
        )  # fmt: skip

    reward.__name__ = reward.__qualname__ = name
    return reward


def _problem(prompt, problem_regex: str | None) -> str:
    if isinstance(prompt, str):
        return problem_of(prompt, problem_regex)
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    if not users:
        raise ValueError("a conversational prompt without a user message")
    return str(users[-1]).strip()


def _response(completion) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion)
