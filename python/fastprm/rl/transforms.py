"""Step scores -> step rewards: the transforms RL recipes use, and GRPO-style normalisation.

Each transform maps one sequence's step scores ``p`` [K] (P(step good); a NaN score counts as 0, the
package's rule that a NaN step is never correct) to step rewards ``r`` [K] fp32:

| transform | r_k | sum over the steps, and what more steps do to it |
|---|---|---|
| ``prob`` | p_k | grows with every step: splitting a good step in two raises it (length-hackable) |
| ``logit`` | log p_k - log(1 - p_k) | grows with every step above 0.5 (length-hackable) |
| ``centered`` | p_k - 0.5 | grows with every step above 0.5 (length-hackable) |
| ``log_prob`` | log p_k | <= 0; every step lowers it (favours short solutions) |
| ``delta`` | p_k - p_{k-1}, p_0 = 0.5 | p_K - 0.5: only the last step's score counts |
| ``min_form`` (default) | G_k - G_{k+1}, G_k = -T log sum_{j>=k} exp(-p_j / T), G_{K+1} = 0 | G_1 <= min_k p_k; adding a step never raises it |

``min_form`` is PURE's min-form credit assignment ("Stop Summation", Cheng et al. 2025): the return from step
k, the sum of the rewards of steps k..K, is G_k, a soft minimum (temperature T) of the scores of the steps
still to come, instead of their sum, so a policy gains nothing by writing more steps and is judged by its
weakest one; as T -> 0 it is the min. PURE weights the rewards by a softmax; the log-sum-exp soft minimum is
used here because it keeps the guard exact (an added term can only lower it).

Every transform takes ``eps`` (the clamp of p inside logarithms) and ``temperature`` (``min_form``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

TRANSFORMS = ("prob", "logit", "centered", "log_prob", "delta", "min_form")
NORMALIZATIONS = (None, "batch", "group")


def step_rewards(
    scores: torch.Tensor | Sequence[float],
    transform: str = "min_form",
    *,
    temperature: float = 0.1,
    eps: float = 1e-6,
) -> torch.Tensor:
    """One sequence's step rewards [K] fp32 from its step scores [K] (see the module's table)."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
    p = torch.as_tensor(scores, dtype=torch.float32).flatten().nan_to_num(0.0)
    if transform == "prob":
        return p.clone()
    if transform == "centered":
        return p - 0.5
    clamped = p.clamp(eps, 1 - eps)
    if transform == "logit":
        return torch.log(clamped) - torch.log1p(-clamped)
    if transform == "log_prob":
        return torch.log(clamped)
    if transform == "delta":
        return p - torch.cat([p.new_tensor([0.5]), p[:-1]])
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    # G_k for k = 1..K: a log-sum-exp over the steps still to come, from the end.
    future = torch.logcumsumexp((-p / temperature).flip(0), dim=0).flip(0)
    returns = -temperature * future
    return returns - torch.cat([returns[1:], returns.new_zeros(1)])


def normalize(
    rewards: list[torch.Tensor], mode: str | None, group_size: int | None = None
) -> list[torch.Tensor]:
    """Step rewards minus their mean, over their standard deviation (when > 0), computed over all the steps
    of the batch (``batch``) or of each run of ``group_size`` consecutive sequences (``group``: GRPO's
    group of samples of one prompt, as DeepSeekMath normalises process rewards); ``None`` leaves them."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of None, 'batch', 'group', got {mode!r}")
    if mode is None:
        return rewards
    if mode == "batch":
        group_size = len(rewards)
    elif not isinstance(group_size, int) or group_size < 1 or len(rewards) % group_size:
        raise ValueError(f"group_size must divide the {len(rewards)} sequences, got {group_size!r}")
    out = []
    for start in range(0, len(rewards), max(group_size, 1)):
        group = rewards[start : start + group_size]
        flat = torch.cat(group) if group else torch.zeros(0)
        if flat.numel() == 0:
            out += group
            continue
        mean = flat.mean()
        std = flat.std(unbiased=False)
        scale = std if std > 0 else flat.new_tensor(1.0)
        out += [(r - mean) / scale for r in group]
    return out
