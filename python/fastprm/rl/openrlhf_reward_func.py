"""An OpenRLHF reward file: ``--remote_rm_url /path/to/this/file.py`` makes OpenRLHF call
:func:`reward_func` in-process with each batch of ``queries`` (prompt + response), ``prompts`` and
``labels``. Print the path with ``python -c "import fastprm.rl.openrlhf_reward_func as m; print(m.__file__)"``.

Settings come from the environment, read once when the model loads:

- ``FASTPRM_REWARD_MODEL`` (required): the PRM checkpoint directory; ``FASTPRM_REWARD_DTYPE`` (``bf16``,
  ``fp32``, ...; default the model's) and ``FASTPRM_REWARD_DEVICE``.
- ``FASTPRM_REWARD_SPLIT``: regex between steps (default a blank line); ``FASTPRM_REWARD_AGGREGATE``:
  ``min`` (default), ``prod``, ``mean`` or ``last``.
- ``FASTPRM_REWARD_OUTCOME_WEIGHT`` (default 0: process reward only): when > 0, the reward is the hybrid
  ``w_o * outcome + w_p * process`` with the outcome checked against ``labels`` by fastprm's answer
  checker; ``FASTPRM_REWARD_PROCESS_WEIGHT`` (default 1) and ``FASTPRM_REWARD_GATE`` (``none``, ``correct``,
  ``cap``).

The same protocol over HTTP is ``fastprm serve``'s ``/get_reward``.
"""

from __future__ import annotations

import functools
import os

import torch

from .hybrid import hybrid_rewards, outcome_rewards
from .prm_rewards import step_scores_of
from .text import DEFAULT_SPLIT, query_rows


@functools.cache
def _scorer():
    from ..models.prm import PRM
    from ..scoring import Scorer

    path = os.environ.get("FASTPRM_REWARD_MODEL")
    if not path:
        raise RuntimeError("set FASTPRM_REWARD_MODEL to the PRM checkpoint directory")
    dtype = os.environ.get("FASTPRM_REWARD_DTYPE")
    names = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}
    torch_dtype = getattr(torch, names.get(dtype, dtype)) if dtype else None
    return Scorer(
        PRM.from_pretrained(path, dtype=torch_dtype, device=os.environ.get("FASTPRM_REWARD_DEVICE"))
    )


def reward_func(queries: list[str], prompts: list[str], labels: list | None = None, **kwargs) -> dict:
    """OpenRLHF's reward function: ``{"rewards", "scores", "extra_logs"}``, tensors with one value per query
    (``scores`` is the process aggregate in [0, 1], ``extra_logs`` per-sample step counts)."""
    split = os.environ.get("FASTPRM_REWARD_SPLIT", DEFAULT_SPLIT)
    aggregate_by = os.environ.get("FASTPRM_REWARD_AGGREGATE", "min")
    outcome_weight = float(os.environ.get("FASTPRM_REWARD_OUTCOME_WEIGHT", "0"))
    problems, solutions = query_rows(queries, prompts, split)
    step_scores = step_scores_of(_scorer(), problems, solutions)
    process = hybrid_rewards(step_scores, [0.0] * len(queries), outcome_weight=0.0, aggregate_by=aggregate_by)
    if outcome_weight > 0:
        if labels is None:
            raise ValueError("FASTPRM_REWARD_OUTCOME_WEIGHT > 0 needs labels (OpenRLHF's --label_key)")
        responses = [q[len(p) :] for q, p in zip(queries, prompts)]
        rewards = hybrid_rewards(
            step_scores, outcome_rewards(responses, labels), outcome_weight=outcome_weight,
            process_weight=float(os.environ.get("FASTPRM_REWARD_PROCESS_WEIGHT", "1")),
            aggregate_by=aggregate_by, gate=os.environ.get("FASTPRM_REWARD_GATE", "none"),
        )  # fmt: skip
    else:
        rewards = process
    return {
        "rewards": torch.tensor(rewards, dtype=torch.float32),
        "scores": torch.tensor(process, dtype=torch.float32),
        "extra_logs": {"prm_steps": torch.tensor([float(len(s)) for s in step_scores])},
    }
