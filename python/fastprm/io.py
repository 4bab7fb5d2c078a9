"""Files in and out of the command line.

Reading scoring input rows ({problem, steps}, ProcessBench, TRL stepwise, {problem, solution} + split, or
pre-tokenized {input_ids} for find mode), checking paths before any work starts, writing an output through
a temporary file renamed over it at the end, and JSON that strict parsers read (no NaN).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


class BadRow(ValueError):
    """A row that cannot be scored: ``str(err)`` is ``"{path}:{line}: {reason}"``, naming the row once."""

    def __init__(self, path: str | Path, line: int, reason: str, row_id: object = None):
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason
        self.row_id = row_id

    def __reduce__(self):  # pickled with its fields (Ray sends a worker's BadRow to the driver)
        return BadRow, (self.path, self.line, self.reason, self.row_id)

    def record(self) -> dict:
        """The line written in its place by ``--skip-bad-rows``: the error, its line and the row's id."""
        return {"error": str(self), "line": self.line, **({} if self.row_id is None else {"id": self.row_id})}


@dataclass
class InputRow:
    """One row to score: text (problem + steps), or pre-tokenized ``input_ids`` whose separators mark steps.

    ``path`` and ``line`` say where it was read (a file and its 1-based line, or row for Parquet); ``record``
    is what the output row repeats: the input row, plus the ``steps`` it was split into when it had a
    ``solution`` and ``--split-steps`` was given.
    """

    path: str | Path
    line: int
    record: dict
    problem: str = ""
    steps: list[str] | None = None
    input_ids: list[int] | None = None

    def bad(self, reason: str) -> BadRow:
        """This row as a :class:`BadRow` for ``reason``."""
        return BadRow(self.path, self.line, reason, self.record.get("id"))


def row_problem_and_steps(record: dict, split_steps: str | None = None) -> tuple[str, list[str]]:
    """(problem, steps) from one record of any supported format.

    Formats: ``{problem, steps}`` (also ProcessBench rows), TRL stepwise ``{prompt, completions}``,
    ``{problem, solution}`` when ``split_steps`` (a regex) is given, and GSM8K's ``{question, answer}``,
    whose worked answer's lines before ``#### N`` are the steps.
    """
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    problem = record.get("problem", record.get("prompt", record.get("question")))
    if not isinstance(problem, str):
        raise ValueError("no 'problem' (or 'prompt' / 'question') string")
    steps = record.get("steps", record.get("completions"))
    answer = record.get("answer")
    if steps is None and "solution" not in record and isinstance(answer, str) and "####" in answer:
        steps = [line.strip() for line in answer.split("####")[0].splitlines() if line.strip()]  # GSM8K
    if steps is None and "solution" in record:
        if split_steps is None:
            raise ValueError("row has 'solution' but no steps: pass --split-steps to split it")
        if not isinstance(record["solution"], str):
            raise ValueError("'solution' must be a string")
        steps = split_solution(record["solution"], split_steps)
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise ValueError("no 'steps' (or 'completions') list of strings")
    if not steps:
        raise ValueError("the solution has no steps")
    return problem, steps


def split_solution(text: str, regex: str) -> list[str]:
    """A solution's text as steps: split where ``regex`` matches, each piece stripped, blank ones dropped."""
    return [text[start:end] for start, end in step_spans(text, regex)]


