"""Search loops over a PRM: best-of-N over whole sampled solutions and step-level beam search.

Best-of-N scores every candidate of a problem in one call, so the Scorer runs the problem's prompt once
(problem-shared prefixes). Beam search keeps one :class:`~fastprm.sessions.StepSession` per path: a new step
costs the PRM its own tokens only, and a path's expansions are forks that share its keys and values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..metrics import AGGREGATES
from ..metrics.answers import answer_key, extract_answer
from .generators import DEFAULT_STOP, Generator, prefix_text

if TYPE_CHECKING:
    from ..models.prm import PRM
    from ..sessions import StepSession


@dataclass
class Candidate:
    """One solution the search produced: its steps, their PRM scores and its aggregate ``score``."""

    steps: list[str]
    step_scores: list[float]
    score: float
    answer: str | None
    finished: bool = True


@dataclass
class SearchResult:
    """What a search returns for one problem.

    Attributes:
        best: the chosen candidate (None when no candidate could be scored).
        candidates: every candidate, scored (best-of-N: all N; beam search: the final beams and the finished
            paths it kept).
        counters: ``generated_steps`` (step texts the generator produced); for beam search also
            ``generated_tokens`` (when the generator counts them), ``prm_tokens`` (tokens the PRM's backbone
            computed), ``prm_tokens_full_rescore`` (what re-scoring every candidate from scratch at every
            depth would have computed) and ``depth``.
    """

    best: Candidate | None
    candidates: list[Candidate]
    counters: dict = field(default_factory=dict)


def _rank_key(score: float) -> float:
    """NaN ranks below every score (a NaN step is never correct)."""
    return -math.inf if score is None or math.isnan(score) else score


def _generated(generator: Generator) -> int | None:
    return getattr(generator, "generated_tokens", None)


def best_of_n(
    prm: PRM,
    generator: Generator,
    problems: Sequence[str],
    n: int,
    aggregate: str = "min",
    vote: bool = False,
    **scorer_options,
) -> list[SearchResult]:
    """Samples ``n`` solutions per problem, scores them with the PRM and picks one per problem.

    ``vote=False``: the candidate with the highest ``aggregate`` of its step scores. ``vote=True``: PRM-weighted
    majority vote: the final answer with the highest sum of its candidates' aggregates, represented by its best
    candidate. Candidates without steps are never picked. ``scorer_options`` go to :meth:`PRM.score`.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    solutions = generator.generate_solutions(list(problems), n)
    flat = [(p, i, steps) for p, sols in enumerate(solutions) for i, steps in enumerate(sols) if steps]
    scored = prm.score([problems[p] for p, _, _ in flat], [steps for _, _, steps in flat], **scorer_options)
    by_slot = {(p, i): s for (p, i, _), s in zip(flat, scored)}
    results = []
    for p, sols in enumerate(solutions):
        candidates = []
        for i, steps in enumerate(sols):
            s = by_slot.get((p, i))
            score = getattr(s, aggregate) if s is not None else math.nan
            answer = extract_answer(steps[-1]) if steps else None
            candidates.append(Candidate(list(steps), s.step_scores if s else [], score, answer))
        counters = {"generated_steps": sum(len(steps) for steps in sols)}
        results.append(SearchResult(_pick(candidates, vote), candidates, counters))
    return results


def _pick(candidates: list[Candidate], vote: bool) -> Candidate | None:
    scored = [c for c in candidates if c.step_scores]
    if not scored:
        return None
    if not vote:
        return max(scored, key=lambda c: _rank_key(c.score))
    weight: dict[str | None, float] = {}
    for c in scored:
        key = answer_key(c.answer)
        weight[key] = weight.get(key, 0.0) + max(_rank_key(c.score), 0.0)
    best_answer = max(weight, key=lambda k: (k is not None, weight[k]))
    return max((c for c in scored if answer_key(c.answer) == best_answer), key=lambda c: _rank_key(c.score))


@dataclass
class _Path:
    steps: list[str]
    step_scores: list[float]
    score: float  # the beam's aggregate of step_scores
    session: StepSession | None = None  # None when re-scoring from scratch
    finished: bool = False


