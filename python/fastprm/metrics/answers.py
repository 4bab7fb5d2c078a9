"""Final answers of math solutions: extraction (``\\boxed{}``, GSM8K ``#### N``, "The answer is N") and a
canonical key under which equal answers (``$1,000$`` and ``1000``, ``\\dfrac{1}{2}`` and ``0.5``) coincide."""

from __future__ import annotations

import re
from fractions import Fraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GSM8K = re.compile(r"####\s*([^\n]+)")
# Lazy up to a sentence end: a period before a space, a newline or the end, so "3.5." gives "3.5".
_ANSWER_IS = re.compile(r"answer is\s*:?\s*(.+?)\s*(?:\.\s|\.?$|\n)", re.IGNORECASE | re.MULTILINE)
# The "A: N" last line of GSM8K's released model solutions (gsm8k/example_model_solutions.jsonl).
_A_COLON = re.compile(r"^A:\s*(.+?)\s*$", re.MULTILINE)

_TEXT_COMMANDS = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
_LATEX_SPACES = re.compile(r"\\[,;:! ]|\\q?quad|~")
_DEGREES_PERCENT = re.compile(r"\^\s*\{?\\circ\}?|\\?%")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_DECIMAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)$")
_FRAC = re.compile(r"^([+-]?)\\frac\{([+-]?(?:\d+\.?\d*|\.\d+))\}\{(\d+\.?\d*|\.\d+)\}$")
_SLASH = re.compile(r"^([+-]?)(\d+\.?\d*|\.\d+)/(\d+\.?\d*|\.\d+)$")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces included; None when absent
    or unclosed."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a solution, raw (see :func:`normalize_answer`), or None when it states none.

    Tried in order, the last occurrence winning within a kind: ``\\boxed{...}``, GSM8K ``#### N``,
    "The answer is N", and a line "A: N".
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    for pattern in (_GSM8K, _ANSWER_IS, _A_COLON):
        found = pattern.findall(text)
        if found:
            return found[-1].strip()
    return None


def normalize_answer(answer: str) -> str:
    """A canonical spelling: no ``$``, spaces, ``\\left``/``\\right``, thousands commas, trailing period,
    degree or percent signs; ``\\text{x}`` becomes ``x`` and ``\\dfrac``/``\\tfrac`` become ``\\frac``."""
    s = answer.strip()
    s = _TEXT_COMMANDS.sub(r"\1", s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("{,}", ",")  # LaTeX's thousands separator, as in MATH's "10{,}000"
    s = _LATEX_SPACES.sub("", s)
    s = _DEGREES_PERCENT.sub("", s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return s


def answer_value(answer: str) -> Fraction | None:
    """The exact number a normalized answer spells (``5``, ``-0.50``, ``\\frac{1}{2}``, ``3/4``), else None."""
    if _DECIMAL.match(answer):
        return Fraction(answer)
    for pattern in (_FRAC, _SLASH):
        m = pattern.match(answer)
        if m:
            sign, num, den = m.groups()
            if Fraction(den) == 0:
                return None
            return Fraction(num) / Fraction(den) * (-1 if sign == "-" else 1)
    return None


def answer_key(answer: str | None) -> str | None:
    """A key equal for equal answers: the exact value for numbers (so ``5 == 5.0 == 5.00`` and
    ``1/2 == 0.5``), the normalized text otherwise; None for no (or an empty) answer."""
    if answer is None:
        return None
    s = normalize_answer(answer)
    if not s:
        return None
    value = answer_value(s)
    return s if value is None else f"number:{value}"


def answers_equal(a: str | None, b: str | None) -> bool:
    """Whether two raw answers are the same answer; a missing answer equals nothing."""
    key = answer_key(a)
    return key is not None and key == answer_key(b)
