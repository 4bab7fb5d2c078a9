"""Reading training rows from JSONL, JSON, Parquet or in-memory rows (a ``datasets.Dataset``, a list of
dicts), converting them to :class:`StepExample` and validating every one before training starts."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Union

from .formats import (
    AFTER_ERROR_POLICIES,
    NEUTRAL_POLICIES,
    RecordDropped,
    StepExample,
    check_choice,
    from_math_shepherd,
    from_prm800k,
    from_prm800k_critic,
    from_processbench,
    from_trl,
)

# The columns that identify each format; auto-detection needs exactly one match on the first row.
FORMAT_COLUMNS = {
    "trl": frozenset({"prompt", "completions", "labels"}),
    "processbench": frozenset({"problem", "steps", "label"}),
    "prm800k": frozenset({"question", "label"}),
    "math_shepherd": frozenset({"input", "label"}),
    "prm800k_critic": frozenset({"instruction", "responses", "next_response", "rating"}),
}
BAD_ROW_POLICIES = ("error", "skip")

Source = Union[str, os.PathLike, Iterable[Mapping]]


@dataclass
class LoadResult:
    """Examples of a source, and the rows left out as ``(where, reason)``: rows a labelling policy drops
    (always) and bad rows (with ``on_bad_row="skip"``). ``where`` is ``file:line`` (JSONL), ``file[index]``
    (JSON, Parquet) or ``row N`` (in-memory rows)."""

    examples: list[StepExample]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def load_step_examples(
    source: Source,
    format: str = "auto",
    *,
    neutral: str = "positive",
    skip_flagged: bool = True,
    skip_screening: bool = True,
    alternatives: bool = False,
    after_error: str = "negative",
    on_bad_row: str = "error",
) -> LoadResult:
    """Reads, converts and validates every row of ``source``.

    Args:
        source: a ``.jsonl``, ``.json`` (an array of rows) or ``.parquet`` path, or rows in memory (a
            ``datasets.Dataset`` or any iterable of dicts).
        format: ``trl``, ``processbench``, ``prm800k`` (raw records), ``prm800k_critic`` (the denormalised
            stepwise-critique rows), ``math_shepherd``, or ``auto`` (from the first row's columns).
        neutral: PRM800K neutral (0) ratings: ``positive``, ``negative`` or ``skip`` (see
            :func:`from_prm800k`).
        skip_flagged: drop PRM800K records whose labeller gave up or reported a bad problem.
        skip_screening: drop PRM800K initial-screening records (generation -1).
        alternatives: also an example per rated PRM800K completion the labeller did not follow.
        after_error: ProcessBench steps after the first error: ``negative`` or ``truncate``.
        on_bad_row: ``error`` raises a ValueError naming the first bad row; ``skip`` leaves bad rows out and
            lists them in :attr:`LoadResult.skipped`.

    Raises:
        ValueError: a bad row (with ``on_bad_row="error"``), an unreadable file, a format that cannot be
            detected, or a source with no usable example.
    """
    # Options are checked before any row is read: a bad option would otherwise fail (or skip) every row.
    check_choice("neutral", neutral, NEUTRAL_POLICIES)
    check_choice("after_error", after_error, AFTER_ERROR_POLICIES)
    check_choice("on_bad_row", on_bad_row, BAD_ROW_POLICIES)
    check_choice("format", format, ("auto", *FORMAT_COLUMNS))
    converters: dict[str, Callable[[Mapping, int], list[StepExample]]] = {
        "trl": _one_example(from_trl),
        "processbench": _one_example(from_processbench, after_error=after_error),
        "prm800k": partial(
            from_prm800k,
            neutral=neutral,
            skip_flagged=skip_flagged,
            skip_screening=skip_screening,
            alternatives=alternatives,
        ),
        "prm800k_critic": _one_example(from_prm800k_critic, neutral=neutral),
        "math_shepherd": _one_example(from_math_shepherd),
    }
    convert = None if format == "auto" else converters[format]
    result = LoadResult([])
    for where, index, row in _rows(source):
        if convert is None and isinstance(row, Mapping):
            # A detection failure means a wrong file or format, not a bad row: never skipped.
            convert = converters[detect_format(row, where)]
        try:
            if isinstance(row, ValueError):
                raise row
            if not isinstance(row, Mapping):
                raise ValueError(f"expected an object, got {type(row).__name__}")
            result.examples += convert(row, index)
        except RecordDropped as why:
            result.skipped.append((where, str(why)))
        except ValueError as err:
            if on_bad_row == "error":
                raise ValueError(f"{where}: {err}") from err
            result.skipped.append((where, str(err)))
    if not result.examples:
        raise ValueError(f"{_describe(source)}: no usable example ({len(result.skipped)} rows left out)")
    return result


def detect_format(row: Mapping, where: str = "first row") -> str:
    """The one format whose identifying columns the row has."""
    matches = [name for name, columns in FORMAT_COLUMNS.items() if columns <= row.keys()]
    if len(matches) != 1:
        found = "several formats: " + ", ".join(matches) if matches else "no known format"
        raise ValueError(
            f"{where}: columns {sorted(row.keys())} match {found}; pass format= one of {list(FORMAT_COLUMNS)}"
        )
    return matches[0]


def _one_example(
    convert: Callable[..., StepExample], **options: Any
) -> Callable[[Mapping, int], list[StepExample]]:
    """A converter of one example per row, as one that returns a list (PRM800K records give several)."""
    return lambda row, index: [convert(row, index, **options)]


def _describe(source: Source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__


def _rows(source: Source) -> Iterator[tuple[str, int, Any]]:
    """``(where, 0-based index, row)`` for every row; a row that cannot be decoded is a ValueError."""
    if isinstance(source, Mapping):
        raise TypeError(
            "source is a mapping (one row, or a DatasetDict?): pass a path, a dataset split or a list of rows"
        )
    if not isinstance(source, (str, os.PathLike)):
        for index, row in enumerate(source):
            yield f"row {index}", index, row
        return
    path = Path(source)
    readers = {".jsonl": _jsonl_rows, ".json": _json_rows, ".parquet": _parquet_rows}
    if path.suffix not in readers:
        raise ValueError(f"{path}: unknown file type {path.suffix!r}; expected one of {list(readers)}")
    yield from readers[path.suffix](path)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, int, Any]]:
    # Bytes decoded line by line, so a non-UTF-8 byte names its line instead of ending the whole file.
    with open(path, "rb") as f:
        for index, raw in enumerate(f):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:  # a ValueError too: caught first
                row = ValueError(f"not UTF-8: {err}")
            except ValueError as err:
                row = ValueError(f"not valid JSON: {err}")
            yield f"{path}:{index + 1}", index, row


def _json_rows(path: Path) -> Iterator[tuple[str, int, Any]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as err:  # one document: a bad byte or syntax error leaves no row to name
        raise ValueError(f"{path}: not a UTF-8 JSON file: {err}") from err
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    for index, row in enumerate(data):
        yield f"{path}[{index}]", index, row


def _parquet_rows(path: Path) -> Iterator[tuple[str, int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") from err
    rows = (row for batch in pq.ParquetFile(path).iter_batches() for row in batch.to_pylist())
    for index, row in enumerate(rows):
        yield f"{path}[{index}]", index, row
