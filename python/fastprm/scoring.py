"""Batched step scoring: token-budget batches of length-sorted rows, one fused head pass per batch."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch

from .batching import LAYOUTS, default_layout, shared_prefix_length, token_budget_batches
from .models.prm import PRM
from .models.step_rows import compile_backbone
from .packing import cu_seqlens, pack_rows, pad_rows
from .tokenization import StepTokenizer, TokenizedSolution


@dataclass
class SolutionScores:
    """Scores of one solution.

    Attributes:
        step_scores: P(step good) for every scored step, in order.
        min, prod, mean, last: aggregates over the steps (NaN when no step was scored).
        first_error: index of the first step whose score is below the threshold, -1 when none.
        steps_dropped / prompt_tokens_dropped: what truncation removed (0 when nothing).
    """

    step_scores: list[float]
    min: float
    prod: float
    mean: float
    last: float
    first_error: int
    steps_dropped: int = 0
    prompt_tokens_dropped: int = 0

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


class Scorer:
    """Scores (problem, steps) rows with a :class:`~fastprm.models.prm.PRM`.

    Args:
        prm: the model.
        batch_tokens: token budget of one backbone batch (rows x longest row).
        max_length: longest row; default the backbone's ``max_position_embeddings``.
        truncation: ``error`` (default), ``left-truncate-prompt`` or ``drop-steps``.
        threshold: ``first_error`` threshold.
        layout: ``rows`` (one unpadded forward per row), ``packed`` (each batch as one [1, N] varlen
            sequence with per-row position_ids) or ``padded`` (right-padded [B, T] with a mask); default
            :func:`default_layout`. Step scores do not depend on it (tested to 1e-5 in fp32).
        share_prefix: in the ``rows`` layout, compute the token prefix that every row of a batch starts with
            (:func:`shared_prefix_length`) once and reuse its keys and values (default: on, unless compiling).
        compile: run the backbone's layers through ``torch.compile(dynamic=True)`` (see
            :func:`~fastprm.models.step_rows.compile_backbone`). On this project's AVX2 CPU it is no faster than
            eager (the backbone spends ~90% of its time in GEMMs, which compilation does not speed up).
    """

    OPTIONS = ("batch_tokens", "max_length", "truncation", "threshold", "layout", "share_prefix", "compile")

    def __init__(
        self,
        prm: PRM,
        batch_tokens: int = 16384,
        max_length: int | None = None,
        truncation: str = "error",
        threshold: float = 0.5,
        layout: str | None = None,
        share_prefix: bool | None = None,
        compile: bool = False,
    ):
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        self.prm = prm
        if compile:
            compile_backbone(prm.backbone)
        self.layout = layout or default_layout(prm)
        self.share_prefix = not compile if share_prefix is None else share_prefix
        self.batch_tokens = batch_tokens
        self.threshold = threshold
        if max_length is None:
            max_length = getattr(prm.backbone.config, "max_position_embeddings", None)
        self.tokenizer = StepTokenizer(
            prm.tokenizer, prm.convention, max_length=max_length, truncation=truncation
        )
        self.pad_id = prm.tokenizer.pad_token_id if prm.tokenizer.pad_token_id is not None else 0

    def score(self, problems: Sequence[str], solutions: Sequence[Sequence[str]]) -> list[SolutionScores]:
        """Per-solution step scores, in input order."""
        return self.score_tokenized(self.tokenizer(problems, solutions))

    @torch.inference_mode()
    def score_tokenized(self, rows: Sequence[TokenizedSolution]) -> list[SolutionScores]:
        results: list[SolutionScores | None] = [None] * len(rows)
        for batch in token_budget_batches([len(r.input_ids) for r in rows], self.batch_tokens):
            for i, scores in zip(batch, self._score_batch([rows[i] for i in batch])):
                results[i] = scores
        return results  # type: ignore[return-value]

    def _step_hidden(self, rows: list[TokenizedSolution]) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states [K, H] of the step rows of a batch of rows, and cu_steps [B + 1]."""
        ids, ends = [r.input_ids for r in rows], [r.step_ends for r in rows]
        device = self.prm.device
        if self.layout == "rows":
            shared = shared_prefix_length(ids, ends) if self.share_prefix and len(ids) > 1 else 0
            prefix = self.prm.prefix_cache(torch.tensor([ids[0][:shared]], device=device)) if shared else None
            hidden = torch.cat(
                [
                    self.prm.step_hidden_states(
                        torch.tensor([row[shared:]], device=device),
                        torch.tensor(e, dtype=torch.long, device=device) - shared,
                        prefix=prefix,
                    )
                    for row, e in zip(ids, ends)
                ]
            )
            return hidden, cu_seqlens([len(e) for e in ends]).to(device)
        if self.layout == "packed":
            batch = pack_rows(ids, ends).to(device)
            hidden = self.prm.step_hidden_states(
                batch.input_ids, batch.step_index, position_ids=batch.position_ids
            )
        else:
            batch = pad_rows(ids, ends, self.pad_id).to(device)
            hidden = self.prm.step_hidden_states(batch.input_ids, batch.step_index, batch.attention_mask)
        return hidden, batch.cu_steps

    def _score_batch(self, rows: list[TokenizedSolution]) -> Iterator[SolutionScores]:
        hidden, cu_steps = self._step_hidden(rows)
        step_index = torch.arange(hidden.shape[0], device=hidden.device)
        out = self.prm.score_hidden(hidden, step_index, cu_steps, self.threshold)
        per_seq = {k: getattr(out, k).float().cpu().tolist() for k in ("min", "prod", "mean", "last")}
        first_error = out.first_error.cpu().tolist()
        for b, (r, probs) in enumerate(zip(rows, out.per_sequence())):
            yield SolutionScores(
                step_scores=probs.float().cpu().tolist(),
                min=per_seq["min"][b],
                prod=per_seq["prod"][b],
                mean=per_seq["mean"][b],
                last=per_seq["last"][b],
                first_error=first_error[b],
                steps_dropped=r.steps_dropped,
                prompt_tokens_dropped=r.prompt_tokens_dropped,
            )
