"""Step scoring of tokenized rows: backbone batches -> step rows [K, H] -> head and fused op -> per-row scores.

Rows flow one way: :class:`~fastprm.tokenization.StepTokenizer` rows -> a batch layout (one forward per row,
packed varlen, or padded) -> :meth:`PRM.step_hidden_states` (the step rows' final hidden states, [K, H], in
row order) -> :meth:`PRM.score_step_rows` (head + :func:`fastprm.ops.score_steps`) -> :class:`SolutionScores`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from .batching import LAYOUTS, prompt_group_batches, token_budget_batches
from .io import json_safe
from .machine import fit_threads_to_cores
from .models.gemm_routes import check_gemm_route
from .models.step_rows import compile_backbone
from .models.varlen_attention import NAME as VARLEN_ATTENTION
from .packing import cu_seqlens, pack_rows, pad_rows
from .tokenization import StepTokenizer, TokenizedSolution
from .tuning.plan import ScoringPlan

if TYPE_CHECKING:
    from transformers import Cache

    from .models.prm import PRM
    from .ops import StepScores


@dataclass
class SolutionScores:
    """Scores of one solution.

    Attributes:
        step_scores: P(step good) for every scored step, in order (NaN where the model gave NaN).
        min, prod, mean, last: aggregates over the steps (NaN when no step was scored or a step is NaN;
            ``min`` is NaN as soon as one step is).
        first_error: index of the first step whose score is below the threshold or NaN (a NaN step is never
            correct), -1 when none, None when no step was scored (every step dropped by truncation).
        steps_dropped / prompt_tokens_dropped: what truncation removed (0 when nothing).
    """

    step_scores: list[float]
    min: float
    prod: float
    mean: float
    last: float
    first_error: int | None
    steps_dropped: int = 0
    prompt_tokens_dropped: int = 0

    def to_dict(self) -> dict:
        """The fields as JSON-ready values: NaN becomes None."""
        return json_safe(asdict(self))


class Scorer:
    """Scores (problem, steps) rows with a :class:`~fastprm.models.prm.PRM`.

    How the backbone runs (batch layout, token budget, GEMM route, compilation) is chosen by measurement on
    the machine at hand: whatever is not given is taken from :func:`fastprm.tuning.tuned_plan`, which
    calibrates once per machine and model shape and caches the result (``FASTPRM_TUNE=off`` turns it off).
    The choice is :attr:`plan`.

    Args:
        prm: the model.
        batch_tokens: token budget of one backbone batch (rows x longest row) in the ``packed`` and
            ``padded`` layouts.
        max_length: longest row; default the backbone's ``max_position_embeddings``.
        truncation: ``error`` (default), ``left-truncate-prompt`` or ``drop-steps``.
        threshold: ``first_error`` threshold.
        layout: ``rows`` (one unpadded forward per row), ``packed`` (each batch as one [1, N] varlen
            sequence with per-row position_ids) or ``padded`` (right-padded [B, T] with a mask). Step scores
            do not depend on it (tested to 1e-5 in fp32).
        gemm_route: how matmuls run: ``torch``, ``onednn`` or ``fp32`` (bf16 values through fp32 GEMMs);
            see :mod:`fastprm.models.gemm_routes`.
        share_prefix: rows with the same prompt (template + problem: best-of-N candidates, or any rows of
            one problem) run that prompt once per call and reuse its keys and values. In the ``rows``
            layout the template's header (system prompt, chat header) also runs once for the scorer's life,
            and every row is split at its header and its prompt whether or not another row shares them, so a
            row's scores are the same bits alone or in any batch. In the ``packed`` layout (with fastprm's
            varlen attention, the CPU default) each batch's distinct prompts run once together and its rows
            follow, each after its own prompt (:func:`~fastprm.batching.prompt_group_batches`). Not in the
            ``padded`` layout: it serves attention implementations that cannot give each row its own
            prefix. Default: on, unless compiling.
        compile: run the backbone's layers through ``torch.compile(dynamic=True)`` (see
            :func:`~fastprm.models.step_rows.compile_backbone`).
        fused: run the decoder layers hand-fused on CPU (:mod:`fastprm.models.fused_layers`; not with
            ``compile``).
    """

    def __init__(
        self,
        prm: PRM,
        batch_tokens: int | None = None,
        max_length: int | None = None,
        truncation: str = "error",
        threshold: float = 0.5,
        layout: str | None = None,
        share_prefix: bool | None = None,
        compile: bool | None = None,
        gemm_route: str | None = None,
        fused: bool | None = None,
    ):
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if batch_tokens is not None and (not isinstance(batch_tokens, int) or batch_tokens < 1):
            raise ValueError(f"batch_tokens must be a positive integer, got {batch_tokens!r}")
        if not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        if gemm_route is not None:  # before a calibration can run: an explicit bad route fails at once
            check_gemm_route(gemm_route, prm.device, prm.dtype)
        if prm.device.type == "cpu":
            fit_threads_to_cores()  # before the calibration key reads the thread count
        if compile and fused is None:  # the fused kernels do not compile
            fused = False
        given = {
            "layout": layout,
            "batch_tokens": batch_tokens,
            "gemm_route": gemm_route,
            "compile": compile,
            "fused": fused,
        }
        if any(value is None for value in given.values()):
            from .tuning import tuned_plan

            tuned = tuned_plan(prm)
            given = {name: getattr(tuned, name) if value is None else value for name, value in given.items()}
        self.plan = ScoringPlan(**given)
        self.plan.check()
        check_gemm_route(self.plan.gemm_route, prm.device, prm.dtype)  # a pinned route too
        self.prm = prm
        if self.plan.compile:
            compile_backbone(prm.backbone)
        self.share_prefix = not self.plan.compile if share_prefix is None else share_prefix
        self.threshold = threshold
        if max_length is None:
            max_length = getattr(prm.backbone.config, "max_position_embeddings", None)
        self.tokenizer = StepTokenizer(
            prm.tokenizer, prm.convention, max_length=max_length, truncation=truncation
        )
        self.pad_id = prm.tokenizer.pad_token_id if prm.tokenizer.pad_token_id is not None else 0
        self._header: tuple[tuple[int, ...], Cache] | None = None  # the template header's ids and cache
        # Rows of a packed batch can continue different prompts only through fastprm's varlen attention.
        self._per_row_prefixes = (
            getattr(prm.backbone.config, "_attn_implementation", None) == VARLEN_ATTENTION
        )

    def score(self, problems: Sequence[str], solutions: Sequence[Sequence[str]]) -> list[SolutionScores]:
        """Per-solution step scores, in input order. A bad row raises
        :class:`~fastprm.tokenization.RowError` naming it."""
        return self.score_tokenized(self.tokenizer(problems, solutions))

    @torch.inference_mode()
    def score_tokenized(self, rows: Sequence[TokenizedSolution]) -> list[SolutionScores]:
        """Per-row step scores of tokenized rows, in input order."""
        if self.plan.layout == "rows":
            return self._score_rows(rows)
        if self.plan.layout == "packed" and self.share_prefix and self._per_row_prefixes:
            return self._score_packed_groups(rows)
        results: list[SolutionScores | None] = [None] * len(rows)
        for batch in token_budget_batches([len(r.input_ids) for r in rows], self.plan.batch_tokens):
            members = [rows[i] for i in batch]
            ids, ends = [r.input_ids for r in members], [r.step_ends for r in members]
            if self.plan.layout == "packed":
                packed = pack_rows(ids, ends).to(self.prm.device)
                hidden = self.prm.step_hidden_states(
                    packed.input_ids,
                    packed.step_index,
                    position_ids=packed.position_ids,
                    gemm_route=self.plan.gemm_route,
                    fused=self.plan.fused,
                )
            else:
                padded = pad_rows(ids, ends, self.pad_id).to(self.prm.device)
                hidden = self.prm.step_hidden_states(
                    padded.input_ids,
                    padded.step_index,
                    padded.attention_mask,
                    gemm_route=self.plan.gemm_route,
                    fused=self.plan.fused,
                )
            scores = self.prm.score_step_rows(hidden, cu_seqlens([len(e) for e in ends]), self.threshold)
            for i, result in zip(batch, solution_scores(scores, members)):
                results[i] = result
        return results  # type: ignore[return-value]

    def _score_packed_groups(self, rows: Sequence[TokenizedSolution]) -> list[SolutionScores]:
        """The ``packed`` layout with problem-shared prefixes: per batch, the distinct prompts run once in
        one packed forward, then every row runs only its own tokens after its prompt's keys and values
        (:meth:`PRM.packed_step_hidden_states`). Rows without a step run nothing."""
        results: list[SolutionScores | None] = [None] * len(rows)
        scored = []
        for i, r in enumerate(rows):
            if r.step_ends:
                scored.append(i)
            else:
                results[i] = unscored(r)
        prompts = [tuple(rows[i].input_ids[: rows[i].prompt_length]) for i in scored]
        route = self.plan.gemm_route
        for batch_prompts, sub_batches in prompt_group_batches(
            prompts, [len(rows[i].input_ids) for i in scored], self.plan.batch_tokens
        ):
            prefix, span_of = None, {(): (0, 0)}
            distinct = [p for p in batch_prompts if p]
            if distinct:
                _, prefix = self.prm.packed_step_hidden_states(
                    [list(p) for p in distinct],
                    [[] for _ in distinct],
                    capture=True,
                    gemm_route=route,
                    fused=self.plan.fused,
                )
                bounds = [0, *itertools.accumulate(len(p) for p in distinct)]
                span_of.update({p: (bounds[j], bounds[j + 1]) for j, p in enumerate(distinct)})
            for members in sub_batches:
                batch = [rows[scored[m]] for m in members]
                cut = [len(prompts[m]) for m in members]
                hidden, _ = self.prm.packed_step_hidden_states(
                    [r.input_ids[c:] for r, c in zip(batch, cut)],
                    [[e - c for e in r.step_ends] for r, c in zip(batch, cut)],
                    prefix=prefix,
                    prefix_spans=[span_of[prompts[m]] for m in members],
                    gemm_route=route,
                    fused=self.plan.fused,
                )
                scores = self.prm.score_step_rows(
                    hidden, cu_seqlens([len(r.step_ends) for r in batch]), self.threshold
                )
                for m, result in zip(members, solution_scores(scores, batch)):
                    results[scored[m]] = result
            del prefix
        return results  # type: ignore[return-value]

    def _score_rows(self, rows: Sequence[TokenizedSolution]) -> list[SolutionScores]:
        """The ``rows`` layout: one unpadded forward, head and op call per row, so no row's result depends on
        another's. With ``share_prefix`` each row runs after the cached keys and values of its prompt,
        computed once per distinct prompt (one prompt's cache alive at a time)."""
        device = self.prm.device
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(rows):
            split = r.prompt_length if self.share_prefix and r.step_ends else 0
            groups.setdefault(tuple(r.input_ids[:split]), []).append(i)
        results: list[SolutionScores | None] = [None] * len(rows)
        for prompt, members in groups.items():
            prefix = self._prompt_cache(prompt, rows[members[0]].template_length)
            for i in members:
                row = rows[i]
                if row.step_ends:
                    ids = torch.tensor([row.input_ids[len(prompt) :]], device=device)
                    ends = torch.tensor(row.step_ends, device=device) - len(prompt)
                    hidden = self.prm.step_hidden_states(
                        ids, ends, prefix=prefix, gemm_route=self.plan.gemm_route, fused=self.plan.fused
                    )
                    cu_steps = torch.tensor([0, len(row.step_ends)], device=device)
                    results[i] = solution_scores(
                        self.prm.score_step_rows(hidden, cu_steps, self.threshold), [row]
                    )[0]
                else:  # every step dropped by truncation: no forward, an empty result
                    results[i] = unscored(row)
            del prefix
        return results  # type: ignore[return-value]

    def _prompt_cache(self, prompt: tuple[int, ...], header_length: int) -> Cache | None:
        """Keys and values of ``prompt`` (None when empty): its first ``header_length`` tokens, the template's
        header, from the cache kept for the scorer's life, and the rest computed now on top of them."""
        if not prompt:
            return None
        header, rest = prompt[:header_length], prompt[header_length:]
        device = self.prm.device
        if header and (self._header is None or self._header[0] != header):
            header_ids = torch.tensor([header], device=device)
            self._header = (
                header,
                self.prm.prefix_cache(header_ids, gemm_route=self.plan.gemm_route, fused=self.plan.fused),
            )
        cache = self._header[1] if header else None
        if rest:
            rest_ids = torch.tensor([rest], device=device)
            cache = self.prm.prefix_cache(
                rest_ids, after=cache, gemm_route=self.plan.gemm_route, fused=self.plan.fused
            )
        return cache


def unscored(row: TokenizedSolution) -> SolutionScores:
    """The result of a row whose every step truncation dropped: no score."""
    nan = math.nan
    return SolutionScores([], nan, nan, nan, nan, None, row.steps_dropped, row.prompt_tokens_dropped)


def solution_scores(scores: StepScores, rows: list[TokenizedSolution]) -> list[SolutionScores]:
    """One :class:`SolutionScores` per row from the op's per-sequence outputs."""
    per_seq = {k: getattr(scores, k).float().cpu().tolist() for k in ("min", "prod", "mean", "last")}
    first_error = scores.first_error.cpu().tolist()
    return [
        SolutionScores(
            step_scores=probs.float().cpu().tolist(),
            min=per_seq["min"][b],
            prod=per_seq["prod"][b],
            mean=per_seq["mean"][b],
            last=per_seq["last"][b],
            first_error=first_error[b] if r.step_ends else None,
            steps_dropped=r.steps_dropped,
            prompt_tokens_dropped=r.prompt_tokens_dropped,
        )
        for b, (r, probs) in enumerate(zip(rows, scores.per_sequence()))
    ]