def beam_search(
    prm: PRM,
    generator: Generator,
    problem: str,
    beam_width: int = 4,
    expansions: int = 4,
    max_steps: int = 10,
    aggregate: str = "last",
    prune_below: float | None = None,
    *,
    stop: str = DEFAULT_STOP,
    max_new_tokens: int = 256,
    threshold: float = 0.5,
    rescore: bool = False,
) -> SearchResult:
    """Step-level beam search (as search-and-learn's): every unfinished path is expanded by ``expansions``
    sampled next steps, only the new step is scored (sessions), and the ``beam_width`` best paths by
    ``aggregate`` of their step scores are kept. A path is finished when its step states a final answer
    (:func:`fastprm.metrics.answers.extract_answer`) or is empty; the search stops when every kept path is
    finished or after ``max_steps`` steps. ``prune_below``: a path whose new step scores below it is dropped.

    ``rescore=True`` scores every candidate from scratch at every depth instead (what search loops without
    incremental scoring do; for backbones whose attention cannot continue a session, and as the baseline of
    ``benchmarks/bench_search.py``). The scores are the same either way (to 1e-5 in fp32).
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    for name, value in (("beam_width", beam_width), ("expansions", expansions), ("max_steps", max_steps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    before = _generated(generator)
    if rescore:
        from ..scoring import Scorer

        scorer = Scorer(prm, threshold=threshold, share_prefix=False)
        root, prm_tokens = None, 0
    else:
        root = prm.session(problem, threshold=threshold)
        prm_tokens = root.cached_tokens
    full = generated_steps = depth = 0
    beams = [_Path([], [], math.nan, root)]
    while depth < max_steps and any(not b.finished for b in beams):
        depth += 1
        active = [b for b in beams if not b.finished]
        prefixes = [prefix_text(generator, problem, b.steps, stop) for b in active]
        proposals = generator.generate_steps(prefixes, expansions, stop=stop, max_new_tokens=max_new_tokens)
        pairs = [(b, text) for b, texts in zip(active, proposals) for text in texts]
        generated_steps += len(pairs)
        if rescore:
            tokenized = scorer.tokenizer([problem] * len(pairs), [[*b.steps, text] for b, text in pairs])
            scored = scorer.score_tokenized(tokenized)
            children = [
                _Path([*b.steps, text], r.step_scores, getattr(r, aggregate))
                for (b, text), r in zip(pairs, scored)
            ]
            prm_tokens += sum(len(t.input_ids) for t in tokenized)
            full += sum(len(t.input_ids) for t in tokenized)
        else:
            sessions = [b.session.fork() for b, _ in pairs]
            cached = sum(s.cached_tokens for s in sessions)
            prm.add_steps(sessions, [text for _, text in pairs])
            children = [
                _Path([*b.steps, text], s.scores, getattr(s, aggregate), s)
                for (b, text), s in zip(pairs, sessions)
            ]
            prm_tokens += sum(s.cached_tokens for s in sessions) - cached
            full += sum(s.cached_tokens for s in sessions)
        for c in children:
            c.finished = not c.steps[-1].strip() or extract_answer(c.steps[-1]) is not None
        if prune_below is not None:
            children = [c for c in children if not c.step_scores[-1] < prune_below]
        pool = [b for b in beams if b.finished] + children
        pool.sort(key=lambda b: _rank_key(b.score), reverse=True)
        beams = pool[:beam_width]
        if not beams:
            break
    candidates = [
        Candidate(
            b.steps,
            list(b.step_scores),
            b.score,
            extract_answer(b.steps[-1]) if b.steps else None,
            b.finished,
        )
        for b in beams
    ]
    finished = [c for c in candidates if c.finished] or candidates
    best = max(finished, key=lambda c: _rank_key(c.score)) if finished else None
    counters = {
        "generated_steps": generated_steps,
        "prm_tokens": prm_tokens,
        "prm_tokens_full_rescore": full,
        "depth": depth,
    }
    if before is not None:
        counters["generated_tokens"] = _generated(generator) - before
    return SearchResult(best, candidates, counters)
