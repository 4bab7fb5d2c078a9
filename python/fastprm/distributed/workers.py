"""The callable classes Ray Data runs in its actor pool: each actor loads its model (or generator) once in
``__init__`` and then scores or labels one batch per call, with the same functions as the one-process
commands (:func:`fastprm.row_scoring.score_chunk`, :func:`fastprm.labeling.rows.label_chunk`).

Batches are ``pyarrow.Table``s. File rows (:data:`~fastprm.distributed.files.ROW_SCHEMA`) come back as one
``output`` JSON text per row plus count columns the output shards sum (:class:`~.files.OutputShards`);
dataset rows (any columns in a supported row format) come back as the input columns plus ``scores`` and
``error``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import pyarrow as pa

from ..io import BadRow, InputRow, json_text, parse_record, read_row
from .files import SCORES_TYPE

DATASET = "dataset"  # the "file" naming a Dataset row in errors (its rows have no line: its id does)


def use_threads(threads: int) -> None:
    """Torch in this actor uses ``threads`` (its CPU share), and tokenizers none of their own: Ray runs
    several actors side by side, and each taking every core would oversubscribe them."""
    import torch

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    torch.set_num_threads(max(1, threads))


def load_scorer(model: str, load_options: dict, scorer_options: dict):
    """A :class:`~fastprm.scoring.Scorer` of the PRM in ``model`` (``load_options``: convention, dtype as
    a name such as ``"float32"``, device)."""
    import torch

    from ..models import PRM
    from ..scoring import Scorer

    options = dict(load_options)
    if options.get("dtype") is not None:
        options["dtype"] = getattr(torch, options["dtype"])
    return Scorer(PRM.from_pretrained(model, **options), **scorer_options)


def file_rows(batch: pa.Table, split_steps: str | None) -> list[InputRow | BadRow]:
    """The rows of a batch of file rows, parsed exactly as ``fastprm score`` parses its lines."""
    return [
        BadRow(path, line, error) if error is not None else read_row(path, line, raw, split_steps)
        for path, line, raw, error in zip(
            *(batch.column(c).to_pylist() for c in ("path", "line", "raw", "error"))
        )
    ]


def _ms_since(start: float) -> int:
    return round((time.perf_counter() - start) * 1000)


def _output_table(records: Sequence[dict], counts: dict[str, int]) -> pa.Table:
    """``output`` (one JSON line per record) and the batch's counts, carried on its first row (zeros on the
    others) so that summing a column over any set of blocks gives the run's total."""
    columns = {"output": pa.array([json_text(r) for r in records], pa.string())}
    for name, n in counts.items():
        columns[name] = pa.array([n] + [0] * (len(records) - 1), pa.int64())
    return pa.table(columns)


class _ScorerActor:
    """One PRM per actor, loaded once; ``threads``: the torch threads of the actor (its CPU share)."""

    def __init__(
        self,
        model: str,
        load_options: dict,
        scorer_options: dict,
        *,
        split_steps: str | None,
        skip_bad_rows: bool,
        threads: int,
    ):
        start = time.perf_counter()
        use_threads(threads)
        self.scorer = load_scorer(model, load_options, scorer_options)
        self.split_steps, self.skip_bad_rows = split_steps, skip_bad_rows
        self.load_ms = _ms_since(start)  # reported with the actor's first batch (again after a restart)


class ScoreFileRows(_ScorerActor):
    """Scores batches of file rows; ``output`` holds ``fastprm score``'s lines. Besides the rows' counts
    each batch reports ``score_ms`` (parsing, tokenizing and scoring it) and ``load_ms`` (the actor's model
    load, on its first batch), which tell the run's time in the workers from Ray's own."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ..row_scoring import score_chunk

        start = time.perf_counter()
        chunk = file_rows(batch, self.split_steps)
        records, counts = score_chunk(self.scorer, chunk, skip_bad_rows=self.skip_bad_rows)
        counts.update(score_ms=_ms_since(start), load_ms=self.load_ms)
        self.load_ms = 0
        return _output_table(records, counts)


class LabelFileRows:
    """Labels batches of file rows by Monte Carlo rollouts with one generator per actor (``generator_args``:
    the arguments of :func:`fastprm.search.load.load_generator`); ``output`` holds ``fastprm label``'s
    lines."""

    def __init__(self, generator_args: dict, options, *, split_steps: str | None, threads: int):
        from ..search.load import load_generator

        use_threads(threads)
        self.generator = load_generator(**generator_args)
        self.options, self.split_steps = options, split_steps

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ..labeling.rows import label_chunk

        records, counts = label_chunk(self.generator, file_rows(batch, self.split_steps), self.options)
        return _output_table(records, counts)


class ScoreRecords(_ScorerActor):
    """Scores batches of a user's Dataset (columns in a supported row format): the input columns come back
    with ``scores`` (:data:`~.files.SCORES_TYPE`, null for a bad row), ``error`` (why a row could not be
    scored, naming it ``dataset:<its id or position>``, else null) and, when ``split_steps`` split a
    ``solution``, ``steps``. Without ``skip_bad_rows`` a bad row raises :class:`BadRow` and fails the run."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ..row_scoring import score_chunk

        records = batch.to_pylist()
        rows = [parse_record(DATASET, _row_name(r, k), r, self.split_steps) for k, r in enumerate(records)]
        out, _ = score_chunk(self.scorer, rows, skip_bad_rows=self.skip_bad_rows)
        if self.split_steps:  # say what was scored: the steps each 'solution' was split into
            steps = pa.array([_steps_of(r, rec) for r, rec in zip(rows, records)], pa.list_(pa.string()))
            if "steps" in batch.column_names:
                batch = batch.set_column(batch.column_names.index("steps"), "steps", steps)
            else:
                batch = batch.append_column("steps", steps)
        batch = batch.append_column("scores", pa.array([o.get("scores") for o in out], SCORES_TYPE))
        return batch.append_column("error", pa.array([o.get("error") for o in out], pa.string()))


def _steps_of(row: InputRow | BadRow, record: dict) -> list[str] | None:
    """The row's steps: those split from its ``solution`` when it had no steps of its own."""
    own = record.get("steps")
    from_solution = (
        own is None and record.get("completions") is None and isinstance(record.get("solution"), str)
    )
    return row.steps if from_solution and isinstance(row, InputRow) else own


def _row_name(record: object, position: int) -> object:
    """How an error names a dataset row: its ``id`` when it has one, else its position in the batch."""
    return record.get("id", f"#{position} of its batch") if isinstance(record, dict) else f"#{position}"
