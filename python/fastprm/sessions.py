"""Incremental step scoring: a session holds a partial solution's keys and values, and each new step runs
the backbone over that step's tokens only.

A session starts from a problem (:meth:`PRM.session <fastprm.models.prm.PRM.session>`): its prompt (template
and problem) runs once. :meth:`StepSession.add_step` tokenizes the step exactly as batch scoring does (per
step, special tokens split, separator ids appended), runs its tokens after the cached ones and returns
P(good) of the step. :func:`add_steps` does one new step for many sessions in one backbone call (a beam
search depth). :meth:`StepSession.fork` gives a session that shares every key and value computed so far: the
cache is a list of immutable per-step chunks, so a fork copies a list of references, never a tensor.

Memory: each cached token holds 2 x layers x kv_heads x head_dim values of the model's dtype
(:attr:`StepSession.cached_tokens` counts them); a chunk is freed when no session refers to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .ops.step_scoring.reference import reduce_steps, step_probabilities
from .tokenization import RowError, StepTokenizer

if TYPE_CHECKING:
    from .models.prm import PRM

# One chunk of cached tokens: per layer (keys, values), each [tokens, kv_heads, head_dim].
Chunk = list[tuple[torch.Tensor, torch.Tensor]]


class StepSession:
    """A partial solution of one problem whose steps are scored as they are added.

    Made by :meth:`PRM.session <fastprm.models.prm.PRM.session>`; see the module docstring.
    """

    def __init__(
        self,
        prm: PRM,
        tokenizer: StepTokenizer,
        threshold: float,
        gemm_route: str | None,
        fused: bool = False,
    ):
        self.prm = prm
        self.tokenizer = tokenizer
        self.threshold = threshold
        self.gemm_route = gemm_route
        self.fused = fused  # hand-fused decoder layers (fastprm.models.fused_layers)
        self.chunks: list[tuple[int, Chunk]] = []  # (tokens, per-layer keys and values)
        self.step_ids: list[list[int]] = []  # each step's tokens, separator included
        self.prompt_ids: list[int] = []
        self._probs: list[float] = []
        self._log_probs: list[float] = []

    # -- state ------------------------------------------------------------------------------------------------

    @property
    def cached_tokens(self) -> int:
        """Tokens whose keys and values the session holds (prompt and steps)."""
        return sum(n for n, _ in self.chunks)

    @property
    def cached_bytes(self) -> int:
        """Memory of the keys and values the session refers to (chunks shared with forks included)."""
        return sum(k.nbytes + v.nbytes for _, chunk in self.chunks for k, v in chunk)

    @property
    def input_ids(self) -> list[int]:
        """The session's whole token sequence, as batch scoring would build it (without the template tail)."""
        return [*self.prompt_ids, *(t for ids in self.step_ids for t in ids)]

    @property
    def scores(self) -> list[float]:
        """P(good) of every step added so far."""
        return list(self._probs)

    def _reduced(self) -> tuple[torch.Tensor, ...]:
        probs = torch.tensor(self._probs, dtype=torch.float32)
        log_probs = torch.tensor(self._log_probs, dtype=torch.float32)
        return reduce_steps(probs, log_probs, torch.tensor([0, len(self._probs)]), self.threshold)

    @property
    def min(self) -> float:
        """Smallest step score (NaN without steps or when a step is NaN)."""
        return self._reduced()[0].item()

    @property
    def prod(self) -> float:
        """Product of the step scores (from their logs: no underflow to 0 before it is real)."""
        return self._reduced()[2].item()

    @property
    def mean(self) -> float:
        return self._reduced()[3].item()

    @property
    def last(self) -> float:
        return self._reduced()[4].item()

    @property
    def first_error(self) -> int | None:
        """Index of the first step below the threshold or NaN; -1 when none; None without steps."""
        return int(self._reduced()[5].item()) if self._probs else None

    # -- operations -------------------------------------------------------------------------------------------

    def add_step(self, text: str) -> float:
        """Scores one new step after the session's steps: P(good) of that step."""
        return add_steps([self], [text])[0]

    def fork(self) -> StepSession:
        """An independent session with the same steps, sharing the computed keys and values (no copy)."""
        other = StepSession(self.prm, self.tokenizer, self.threshold, self.gemm_route, self.fused)
        other.chunks = list(self.chunks)
        other.step_ids = list(self.step_ids)
        other.prompt_ids = self.prompt_ids
        other._probs, other._log_probs = list(self._probs), list(self._log_probs)
        return other

    def __repr__(self) -> str:
        return f"StepSession(steps={len(self._probs)}, cached_tokens={self.cached_tokens})"


