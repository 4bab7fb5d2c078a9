"""Incremental scoring with an implicit PRM: a session holds a partial solution's keys and values in both
the policy and the reference model, and each new step runs the two models over that step's tokens only.

A step's reward needs the log-probability of each of its tokens, and token j is predicted by the final hidden
state of token j - 1: the step's first token by the last token already in the session. So a session keeps,
per model, its cached chunks of keys and values (as :class:`fastprm.sessions.StepSession` does: immutable
chunks, a fork copies references) and the final hidden state [H] of its last token. A new step's tokens run
after the cache in one packed forward per model (fastprm's varlen attention, switched on for the call), their
log-probabilities come from :func:`fastprm.ops.token_logprobs`, and the step's reward is beta times the sum of
the policy's minus the reference's, exactly what :meth:`ImplicitPRM.score` computes over the whole row.

Not thread-safe: a call sets the models' attention implementation for its duration.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .models import varlen_attention
from .ops import token_logprobs
from .sessions import Chunk, check_length, concatenate_chunks, new_step_ids, row_chunk
from .tokenization import TokenizedSolution

if TYPE_CHECKING:
    from .implicit import ImplicitPRM, ImplicitSolutionScores


@dataclass
class _Track:
    """One model's part of a session: its cached (tokens, keys and values) chunks and the final hidden
    state [H] of the session's last token."""

    chunks: list[tuple[int, Chunk]]
    last_hidden: torch.Tensor


class ImplicitSession:
    """A partial solution of one problem scored by an implicit PRM as its steps are added.

    Made by :meth:`ImplicitPRM.session <fastprm.implicit.ImplicitPRM.session>`; see the module docstring.
    """

    def __init__(self, prm: ImplicitPRM, prompt_ids: list[int], policy: _Track, reference: _Track):
        self.prm = prm
        self.tokenizer = prm.tokenizer
        self.prompt_ids = prompt_ids
        self.tracks = {"policy": policy, "reference": reference}
        self.step_ids: list[list[int]] = []  # each step's tokens, separator included
        self._rewards: list[float] = []

    @property
    def cached_tokens(self) -> int:
        """Tokens whose keys and values the session holds (prompt and steps), in each model."""
        return sum(n for n, _ in self.tracks["policy"].chunks)

    @property
    def step_rewards(self) -> list[float]:
        """beta * sum over each step's tokens of log pi - log pi_ref, for the steps added so far."""
        return list(self._rewards)

    @property
    def scores(self) -> list[float]:
        """sigmoid(step reward) of every step added so far (the P(good) of batch scoring)."""
        return torch.sigmoid(torch.tensor(self._rewards, dtype=torch.float32)).tolist()

    def result(self) -> ImplicitSolutionScores:
        """The session's steps as :meth:`ImplicitPRM.score` returns a row: scores, aggregates, rewards."""
        ends = list(itertools.accumulate(len(ids) for ids in self.step_ids))
        row = TokenizedSolution(
            input_ids=[*self.prompt_ids, *(t for ids in self.step_ids for t in ids)],
            step_ends=[len(self.prompt_ids) + e - 1 for e in ends],
            prompt_length=len(self.prompt_ids),
        )
        rewards = torch.tensor(self._rewards, dtype=torch.float32, device=self.prm.device)
        cu_steps = torch.tensor([0, len(self._rewards)], device=self.prm.device)
        return self.prm.solution_scores(rewards, cu_steps, [row])[0]

    def add_step(self, text: str) -> float:
        """Scores one new step after the session's steps: its score, sigmoid(step reward)."""
        return add_implicit_steps([self], [text])[0]

    def fork(self) -> ImplicitSession:
        """An independent session with the same steps, sharing the computed keys and values (no copy)."""
        tracks = {name: _Track(list(t.chunks), t.last_hidden) for name, t in self.tracks.items()}
        other = ImplicitSession(self.prm, self.prompt_ids, tracks["policy"], tracks["reference"])
        other.step_ids, other._rewards = list(self.step_ids), list(self._rewards)
        return other

    def __repr__(self) -> str:
        return f"ImplicitSession(steps={len(self._rewards)}, cached_tokens={self.cached_tokens})"


