"""One converter per source format: a raw row -> :class:`StepExample`.

Converters raise ``ValueError`` for a malformed row (the loader adds where the row is) and
:class:`RecordDropped` for a well-formed row that a labelling policy leaves out, so the loader can tell a
bad file from a deliberate filter.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NEUTRAL_POLICIES = ("positive", "negative", "skip")
AFTER_ERROR_POLICIES = ("negative", "truncate")
# PRM800K finish reasons of a labeller who stopped without finishing the labelling (README of openai/prm800k).
UNFINISHED_REASONS = ("bad_problem", "give_up")
MATH_SHEPHERD_TAG = "ки"
MATH_SHEPHERD_LABELS = {"+": 1.0, "-": 0.0}
MATH_SHEPHERD_FIRST_STEP = "Step 1:"


@dataclass
class StepExample:
    """One training example: a prompt, its solution steps and one label per step.

    Labels are floats in [0, 1]: hard 0/1 labels or soft ones (e.g. Monte Carlo success rates), kept as they
    are. ``source_row`` is the 0-based position of the row in its source (a JSONL file's 0-based line index,
    so blank lines count). Construction validates every field, so an example that exists is trainable.
    """

    prompt: str
    steps: list[str]
    labels: list[float]
    source_row: int

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ValueError(f"the prompt must be a string, got {type(self.prompt).__name__}")
        if not isinstance(self.steps, list) or not isinstance(self.labels, list):
            raise ValueError("steps and labels must be lists")
        if not self.steps:
            raise ValueError("the step list is empty")
        for i, step in enumerate(self.steps):
            if not isinstance(step, str):
                raise ValueError(f"step {i} must be a string, got {type(step).__name__}")
            if not step.strip():
                raise ValueError(f"step {i} is empty")
        if len(self.labels) != len(self.steps):
            raise ValueError(f"{len(self.labels)} labels for {len(self.steps)} steps")
        self.labels = [_label(i, x) for i, x in enumerate(self.labels)]


def _label(i: int, value: Any) -> float:
    """A label as a float in [0, 1]; bools and ints become 0.0/1.0, soft floats stay as they are."""
    # A string "1" is a sign of a broken export, not a label: refuse it rather than float() it.
    if not isinstance(value, (bool, numbers.Real)):
        raise ValueError(f"label {i} must be a number or bool, got {type(value).__name__} {value!r}")
    label = float(value)
    if math.isnan(label) or not 0.0 <= label <= 1.0:
        raise ValueError(f"label {i} is {value!r}, outside [0, 1]")
    return label


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """A ValueError naming the option when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


class RecordDropped(Exception):
    """A well-formed record that the chosen labelling policy leaves out; the message says why."""