def start_session(
    prm: PRM,
    problem: str,
    *,
    threshold: float = 0.5,
    max_length: int | None = None,
    gemm_route: str | None = None,
    fused: bool | None = None,
) -> StepSession:
    """A session for ``problem`` with its prompt computed (what :meth:`PRM.session` returns)."""
    if max_length is None:
        max_length = getattr(prm.backbone.config, "max_position_embeddings", None)
    tokenizer = StepTokenizer(prm.tokenizer, prm.convention, max_length=max_length)
    if gemm_route is None or fused is None:  # the scorer's measured plan (FASTPRM_TUNE=off: the defaults)
        from .tuning import tuned_plan

        plan = tuned_plan(prm)
        gemm_route = plan.gemm_route if gemm_route is None else gemm_route
        fused = plan.fused if fused is None else fused
    session = StepSession(prm, tokenizer, threshold, gemm_route, fused)
    session.prompt_ids = tokenizer.prompt_ids(problem)
    check_length(tokenizer, len(session.prompt_ids), 0)
    if session.prompt_ids:
        with torch.inference_mode():
            _, captured = prm.packed_step_hidden_states(
                [session.prompt_ids], [[]], capture=True, gemm_route=gemm_route, fused=fused
            )
        session.chunks.append((len(session.prompt_ids), row_chunk(captured, 0, len(session.prompt_ids))))
    return session


def row_chunk(captured: Chunk, start: int, end: int) -> Chunk:
    """Tokens start .. end of a call's captured keys and values, copied: a session must not keep the whole
    batch's tensors alive."""
    return [(k[start:end].clone(), v[start:end].clone()) for k, v in captured]


def check_length(tokenizer: StepTokenizer, total: int, index: int) -> None:
    """A ValueError naming session ``index`` when ``total`` tokens exceed the tokenizer's ``max_length``."""
    limit = tokenizer.max_length
    if limit is not None and total > limit:
        raise ValueError(
            f"session {index}: {total} tokens would exceed the model's maximum length of {limit} tokens"
        )


def new_step_ids(sessions: Sequence, texts: Sequence[str]) -> list[list[int]]:
    """The checks of a call adding one step to each of ``sessions`` (same model, each once, one text each)
    and each new step's token ids (``session.tokenizer``, as batch scoring tokenizes a step), within the
    model's maximum length. Serves PRM and implicit PRM sessions alike (``prm``, ``tokenizer``,
    ``step_ids``, ``cached_tokens``)."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list (one new step per session), not a string")
    if len(sessions) != len(texts):
        raise ValueError(f"got {len(sessions)} sessions but {len(texts)} texts")
    if any(s.prm is not sessions[0].prm for s in sessions):
        raise ValueError("sessions of different models cannot be scored in one call")
    if len({id(s) for s in sessions}) != len(sessions):
        raise ValueError("a session appears twice in one call; fork it to score two continuations")
    new_ids = []
    for i, (session, text) in enumerate(zip(sessions, texts)):
        try:
            ids = session.tokenizer.step_ids(text, first=not session.step_ids, row=i)
        except RowError as err:
            raise ValueError(f"texts[{i}]: {err.reason}") from None
        check_length(session.tokenizer, session.cached_tokens + len(ids), i)
        new_ids.append(ids)
    return new_ids


@torch.inference_mode()
def add_steps(sessions: Sequence[StepSession], texts: Sequence[str]) -> list[float]:
    """One new step for each session, all in one backbone call: P(good) of each new step, in order.

    Every session must come from the same PRM; a session may appear once per call. Each step's tokens run
    after its own session's cached keys and values only.
    """
    new_ids = new_step_ids(sessions, texts)
    if not sessions:
        return []
    prm = sessions[0].prm
    prefix, spans = concatenate_chunks([s.chunks for s in sessions])
    hidden, captured = prm.packed_step_hidden_states(
        new_ids,
        [[len(ids) - 1] for ids in new_ids],
        prefix=prefix,
        prefix_spans=spans,
        capture=True,
        gemm_route=sessions[0].gemm_route,
        fused=sessions[0].fused,
    )
    scores = prm.score_step_rows(hidden, torch.arange(len(sessions) + 1), sessions[0].threshold)
    _, log_probs = step_probabilities(scores.step_logits.float(), prm.convention.positive_class)
    probs = scores.step_probs.float().tolist()
    start = 0
    for session, ids, p, lp in zip(sessions, new_ids, probs, log_probs.tolist()):
        session.chunks.append((len(ids), row_chunk(captured, start, start + len(ids))))
        session.step_ids.append(ids)
        session._probs.append(p)
        session._log_probs.append(lp)
        start += len(ids)
    return probs


def concatenate_chunks(
    per_session: Sequence[list[tuple[int, Chunk]]],
) -> tuple[Chunk | None, list[tuple[int, int]] | None]:
    """Per layer, the keys and values of every session's cached chunks (``(tokens, chunk)`` lists) one after
    another, and each session's span in them; (None, None) when no session holds any."""
    chunks = [c for session in per_session for _, c in session]
    if not chunks:
        return None, None
    spans, start = [], 0
    for session in per_session:
        tokens = sum(n for n, _ in session)
        spans.append((start, start + tokens))
        start += tokens
    layers = len(chunks[0])
    prefix = [
        (torch.cat([c[i][0] for c in chunks]), torch.cat([c[i][1] for c in chunks])) for i in range(layers)
    ]
    return prefix, spans