@contextlib.contextmanager
def _varlen_attention(model):
    """fastprm's varlen attention for the duration of a call (it reads the per-row cached spans), the
    model's own implementation after."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = varlen_attention.register()
    try:
        yield
    finally:
        config._attn_implementation = before


def _forward(
    model, rows: list[list[int]], prefix: Chunk | None, spans: list[tuple[int, int]] | None
) -> tuple[torch.Tensor, Chunk]:
    """Final hidden states [N, H] of the rows' new tokens, each row after its span of ``prefix``, and the
    keys and values they add."""
    input_ids, position_ids, packed = varlen_attention.packed_inputs(
        rows, prefix, spans, True, model.get_output_embeddings().weight.device
    )
    with _varlen_attention(model):
        out = model.get_decoder()(
            input_ids=input_ids,
            position_ids=position_ids,
            use_cache=False,
            **{varlen_attention.ROWS_KWARG: packed},
        )
    return out.last_hidden_state[0], packed.captured


@torch.inference_mode()
def start_implicit_session(prm: ImplicitPRM, problem: str) -> ImplicitSession:
    """A session for ``problem`` with its prompt run through both models."""
    prompt_ids = prm.tokenizer.prompt_ids(problem)
    if not prompt_ids:
        raise ValueError(
            "an implicit PRM session needs a prompt: the first step's first token is predicted by it"
        )
    check_length(prm.tokenizer, len(prompt_ids), 0)
    tracks = []
    for model in (prm.policy, prm.reference):
        hidden, captured = _forward(model, [prompt_ids], None, None)
        tracks.append(
            _Track([(len(prompt_ids), row_chunk(captured, 0, len(prompt_ids)))], hidden[-1].clone())
        )
    return ImplicitSession(prm, prompt_ids, *tracks)


@torch.inference_mode()
def add_implicit_steps(sessions: Sequence[ImplicitSession], texts: Sequence[str]) -> list[float]:
    """One new step for each session, all in one packed forward per model: each new step's score
    (sigmoid of its reward), in order. Every session must come from the same :class:`ImplicitPRM`, each
    at most once per call."""
    new_ids = new_step_ids(sessions, texts)
    if not sessions:
        return []
    prm = sessions[0].prm
    targets = torch.tensor([t for ids in new_ids for t in ids], device=prm.device)
    lengths = [len(ids) for ids in new_ids]
    log_probs, updates = {}, {}
    for name, model, weight in (
        ("policy", prm.policy, prm.policy_weight),
        ("reference", prm.reference, prm.reference_weight),
    ):
        tracks = [s.tracks[name] for s in sessions]
        prefix, spans = concatenate_chunks([t.chunks for t in tracks])
        hidden, captured = _forward(model, new_ids, prefix, spans)
        # Token j of a step is predicted at token j - 1: the session's last token for the first one.
        predictors, start = [], 0
        for track, n in zip(tracks, lengths):
            predictors += [track.last_hidden[None], hidden[start : start + n - 1]]
            start += n
        log_probs[name] = token_logprobs(torch.cat(predictors), weight, targets, **prm.chunk_kwargs)
        updates[name] = (hidden, captured)
    token_rewards = prm.beta * (log_probs["policy"] - log_probs["reference"])
    rewards = [float(r.sum()) for r in torch.split(token_rewards, lengths)]
    start = 0
    for session, ids, reward in zip(sessions, new_ids, rewards):
        end = start + len(ids)
        for name, (hidden, captured) in updates.items():
            track = session.tracks[name]
            session.tracks[name] = _Track(
                [*track.chunks, (len(ids), row_chunk(captured, start, end))], hidden[end - 1].clone()
            )
        session.step_ids.append(ids)
        session._rewards.append(reward)
        start = end
    return torch.sigmoid(torch.tensor(rewards, dtype=torch.float32)).tolist()