def step_spans(text: str, regex: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the steps of ``text``: the pieces between matches of ``regex``
    without their outer whitespace; blank pieces dropped."""
    spans, start = [], 0
    for match in [*re.finditer(regex, text), None]:
        end = len(text) if match is None else match.start()
        piece = text[start:end]
        if stripped := piece.strip():
            lead = len(piece) - len(piece.lstrip())
            spans.append((start + lead, start + lead + len(stripped)))
        if match is not None:
            start = match.end()
    return spans


def not_utf8(value: object, where: str = "") -> str | None:
    """Where in a JSON value a string cannot be encoded as UTF-8 (a lone surrogate such as ``"\\ud800"``,
    which JSON escapes allow), e.g. ``'steps'[1]``; None when every string (keys included) can."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "the row"
        return None
    if isinstance(value, dict):
        items = value.items()
        named = lambda k: f"{where}[{k!r}]" if where else repr(k)  # noqa: E731
    elif isinstance(value, list):
        items = enumerate(value)
        named = lambda i: f"{where}[{i}]"  # noqa: E731
    else:
        return None
    for key, item in items:
        found = not_utf8(key, f"a key of {where or 'the row'}") or not_utf8(item, named(key))
        if found:
            return found
    return None


def read_rows(path: str | Path, split_steps: str | None = None) -> Iterator[InputRow | BadRow]:
    """Streams the rows of a JSONL file (1-based line numbers, blank lines skipped); a row that cannot be
    scored is yielded as a :class:`BadRow` naming its line (the caller stops or records it)."""
    with open(path, "rb") as f:  # decoded per line, so one bad byte names its line instead of ending the file
        for line_no, raw in enumerate(f, start=1):
            if raw.strip():
                yield read_row(path, line_no, raw, split_steps)


def read_row(path: str | Path, line_no: int, raw: bytes, split_steps: str | None) -> InputRow | BadRow:
    """One JSON row (``raw``, UTF-8) read at ``path``:``line_no`` as an :class:`InputRow`, or a
    :class:`BadRow` saying why it cannot be scored."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError is a ValueError too
        return BadRow(path, line_no, str(err))
    row_id = record.get("id") if isinstance(record, dict) else None
    bad_text = not_utf8(record)
    if bad_text:
        clean_id = row_id if not_utf8(row_id) is None else None
        return BadRow(path, line_no, f"{bad_text} is not valid Unicode text (a lone surrogate)", clean_id)
    return parse_record(path, line_no, record, split_steps)


def parse_record(
    path: str | Path, line_no: int, record: object, split_steps: str | None
) -> InputRow | BadRow:
    """One decoded row (``record``, from ``path``:``line_no``) of any supported format as an
    :class:`InputRow`, or a :class:`BadRow` saying why it cannot be scored."""
    row_id = record.get("id") if isinstance(record, dict) else None
    try:
        if isinstance(record, dict) and "input_ids" in record:
            return InputRow(path, line_no, record, input_ids=record["input_ids"])
        problem, steps = row_problem_and_steps(record, split_steps)
    except ValueError as err:
        return BadRow(path, line_no, str(err), row_id)
    if "steps" not in record and "completions" not in record:  # split from 'solution': say what was scored
        record = {**record, "steps": steps}
    return InputRow(path, line_no, record, problem, steps)


# -- paths and outputs ------------------------------------------------------------------------------------


def check_folder(path: str | Path, option: str) -> None:
    """A ValueError naming ``option`` when ``path`` is not an existing folder."""
    if not Path(path).is_dir():
        raise ValueError(f"{option} {path}: no such folder")


def check_input_file(path: str | Path, option: str) -> Path:
    """``path`` as a Path; a ValueError naming ``option`` when it is not an existing file."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{option} {path}: no such file")
    if not p.is_file():
        raise ValueError(f"{option} {path}: not a file")
    return p


def check_output_file(path: str | Path, option: str, inputs: Iterable[tuple[str, str | Path]] = ()) -> Path:
    """``path`` as a Path; a ValueError naming ``option`` when its folder does not exist or cannot be
    written, it is a folder, or it is one of ``inputs`` ((option, path) pairs; the same file under any
    spelling or link)."""
    p = Path(path)
    folder = p.absolute().parent
    if p.is_dir():
        raise ValueError(f"{option} {path}: is a folder, not a file")
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: the folder {p.parent} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: the folder {p.parent} is not writable")
    for name, other in inputs:
        if same_file(p, Path(other)):
            raise ValueError(f"{option} {path} is the {name} file: writing it would destroy what is read")
    return p


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (resolved links; the same inode when both exist)."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


class AtomicOutput:
    """A text file written to a temporary file beside ``path`` and renamed over ``path`` (``os.replace``)
    only when the ``with`` block ends without an exception, so ``path`` never holds a partial output.

    After a failure the temporary file is kept when something was written to it (:attr:`partial`) and
    removed when empty; :meth:`failure_note` says which, for the error message.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        fd, name = tempfile.mkstemp(
            dir=self.path.absolute().parent, prefix=self.path.name + ".", suffix=".partial"
        )
        self.partial: Path | None = Path(name)
        self.file = os.fdopen(fd, "w", encoding="utf-8")

    def __enter__(self):
        return self.file

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.file.close()
        if exc_type is None:
            os.chmod(self.partial, _new_file_mode(self.path))  # mkstemp's 0600 would survive the rename
            os.replace(self.partial, self.path)
            self.partial = None
        elif self.partial.stat().st_size == 0:
            self.partial.unlink()
            self.partial = None
        return False

    def failure_note(self) -> str:
        """After a failure: what became of the output, in one clause."""
        kept = f"; what was written before is in {self.partial}" if self.partial else ""
        return f"{self.path} was not written{kept}"


def _new_file_mode(path: Path) -> int:
    """The mode ``path`` has, or the one a new file gets under the process umask."""
    if path.exists():
        return path.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def json_safe(value):
    """``value`` with every NaN and infinity replaced by None (JSON has no such numbers), in nested dicts,
    lists and tuples; the one NaN-to-None rule of the package."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(value, indent: int | None = None) -> str:
    """Strict JSON of ``value`` (:func:`json_safe` first; ``allow_nan=False``, so no NaN can slip through)."""
    return json.dumps(json_safe(value), ensure_ascii=False, allow_nan=False, indent=indent)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (library messages may span several)."""
    return " ".join(str(err).split()) or type(err).__name__
