"""One converter per source format: a raw row -> :class:`StepExample`.

Converters raise ``ValueError`` for a malformed row (the loader adds where the row is) and
:class:`RecordDropped` for a well-formed row that a labelling policy leaves out, so the loader can tell a
bad file from a deliberate filter.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..io import not_utf8

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
        _check_unicode("the prompt", self.prompt)
        if not isinstance(self.steps, list) or not isinstance(self.labels, list):
            raise ValueError("steps and labels must be lists")
        if not self.steps:
            raise ValueError("the step list is empty")
        for i, step in enumerate(self.steps):
            if not isinstance(step, str):
                raise ValueError(f"step {i} must be a string, got {type(step).__name__}")
            if not step.strip():
                raise ValueError(f"step {i} is empty")
            _check_unicode(f"step {i}", step)
        if len(self.labels) != len(self.steps):
            raise ValueError(f"{len(self.labels)} labels for {len(self.steps)} steps")
        self.labels = [_label(i, x) for i, x in enumerate(self.labels)]


def _check_unicode(what: str, text: str) -> None:
    """A ValueError when ``text`` cannot be encoded as UTF-8: a lone surrogate (e.g. ``"\ud800"``, which
    JSON escapes allow) that no tokenizer takes."""
    if not_utf8(text):
        raise ValueError(f"{what} is not valid Unicode text (a lone surrogate)")


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
    """TRL stepwise-supervision row: ``prompt``, ``completions`` (the steps), ``labels`` (bools, ints or
    floats; soft floats stay as they are)."""
    return StepExample(
        _field(row, "prompt", str), _field(row, "completions", list), _field(row, "labels", list), source_row
    )


def from_processbench(row: Mapping, source_row: int, after_error: str = "negative") -> StepExample:
    """ProcessBench row: ``problem``, ``steps``, ``label`` = 0-based index of the first wrong step (-1: none).

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
    """Math-Shepherd row: ``input`` = question + steps, each step ending in the tag 'ки'; ``label`` = the
    same text with each tag replaced by '+' (good) or '-' (bad).

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
# Raw PRM800K keeps a final step's answer in its text under this heading; the denormalised rows split it off.
PRM800K_ANSWER_HEADING = "\n\n# Answer\n\n"


def _rating_label(rating: Any, neutral: str, what: str) -> float | None:
    """The label of a PRM800K rating (-1, 0 or +1); None when ``neutral="skip"`` leaves a 0 out."""
    if isinstance(rating, bool) or rating not in (-1, 0, 1):
        raise ValueError(f"{what} is rated {rating!r}, not -1, 0 or 1")
    return _RATING_LABELS[rating] if rating else _NEUTRAL_LABELS[neutral]


class _Followed(NamedTuple):
    """The step a PRM800K labeller followed: a completion (``index``) or their own step (``index`` None)."""

    index: int | None
    text: str
    rating: int
    ends: bool  # the trajectory stops after it


def from_prm800k(
    record: Mapping,
    source_row: int,
    neutral: str = "positive",
    skip_flagged: bool = True,
    skip_screening: bool = True,
    alternatives: bool = False,
) -> list[StepExample]:
    """Raw PRM800K record (phase 1 or 2) -> its labelled trajectory, and with ``alternatives`` one more
    example per rated completion the labeller did not follow (the steps before it + that completion).

    The trajectory has one step per entry of ``label.steps``: the completion the labeller chose to continue
    with (``chosen_completion``) or, when every completion was rated -1, the labeller's own
    ``human_completion`` (a +1 step by the labelling rules). A step with neither ends the trajectory: its
    first completion rated -1, the error that stopped the labeller (in phase 2 the pre-generated step), is
    the last step; without one (a labeller who gave up) nothing is added. Phase 1 labellers continue only
    from good steps (every followed step of phase1_test is +1 or their own), so there the negatives are in
    the alternatives. All examples of a record share its ``source_row``.

    Ratings: +1 -> 1, -1 -> 0, and 0 ("fine but no progress") by ``neutral``: ``"positive"`` (1, the usual
    practice since "Let's Verify Step by Step"), ``"negative"`` (0) or ``"skip"`` (the step is left out,
    text included, as an example has no unlabelled steps). Unrated alternatives are not used.

    Raises :class:`RecordDropped` for a record with finish_reason ``bad_problem`` / ``give_up`` when
    ``skip_flagged``, for an initial-screening record (generation -1: 30 questions served to every
    labeller to screen them, so each is repeated once per labeller) when ``skip_screening``, and for a
    record that leaves no labelled step.
    """
    check_choice("neutral", neutral, NEUTRAL_POLICIES)
    question = _field(record, "question", dict)
    label = _field(record, "label", dict)
    if skip_screening and (record.get("is_initial_screening_question") or record.get("generation") == -1):
        raise RecordDropped("initial screening question (generation -1)")
    finish_reason = label.get("finish_reason")
    if skip_flagged and finish_reason in UNFINISHED_REASONS:
        raise RecordDropped(f"finish_reason {finish_reason!r}")
    prompt = _field(question, "problem", str)
    steps, labels, branches = [], [], []
    for i, step in enumerate(_field(label, "steps", list)):
        completions, followed = _prm800k_step(i, step)
        if alternatives:
            branches += [
                StepExample(prompt, [*steps, text], [*labels, value], source_row)
                for text, value in _alternatives(i, completions, followed, neutral)
            ]
        if followed is None:
            break
        value = _rating_label(followed.rating, neutral, f"label.steps[{i}]: the followed completion")
        if value is not None:
            steps.append(followed.text)
            labels.append(value)
        if followed.ends:
            break
    examples = ([StepExample(prompt, steps, labels, source_row)] if steps else []) + branches
    if not examples:
        raise RecordDropped(f"no labelled step (finish_reason {finish_reason!r})")
    return examples


def _alternatives(
    i: int, completions: list[dict], followed: _Followed | None, neutral: str
) -> Iterator[tuple[Any, float]]:
    """(text, label) of each rated completion of ``label.steps[i]`` that the labeller did not follow."""
    for j, completion in enumerate(completions):
        if completion.get("rating") is None or (followed is not None and j == followed.index):
            continue
        value = _rating_label(completion["rating"], neutral, f"label.steps[{i}].completions[{j}]")
        if value is not None:
            yield completion.get("text"), value


def _prm800k_step(i: int, step: Any) -> tuple[list[dict], _Followed | None]:
    """The completions of ``label.steps[i]`` and the step the labeller followed there (None when the
    trajectory ended without a rated error)."""
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
        index, followed, rating, ends = chosen, completions[chosen], completions[chosen].get("rating"), False
    elif human is not None:
        index, followed, rating, ends = None, human, 1, False
    else:
        index = next((j for j, c in enumerate(completions) if c.get("rating") == -1), None)
        if index is None:
            return completions, None
        followed, rating, ends = completions[index], -1, True
    if not isinstance(followed, dict) or not isinstance(followed.get("text"), str):
        raise ValueError(f"{where}: the followed completion has no text")
    return completions, _Followed(index, followed["text"], rating, ends)


def from_prm800k_critic(row: Mapping, source_row: int, neutral: str = "positive") -> StepExample:
    """Denormalised PRM800K "stepwise critique" row (Birchlabs' Parquet): one rated candidate step after the
    steps the labeller followed so far -> those steps + the candidate.

    Columns: ``instruction`` (the problem), ``responses`` (the followed steps), ``next_response`` (the
    candidate) and ``answer`` (its answer section, put back as raw PRM800K has it), ``is_human_response``,
    ``rating``. The candidate is labelled from its rating as in :func:`from_prm800k` (a labeller's own step:
    1). The rows do not carry the followed steps' ratings; they are labelled 1, which is exact for
    phase1_test (all 1,857 followed steps are rated +1 or the labeller's own) and makes a phase 2 followed
    step rated 0 positive whatever ``neutral``. Each row labels its last step: train with a last-step loss
    so the shared prefixes are not counted once per candidate.

    Raises :class:`RecordDropped` for an unrated candidate, and a neutral one when ``neutral="skip"``.
    """
    check_choice("neutral", neutral, NEUTRAL_POLICIES)
    followed = _field(row, "responses", list)
    candidate = _field(row, "next_response", str)
    answer = row.get("answer")
    if answer is not None:
        candidate += PRM800K_ANSWER_HEADING + str(answer)
    if row.get("is_human_response"):
        value = 1.0
    elif row.get("rating") is None:
        raise RecordDropped("unrated candidate step")
    else:
        value = _rating_label(row["rating"], neutral, "the candidate step")
        if value is None:
            raise RecordDropped("neutral candidate step (neutral='skip')")
    steps = [*followed, candidate]
    return StepExample(_field(row, "instruction", str), steps, [1.0] * len(followed) + [value], source_row)
