"""Row files in and out of Ray Data for the ``--ray`` commands.

Reading keeps what the one-process commands know about a row: its file and its line (JSONL) or 1-based row
(Parquet), so a bad row is named exactly as ``fastprm score`` names it. Each row travels as
``{path, line, raw, error}``: ``raw`` is the row's JSON text (a Parquet row is converted to JSON), ``error``
says why a Parquet row cannot be (a value JSON has no type for). Writing puts the workers' output lines into
shards: JSONL shards hold exactly the lines ``fastprm score`` writes, Parquet shards the same records.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from ray.data.block import BlockAccessor
from ray.data.datasource import BlockBasedFileDatasink, FileBasedDatasource, FilenameProvider

FORMATS = ("jsonl", "parquet")
_EXTENSIONS = {"jsonl": ["jsonl", "json"], "parquet": ["parquet"]}
_ROWS_PER_BLOCK = 4096  # rows of one read block: small enough to spread a file over the workers
ROW_SCHEMA = pa.schema(
    [("path", pa.string()), ("line", pa.int64()), ("raw", pa.binary()), ("error", pa.string())]
)


def input_format(paths: list[str]) -> str:
    """``jsonl`` or ``parquet``, from the files' (or the first file in a folder's) extension; a ValueError
    naming the path when it is neither or the inputs mix them."""
    found = set()
    for path in paths:
        p = Path(path)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        kinds = {k for f in files for k, exts in _EXTENSIONS.items() if f.suffix.lstrip(".") in exts}
        if not kinds:
            raise ValueError(f"--input {path}: no .jsonl, .json or .parquet files")
        found |= kinds
    if len(found) > 1:
        raise ValueError("--input mixes JSONL and Parquet files; give one kind")
    return found.pop()


class RowFiles(FileBasedDatasource):
    """JSONL or Parquet files as rows ``{path, line, raw, error}`` (:data:`ROW_SCHEMA`), blank JSONL lines
    skipped as ``fastprm score`` skips them."""

    def __init__(self, paths: list[str], file_format: str, **kwargs):
        super().__init__(paths, file_extensions=_EXTENSIONS[file_format], **kwargs)
        self.file_format = file_format

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        rows = _jsonl_rows(f) if self.file_format == "jsonl" else _parquet_rows(f)
        block: list[tuple[int, bytes, str | None]] = []
        for row in rows:
            block.append(row)
            if len(block) == _ROWS_PER_BLOCK:
                yield _row_table(path, block)
                block = []
        if block:
            yield _row_table(path, block)


def _jsonl_rows(f: pa.NativeFile) -> Iterator[tuple[int, bytes, str | None]]:
    for line_no, raw in enumerate(f.readall().split(b"\n"), start=1):
        if raw.strip():
            yield line_no, raw, None


def _parquet_rows(f: pa.NativeFile) -> Iterator[tuple[int, bytes, str | None]]:
    import pyarrow.parquet as pq

    row_no = 0
    # Ray hands a stream; Parquet needs to seek (its footer comes first), so the file is read into memory.
    for batch in pq.ParquetFile(pa.BufferReader(f.readall())).iter_batches(batch_size=_ROWS_PER_BLOCK):
        for record in batch.to_pylist():
            row_no += 1
            try:
                yield row_no, json.dumps(record, ensure_ascii=False, default=_json_value).encode(), None
            except (TypeError, ValueError) as err:  # bytes, NaN... : the row is bad, named by its number
                yield row_no, b"", f"cannot be read as JSON: {err}"


def _json_value(value: Any) -> Any:
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    raise TypeError(f"a {type(value).__name__} value")


def _row_table(path: str, rows: list[tuple[int, bytes, str | None]]) -> pa.Table:
    lines, raws, errors = zip(*rows)
    return pa.Table.from_arrays(
        [pa.array([path] * len(rows)), pa.array(lines), pa.array(raws, pa.binary()), pa.array(errors)],
        schema=ROW_SCHEMA,
    )


class _Shards(FilenameProvider):
    """``part-000007.jsonl``: shards numbered by write task (the folder is new, so no other run's names)."""

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"part-{task_index:06d}.{self.file_format}"


SCORES_TYPE = pa.struct(
    [("step_scores", pa.list_(pa.float64()))]
    + [(name, pa.float64()) for name in ("min", "prod", "mean", "last")]
    + [(name, pa.int64()) for name in ("first_error", "steps_dropped", "prompt_tokens_dropped")]
)  # fastprm.scoring.SolutionScores, fixed so that every shard has the same type whatever its values


SCORE_COLUMNS = {"scores": SCORES_TYPE, "error": pa.string()}
LABEL_COLUMNS = {
    "labels": pa.list_(pa.float64()),
    "soft_labels": pa.list_(pa.float64()),
    "hard_labels": pa.list_(pa.bool_()),
    "rollouts": pa.list_(pa.int64()),
    "first_error": pa.int64(),
    "error": pa.string(),
}  # fastprm.labeling.rows.labeled_record's fields whose values alone may not say their type


def parquet_table(records: list[dict], columns: dict[str, pa.DataType]) -> pa.Table:
    """Output records as one table: the union of their fields (not only the first record's), and each of
    ``columns`` always there with its type (null where a record lacks it), so every shard has the same
    schema. A bad row keeps its ``id`` and its ``error`` text, which names its file and line; its separate
    ``line`` field is left out (it would clash with an input column of that name)."""
    rows = [{k: v for k, v in r.items() if k != "line"} if "error" in r else r for r in records]
    table = pa.Table.from_struct_array(pa.array(rows))
    for name, kind in columns.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, table.column(name).cast(kind))
        else:
            table = table.append_column(name, pa.nulls(len(table), kind))
    return table


class OutputShards(BlockBasedFileDatasink):
    """Writes the ``output`` column (one JSON text per row, as ``fastprm score`` writes it) of each block as
    a JSONL or Parquet shard in ``folder`` (Parquet: :func:`parquet_table` with ``parquet_columns``, e.g.
    :data:`SCORE_COLUMNS`); every other column of the block is an integer count that
    :attr:`totals` sums over the run (rows with a bad-row record, tokens scored...)."""

    def __init__(self, folder: str, file_format: str, parquet_columns: dict[str, pa.DataType]):
        super().__init__(folder, file_format=file_format, filename_provider=_Shards(file_format=file_format))
        self.parquet_columns = parquet_columns
        self.totals: dict[str, int] = {}

    def write_block_to_file(self, block: BlockAccessor, file: pa.NativeFile) -> None:
        lines = block.to_arrow().column("output").to_pylist()
        if self.file_format == "jsonl":
            file.write("".join(line + "\n" for line in lines).encode())
        else:
            import pyarrow.parquet as pq

            pq.write_table(parquet_table([json.loads(line) for line in lines], self.parquet_columns), file)

    def write(self, blocks, ctx) -> dict[str, int]:
        blocks = list(blocks)
        super().write(blocks, ctx)
        counts: dict[str, int] = {}
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            for name in table.column_names:
                if name != "output":
                    counts[name] = counts.get(name, 0) + int(pa.compute.sum(table.column(name)).as_py() or 0)
        return counts

    def on_write_complete(self, write_result) -> None:
        super().on_write_complete(write_result)
        for counts in write_result.write_returns:
            for name, n in (counts or {}).items():
                self.totals[name] = self.totals.get(name, 0) + n
