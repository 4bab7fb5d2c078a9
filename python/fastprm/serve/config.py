"""What a running ``fastprm serve`` is allowed to do: limits, batching, the reward protocol's options, auth."""

from __future__ import annotations

from dataclasses import dataclass

from ..metrics import AGGREGATES


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one server (the ``fastprm serve`` options; defaults are the command's).

    Attributes:
        model_name: the name responses carry (vLLM's ``model`` field); a ``/pooling`` request naming another
            model gets 404. Never used to load anything.
        api_key: when set, every endpoint but ``/health`` needs ``Authorization: Bearer <api_key>``.
        max_batch_tokens: tokens the model thread gathers from queued requests into one scoring call.
        max_wait_ms: longest a queued request waits for others to join its batch.
        max_queue: requests waiting (not yet scoring) before new ones get 503.
        max_request_bytes / max_rows / max_request_tokens: per-request limits (413 beyond them).
        split_steps: regex that splits a ``/get_reward`` response into steps.
        problem_regex: regex whose first non-empty group is the problem in a ``/get_reward`` prompt
            (default: the last ChatML or Llama 3 user turn, else the whole prompt).
        aggregate: the ``/get_reward`` reward: this aggregate of the step scores.
        empty_reward: the reward of a response with no step scored (empty, or every step truncated away).
        return_step_scores: ``/get_reward`` responses also carry each row's step scores (``step_scores``).
    """

    model_name: str
    api_key: str | None = None
    max_batch_tokens: int = 16384
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_request_bytes: int = 16 * 2**20
    max_rows: int = 1024
    max_request_tokens: int = 262144
    split_steps: str = r"\n\n"
    problem_regex: str | None = None
    aggregate: str = "min"
    empty_reward: float = 0.0
    return_step_scores: bool = False

    def __post_init__(self):
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")
        for name in ("max_batch_tokens", "max_queue", "max_request_bytes", "max_rows", "max_request_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key is empty")