def _field(row: Mapping, name: str, kind: type | tuple[type, ...]) -> Any:
    """``row[name]``, with a ValueError naming the field when it is missing or of the wrong type."""
    if name not in row:
        raise ValueError(f"missing field {name!r}")
    value = row[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ValueError(f"field {name!r} has type {type(value).__name__}")
    return value


def from_trl(row: Mapping, source_row: int) -> StepExample:
    """TRL stepwise-supervision row: ``prompt``, ``completions`` (the steps), ``labels`` (bool, int or float)."""
    return StepExample(
        _field(row, "prompt", str), _field(row, "completions", list), _field(row, "labels", list), source_row
    )


def from_processbench(row: Mapping, source_row: int, after_error: str = "negative") -> StepExample:
    """ProcessBench row: ``problem``, ``steps``, ``label`` = 0-based index of the first wrong step, -1 if none.

    Steps before the first error are labelled 1 and the first error 0. The steps after it were never judged:
    ``after_error="negative"`` labels them 0 (a "stop at the first error" loss ignores them anyway) and
    ``"truncate"`` drops them.
    """
    check_choice("after_error", after_error, AFTER_ERROR_POLICIES)
    steps = _field(row, "steps", list)
    first_error = _field(row, "label", int)
    if not -1 <= first_error < len(steps):
        raise ValueError(f"label {first_error} is not -1 or a step index of {len(steps)} steps")
    if first_error == -1:
        labels = [1.0] * len(steps)
    else:
        if after_error == "truncate":
            steps = steps[: first_error + 1]
        labels = [1.0] * first_error + [0.0] * (len(steps) - first_error)
    return StepExample(_field(row, "problem", str), steps, labels, source_row)


def from_math_shepherd(row: Mapping, source_row: int) -> StepExample:
    """Math-Shepherd row: ``input`` = question + steps, each step ending in the tag 'ки'; ``label`` = the same
    text with each tag replaced by '+' (good) or '-' (bad).

    The question is the text before the "Step 1:" that opens the first tagged step (searched backwards from
    the first tag, so a question that itself mentions "Step 1:" stays whole). Steps keep their "Step k:"
    prefixes, as the Math-Shepherd PRM saw them.
    """
    text = _field(row, "input", str)
    label_text = _field(row, "label", str)
    pieces = text.split(MATH_SHEPHERD_TAG)
    if len(pieces) < 2:
        raise ValueError(f"'input' has no step tag {MATH_SHEPHERD_TAG!r}")
    if pieces[-1].strip():
        raise ValueError(f"text after the last step tag has no label: {pieces[-1][:40]!r}")
    # The label text is the input with each 2-character tag replaced by one character: read those
    # characters at the tags' positions, and check the text between them is the same.
    labels, offset = [], 0
    for piece in pieces[:-1]:
        end = offset + len(piece)
        if label_text[offset:end] != piece or end >= len(label_text):
            raise ValueError(f"'label' differs from 'input' near character {offset}")
        mark = label_text[end]
        if mark not in MATH_SHEPHERD_LABELS:
            raise ValueError(f"step {len(labels)} is marked {mark!r}, not '+' or '-'")
        labels.append(MATH_SHEPHERD_LABELS[mark])
        offset = end + 1
    if label_text[offset:].strip():
        raise ValueError(f"'label' differs from 'input' near character {offset}")
    question_end = pieces[0].rfind(MATH_SHEPHERD_FIRST_STEP)
    if question_end < 0:
        raise ValueError(
            f"no {MATH_SHEPHERD_FIRST_STEP!r} before the first step tag: cannot find the question"
        )
    steps = [pieces[0][question_end:], *pieces[1:-1]]
    return StepExample(pieces[0][:question_end].strip(), [s.strip() for s in steps], labels, source_row)


# Label of each PRM800K rating; a neutral (0) rating is labelled by the policy, None meaning "leave out".
_RATING_LABELS = {1: 1.0, -1: 0.0}
_NEUTRAL_LABELS = {"positive": 1.0, "negative": 0.0, "skip": None}


def from_prm800k(
    record: Mapping,
    source_row: int,
    neutral: str = "positive",
    skip_flagged: bool = True,
    skip_screening: bool = True,
) -> StepExample:
    """Raw PRM800K record (phase 1 or 2): the labelled trajectory, one step per entry of ``label.steps``.

    Each step is the completion the labeller chose to continue with (``chosen_completion``) or, when every
    completion was rated -1, the labeller's own ``human_completion`` (a +1 step by the labelling rules). A
    step with neither ends the trajectory: its first completion rated -1, the error that stopped the labeller
    (in phase 2 the pre-generated step), is the last step; without one (a labeller who gave up) nothing is
    added. Unchosen alternatives are not used.

    Ratings: +1 -> 1, -1 -> 0, and 0 ("fine but no progress") by ``neutral``: ``"positive"`` (1, the usual
    practice since "Let's Verify Step by Step"), ``"negative"`` (0) or ``"skip"`` (the step is left out of
    the example, text included, as an example has no unlabelled steps).

    Raises :class:`RecordDropped` for a record with finish_reason ``bad_problem`` / ``give_up`` when
    ``skip_flagged``, for an initial-screening record (generation -1: 30 questions every labeller answered
    to be screened, so repeated and from labellers not yet admitted) when ``skip_screening``, and for a
    record that leaves no step to train on.
    """
    check_choice("neutral", neutral, NEUTRAL_POLICIES)
    question = _field(record, "question", dict)
    label = _field(record, "label", dict)
    if skip_screening and (record.get("is_initial_screening_question") or record.get("generation") == -1):
        raise RecordDropped("initial screening question (generation -1)")
    finish_reason = label.get("finish_reason")
    if skip_flagged and finish_reason in UNFINISHED_REASONS:
        raise RecordDropped(f"finish_reason {finish_reason!r}")
    steps, labels = [], []
    for i, step in enumerate(_field(label, "steps", list)):
        followed = _prm800k_step(i, step)
        if followed is None:
            break
        text, rating, ends = followed
        value = _RATING_LABELS[rating] if rating else _NEUTRAL_LABELS[neutral]
        if value is not None:
            steps.append(text)
            labels.append(value)
        if ends:
            break
    if not steps:
        raise RecordDropped(f"no labelled step to train on (finish_reason {finish_reason!r})")
    return StepExample(_field(question, "problem", str), steps, labels, source_row)


def _prm800k_step(i: int, step: Any) -> tuple[str, int, bool] | None:
    """(text, rating, ends the trajectory) of the step the labeller followed at ``label.steps[i]``, or None
    when the trajectory ended there without a rated error."""
    where = f"label.steps[{i}]"
    if not isinstance(step, dict):
        raise ValueError(f"{where} is not an object")
    completions = step.get("completions") or []  # null on the step where a labeller gave up
    if not isinstance(completions, list) or not all(isinstance(c, dict) for c in completions):
        raise ValueError(f"{where}.completions is not a list of objects")
    chosen = step.get("chosen_completion")
    human = step.get("human_completion")
    if chosen is not None:
        if not isinstance(chosen, int) or not 0 <= chosen < len(completions):
            raise ValueError(f"{where}.chosen_completion {chosen!r} is not a completion index")
        followed, rating, ends = completions[chosen], completions[chosen].get("rating"), False
    elif human is not None:
        followed, rating, ends = human, 1, False
    else:
        followed = next((c for c in completions if c.get("rating") == -1), None)
        if followed is None:
            return None
        rating, ends = -1, True
    if not isinstance(followed, dict) or not isinstance(followed.get("text"), str):
        raise ValueError(f"{where}: the followed completion has no text")
    if isinstance(rating, bool) or rating not in (-1, 0, 1):
        raise ValueError(f"{where}: the followed completion is rated {rating!r}, not -1, 0 or 1")
    return followed["text"], rating, ends
