"""Step tokenization: prompt and steps tokenized separately, separator ids appended after each step.

Steps are never found by searching a joined string (BPE merges text across the boundary: with the Qwen2
tokenizer "." + "\\n\\n" is one token). Every piece of user text is tokenized with special tokens split, so a
step that contains "<extra_0>", "<|im_end|>" or any other special token as text stays text; the template's
own special tokens and the separators are inserted as ids. Step positions are recorded while the ids are
built, so a separator-looking token inside user text can never end a step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .io import not_utf8
from .models.conventions import PLAIN, PROBLEM_NEWLINE, QUESTION_SPACE, QWEN_CHAT, Convention

TRUNCATION_MODES = ("error", "left-truncate-prompt", "drop-steps")


class RowError(ValueError):
    """A row that cannot be tokenized: ``row`` numbers it (as the caller counts rows) and ``reason`` says why."""

    def __init__(self, row: int, reason: str):
        super().__init__(f"row {row}: {reason}")
        self.row = row
        self.reason = reason


class RowTooLong(RowError):
    """A row over ``max_length`` tokens (with ``truncation="error"``)."""


@dataclass
class TokenizedSolution:
    """One problem + solution as model input.

    Attributes:
        input_ids: token ids of the whole sequence.
        step_ends: position in ``input_ids`` of the token that scores each step (its last separator token).
        prompt_length: tokens before the first step (template + problem): rows with equal prompts share
            their keys and values when scored (0 for pre-tokenized rows, whose prompt is unknown).
        template_length: the first tokens, which every row of the convention starts with (a chat template's
            system prompt and header; a bos token): they are computed once per scorer.
        prompt_tokens_dropped: tokens cut from the left of the problem to fit ``max_length``.
        steps_dropped: trailing steps dropped to fit ``max_length`` (they get no score).
    """

    input_ids: list[int]
    step_ends: list[int]
    prompt_length: int = 0
    template_length: int = 0
    prompt_tokens_dropped: int = 0
    steps_dropped: int = 0


def _check_text(text: object, what: str, row: int) -> None:
    """A RowError unless ``text`` is a str that can be encoded (a lone surrogate such as "\\ud800" cannot)."""
    if not isinstance(text, str):
        raise RowError(row, f"{what} must be a string, got {type(text).__name__}")
    if not_utf8(text):
        raise RowError(row, f"{what} is not valid Unicode text (a lone surrogate)")


def check_row(problem: object, steps: object, row: int) -> None:
    """A RowError naming ``row`` unless ``problem`` is text and ``steps`` a non-empty list of texts."""
    _check_text(problem, "the problem", row)
    if isinstance(steps, str) or not isinstance(steps, (list, tuple)):
        raise RowError(row, f"the steps must be a list of strings, got {type(steps).__name__}")
    if not steps:
        raise RowError(row, "the solution has no steps")
    for i, step in enumerate(steps):
        _check_text(step, f"step {i}", row)


class StepTokenizer:
    """Turns (problem, steps) pairs into model inputs for one convention.

    Args:
        tokenizer: a Hugging Face fast tokenizer of the checkpoint.
        convention: the checkpoint's :class:`~fastprm.models.conventions.Convention`.
        max_length: longest sequence allowed (None: no limit).
        truncation: what to do with a longer row: ``error`` (default; names the row), ``left-truncate-prompt``
            or ``drop-steps`` (both recorded on the result).
    """

    def __init__(
        self, tokenizer, convention: Convention, max_length: int | None = None, truncation: str = "error"
    ):
        if truncation not in TRUNCATION_MODES:
            raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}")
        self.tokenizer = tokenizer
        self.convention = convention
        self.max_length = max_length
        self.truncation = truncation
        self._cache: dict[str, list[int]] = {}
        # SentencePiece tokenizers prepend a word-boundary piece to every text they see ("\n" -> "▁", "<0x0A>").
        # Inside a sequence that piece is not there, so continuation pieces drop it.
        probe = tokenizer("\n", add_special_tokens=False)["input_ids"]
        self._boundary_piece = probe[0] if len(probe) > 1 else None
        self.separator_ids = self._separator_ids(convention.separator)

    # -- pieces -------------------------------------------------------------------------------------------------

    def _special_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer has no token {token!r}, which the {self.convention.name} template needs"
            )
        return token_id

    def _separator_ids(self, separator: str) -> list[int]:
        """A separator that is one (special) token of the vocabulary is that id; otherwise its text's ids.
        A convention whose separator must be a special token refuses a tokenizer without it: spelled as text,
        the separator would be tokens the model never learned to score at (and a step could contain them)."""
        # One token of the vocabulary (added tokens included)? Asked per token: get_vocab() builds a dict of
        # the whole vocabulary (0.1 s for Qwen2's 151k), and a tokenizer is made for every Scorer and session.
        token_id = self.tokenizer.convert_tokens_to_ids(separator)
        if token_id is not None and (
            token_id != self.tokenizer.unk_token_id or separator == self.tokenizer.unk_token
        ):
            return [token_id]
        if self.convention.special_separator:
            raise ValueError(
                f"the tokenizer has no token {separator!r}, the step separator of the {self.convention.name} "
                "convention (a special token of its tokenizer)"
            )
        ids = self.tokenizer(separator, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"the separator {separator!r} tokenizes to nothing")
        # SentencePiece tokenizers may emit a bare word-boundary piece first; the step tag is the rest.
        return ids[1:] if len(ids) > 1 and ids[0] == self._boundary_piece else ids

    def encode_text(self, texts: list[str], continuation: bool = False) -> list[list[int]]:
        """User text to ids, batched, with special tokens split so that text can never become one.

        ``continuation``: the texts continue a sequence (the tokenizer's word-boundary piece is dropped)."""
        if not texts:
            return []
        ids = self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if continuation and self._boundary_piece is not None:
            ids = [
                x[1:] if x[:1] == [self._boundary_piece] and not t.startswith(" ") else x
                for t, x in zip(texts, ids)
            ]
        return ids

    def _bos(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [] if bos is None else [bos]

    def _frame(self) -> tuple[list[int], str, str, list[int], list[int]]:
        """The template around a row: (ids before the problem, text joined before and after the problem
        into one chunk, ids between the problem and the first step, ids after the last step)."""
        c = self.convention
        if c.template == QWEN_CHAT:
            start, end = self._special_id("<|im_start|>"), self._special_id("<|im_end|>")
            newline = self._cached("\n")
            head = [start, *self._cached(f"system\n{c.system_prompt or ''}"), end, *newline, start]
            mid = [end, *newline, start, *self._cached("assistant\n")]
            return head, "user\n", "", mid, [end, *newline]
        if c.template == PROBLEM_NEWLINE:
            return self._bos(), "", "\n", [], []
        if c.template in (QUESTION_SPACE, PLAIN):
            return self._bos(), "", "", [], []
        raise ValueError(f"unknown template {c.template!r}")

    def _cached(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.encode_text([text], continuation=True)[0] if text else []
        return self._cache[text]

    # -- whole rows ---------------------------------------------------------------------------------------------

    def __call__(
        self, problems: Sequence[str], solutions: Sequence[Sequence[str]], first_row: int = 0
    ) -> list[TokenizedSolution]:
        """Tokenizes a batch of rows. A bad row (:func:`check_row`, or too long) raises :class:`RowError`,
        numbered from ``first_row``."""
        if isinstance(problems, str) or isinstance(solutions, str):
            raise ValueError("problems and solutions must be lists (one entry per row), not a string")
        if len(problems) != len(solutions):
            raise ValueError(f"got {len(problems)} problems but {len(solutions)} solutions")
        for r, (problem, steps) in enumerate(zip(problems, solutions)):
            check_row(problem, steps, first_row + r)
        step_texts = [self._step_text(step, i == 0) for steps in solutions for i, step in enumerate(steps)]
        problem_ids = self._problem_ids(problems)
        step_ids = iter(self.encode_text(step_texts, continuation=True))
        rows = []
        for r, (pids, steps) in enumerate(zip(problem_ids, solutions)):
            rows.append(self._assemble(pids, [next(step_ids) for _ in steps], first_row + r))
        return rows

    def _step_text(self, step: str, first: bool) -> str:
        """A step's text as it is tokenized: after the convention's joiner, or its lead-in for the first."""
        if first:
            return (" " if self.convention.template == QUESTION_SPACE else "") + step
        return self.convention.step_joiner + step

    def _problem_ids(self, problems: Sequence[str]) -> list[list[int]]:
        """The problems' ids, with the template text joined around them."""
        _, before, after, _, _ = self._frame()
        return self.encode_text([before + p + after for p in problems], continuation=bool(before))

    # -- incremental rows (sessions) -----------------------------------------------------------------------------

    def prompt_ids(self, problem: str, row: int = 0) -> list[int]:
        """The ids before a solution's first step (template and problem), as :meth:`__call__` builds them;
        no truncation (a session checks its own length)."""
        _check_text(problem, "the problem", row)
        head, _, _, mid, _ = self._frame()
        return [*head, *self._problem_ids([problem])[0], *mid]

    def step_ids(self, step: str, first: bool, row: int = 0) -> list[int]:
        """One step's ids and its separator ids, as :meth:`__call__` builds them (``first``: the solution's
        first step)."""
        _check_text(step, "the step", row)
        return self.encode_text([self._step_text(step, first)], continuation=True)[0] + self.separator_ids

    def from_ids(self, input_ids: Sequence[int], row: int = 0) -> TokenizedSolution:
        """Find mode: a pre-tokenized sequence (e.g. from an RL trainer) whose separator tokens mark the steps.

        Every occurrence of the convention's one-token separator ends a step. The ids are taken as given: it
        is the caller's tokenization that decided where separators are. Errors are :class:`RowError` naming
        ``row``.
        """
        if len(self.separator_ids) != 1:
            raise ValueError(
                f"find mode needs a one-token separator; {self.convention.separator!r} is {self.separator_ids}"
            )
        vocab = len(self.tokenizer)
        if not isinstance(input_ids, (list, tuple)) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in input_ids
        ):
            raise RowError(row, f"input_ids must be a list of token ids in [0, {vocab})")
        if self.max_length is not None and len(input_ids) > self.max_length:
            raise RowTooLong(row, f"{len(input_ids)} tokens exceed max_length={self.max_length}")
        separator = self.separator_ids[0]
        step_ends = [i for i, t in enumerate(input_ids) if t == separator]
        if not step_ends:
            raise RowError(row, f"input_ids hold no separator id {separator}: no step to score")
        return TokenizedSolution(list(input_ids), step_ends)

    def _assemble(self, problem_ids: list[int], step_ids: list[list[int]], row: int) -> TokenizedSolution:
        head, before, _, mid, tail = self._frame()
        fixed = len(head) + len(mid) + len(tail)
        keep = len(self._cached(before))  # template text inside the problem chunk is never truncated
        step_lengths = [len(s) + len(self.separator_ids) for s in step_ids]
        total = fixed + len(problem_ids) + sum(step_lengths)
        dropped_prompt = dropped_steps = 0
        if self.max_length is not None and total > self.max_length:
            excess = total - self.max_length
            if self.truncation == "left-truncate-prompt" and excess <= len(problem_ids) - keep:
                dropped_prompt = excess
                problem_ids = problem_ids[:keep] + problem_ids[keep + excess :]
            elif self.truncation == "drop-steps":
                while step_ids and total > self.max_length:
                    total -= step_lengths[len(step_ids) - 1]
                    step_ids = step_ids[:-1]
                    dropped_steps += 1
            if fixed + len(problem_ids) + sum(step_lengths[: len(step_ids)]) > self.max_length:
                raise RowTooLong(row, self._too_long(fixed + len(problem_ids) + sum(step_lengths)))
        ids = [*head, *problem_ids, *mid]
        prompt_length = len(ids)
        ends = []
        for s in step_ids:
            ids += s
            ids += self.separator_ids
            ends.append(len(ids) - 1)
        ids += tail
        return TokenizedSolution(ids, ends, prompt_length, len(head), dropped_prompt, dropped_steps)

    def _too_long(self, total: int) -> str:
        what = f"{total} tokens exceed max_length={self.max_length}"
        if self.truncation == "error":
            return f"{what} (truncation='error'; 'left-truncate-prompt' or 'drop-steps' keep going)"
        if self.truncation == "left-truncate-prompt":
            return f"{what}, and cutting the problem is not enough (truncation='drop-steps' drops steps)"
        return f"{what} even with every step dropped (the template and problem alone are too long)"
