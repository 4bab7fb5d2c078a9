"""Scoring rows read from files, a chunk at a time: tokenize (a bad row named by its file and line), score,
and the output records. ``fastprm score`` runs it in one process and each Ray worker of ``fastprm score
--ray`` (:mod:`fastprm.distributed`) on its batches, so both write the same lines for the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .io import BadRow, InputRow
from .tokenization import RowError

if TYPE_CHECKING:
    from .scoring import Scorer
    from .tokenization import StepTokenizer, TokenizedSolution


def score_chunk(
    scorer: Scorer, chunk: Sequence[InputRow | BadRow], *, skip_bad_rows: bool
) -> tuple[list[dict], dict[str, int]]:
    """Scores the good rows of ``chunk`` together (prefixes shared by the scorer) and returns one output
    record per row, in order, with the counts ``rows``, ``tokens``, ``bad`` and ``unscored``.

    A good row's record is its input record plus ``scores`` (:meth:`SolutionScores.to_dict`); a bad row
    (unreadable, malformed, too long...) is raised, the first of the chunk, unless ``skip_bad_rows``: then
    its :meth:`BadRow.record` (error, line, id) takes its place.
    """
    tokenized = _tokenize_chunk(scorer.tokenizer, chunk)
    bad = [r for r in tokenized if isinstance(r, BadRow)]
    if bad and not skip_bad_rows:
        raise bad[0]
    good = [r[1] for r in tokenized if not isinstance(r, BadRow)]
    scores = scorer.score_tokenized(good)
    scores_of_good = iter(scores)
    records = [
        r.record() if isinstance(r, BadRow) else {**r[0].record, "scores": next(scores_of_good).to_dict()}
        for r in tokenized
    ]
    counts = {
        "rows": len(good),
        "tokens": sum(len(t.input_ids) for t in good),
        "bad": len(bad),
        "unscored": sum(not s.step_scores for s in scores),
    }
    return records, counts


def _tokenize_chunk(
    tokenizer: StepTokenizer, chunk: Sequence[InputRow | BadRow]
) -> list[tuple[InputRow, TokenizedSolution] | BadRow]:
    """Each row as (row, tokenized), or a BadRow naming its line (e.g. too long for max_length).

    Text rows are tokenized in one batch; only when that fails are they retried one by one to find the bad
    ones. Pre-tokenized rows go through find mode (:meth:`~fastprm.tokenization.StepTokenizer.from_ids`).
    """
    text = [r for r in chunk if isinstance(r, InputRow) and r.input_ids is None]
    try:
        batched = iter(tokenizer([r.problem for r in text], [r.steps for r in text]))
    except ValueError:
        batched = None
    out = []
    for r in chunk:
        if isinstance(r, BadRow):
            out.append(r)
        elif r.input_ids is None and batched is not None:
            out.append((r, next(batched)))
        else:
            out.append(_tokenize_row(tokenizer, r))
    return out


def _tokenize_row(tokenizer: StepTokenizer, row: InputRow) -> tuple[InputRow, TokenizedSolution] | BadRow:
    try:
        if row.input_ids is not None:
            return row, tokenizer.from_ids(row.input_ids, row.line)
        return row, tokenizer([row.problem], [row.steps], first_row=row.line)[0]
    except ValueError as err:  # a RowError's reason leaves out the row number, which the BadRow gives
        return row.bad(err.reason if isinstance(err, RowError) else str(err))
