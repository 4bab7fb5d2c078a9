"""Reading scoring input rows: {problem, steps}, ProcessBench, TRL stepwise, {problem, solution} + split, or
pre-tokenized {input_ids} (find mode)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class BadRow(ValueError):
    """A row that cannot be scored; the message names its line."""


@dataclass
class InputRow:
    """One row to score: text (problem + steps), or pre-tokenized ``input_ids`` whose separators mark steps."""

    line: int
    record: dict
    problem: str = ""
    steps: list[str] | None = None
    input_ids: list[int] | None = None


def row_problem_and_steps(record: dict, split_steps: str | None = None) -> tuple[str, list[str]]:
    """(problem, steps) from one record of any supported format.

    Formats: ``{problem, steps}`` (also ProcessBench rows), TRL stepwise ``{prompt, completions}``, and
    ``{problem, solution}`` when ``split_steps`` (a regex) is given.
    """
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    problem = record.get("problem", record.get("prompt", record.get("question")))
    if not isinstance(problem, str):
        raise ValueError("no 'problem' (or 'prompt' / 'question') string")
    steps = record.get("steps", record.get("completions"))
    if steps is None and "solution" in record:
        if split_steps is None:
            raise ValueError("row has 'solution' but no steps: pass --split-steps to split it")
        if not isinstance(record["solution"], str):
            raise ValueError("'solution' must be a string")
        steps = [s.strip() for s in re.split(split_steps, record["solution"]) if s.strip()]
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise ValueError("no 'steps' (or 'completions') list of strings")
    if not steps:
        raise ValueError("the solution has no steps")
    return problem, steps


def read_rows(
    path: str | Path, split_steps: str | None = None, skip_bad_rows: bool = False
) -> Iterator[InputRow | BadRow]:
    """Streams rows of a JSONL file (1-based line numbers). A bad row raises :class:`BadRow`, or is yielded
    as one when ``skip_bad_rows``."""
    with open(path, "rb") as f:  # decoded per line, so one bad byte names its line instead of ending the file
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                if isinstance(record, dict) and "input_ids" in record:
                    yield InputRow(line_no, record, input_ids=record["input_ids"])
                    continue
                problem, steps = row_problem_and_steps(record, split_steps)
            except (ValueError, UnicodeDecodeError) as err:
                yield BadRow(f"{path}:{line_no}: {err}")
                continue
            yield InputRow(line_no, record, problem, steps)
