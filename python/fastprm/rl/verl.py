"""Dense PRM rewards in verl's reward-tensor layout.

verl hands a reward manager a ``DataProto`` whose ``batch`` holds ``prompts`` [B, P] (left-padded),
``responses`` [B, R] (right-padded) and ``attention_mask`` [B, P + R]; the manager returns a float reward
tensor shaped like ``responses``. Its managers put one score at the last valid response token; this puts
each step's reward at the token that ends the step. A custom manager can be as short as::

    from fastprm import PRM
    from fastprm.rl import verl_dense_rewards

    class PRMRewardManager:
        def __init__(self, tokenizer, prm_dir, **kwargs):
            self.tokenizer, self.prm = tokenizer, PRM.from_pretrained(prm_dir)

        def __call__(self, data, return_dict=False):
            rewards = verl_dense_rewards(data, self.prm, self.tokenizer)
            return {"reward_tensor": rewards} if return_dict else rewards
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .placement import char_to_token, token_rewards
from .prm_rewards import scorer_of, step_scores_of
from .text import DEFAULT_SPLIT, problem_of, response_steps

if TYPE_CHECKING:
    from ..models.prm import PRM
    from ..scoring import Scorer


def verl_dense_rewards(
    data,
    prm: PRM | Scorer,
    tokenizer,
    *,
    split: str = DEFAULT_SPLIT,
    transform: str = "min_form",
    temperature: float = 0.1,
    normalize: str | None = None,
    group_size: int | None = None,
    problem_regex: str | None = None,
) -> torch.Tensor:
    """The [B, R] fp32 reward tensor of a verl batch (``data.batch`` with ``prompts``, ``responses``,
    ``attention_mask``): each response decoded with the policy ``tokenizer`` (a fast one), split at
    ``split``, its steps scored by the PRM, each step's reward (``transform``, ``normalize``: see
    :func:`~fastprm.rl.placement.token_rewards`) at the response token holding the step's last character.
    The problem is the decoded prompt's last chat user turn (or the prompt)."""
    batch = data.batch
    prompts, responses, mask = batch["prompts"], batch["responses"], batch["attention_mask"]
    if responses.dim() != 2 or mask.shape != (responses.shape[0], prompts.shape[1] + responses.shape[1]):
        raise ValueError(
            f"expected responses [B, R] and attention_mask [B, P + R]; got prompts {tuple(prompts.shape)}, "
            f"responses {tuple(responses.shape)}, attention_mask {tuple(mask.shape)}"
        )
    P = prompts.shape[1]
    problems, steps, offsets, lengths = [], [], [], []
    for b in range(responses.shape[0]):
        prompt_ids = prompts[b][mask[b, :P].bool()].tolist()
        length = int(mask[b, P:].sum())
        text, token_offsets = decode_with_offsets(tokenizer, responses[b, :length].tolist())
        problems.append(problem_of(tokenizer.decode(prompt_ids), problem_regex))
        steps.append(response_steps(text, split))
        offsets.append(token_offsets)
        lengths.append(length)
    step_scores = step_scores_of(scorer_of(prm), problems, [s.steps for s in steps])
    ends = [
        char_to_token(s.ends[: len(scores)], token_offsets) if scores else []
        for s, scores, token_offsets in zip(steps, step_scores, offsets)
    ]
    rewards = token_rewards(
        step_scores, ends, lengths, transform=transform, temperature=temperature, normalize=normalize,
        group_size=group_size,
    )  # fmt: skip
    out = torch.zeros(responses.shape, dtype=torch.float32)
    out[:, : rewards.shape[1]] = rewards
    return out


def decode_with_offsets(tokenizer, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The text of ``ids`` and each token's (start, end) characters in it. When re-encoding the text gives
    the same ids (the usual case), the fast tokenizer's offsets; otherwise each token's span is where the
    text of the ids before and through it ends (one decode per token)."""
    text = tokenizer.decode(ids)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if encoded["input_ids"] == ids:
        return text, [tuple(o) for o in encoded["offset_mapping"]]
    ends = [len(tokenizer.decode(ids[: i + 1])) for i in range(len(ids))]
    return text, list(zip([0, *ends[:-1]], ends))
