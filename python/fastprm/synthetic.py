"""The demo's synthetic task: multi-step word problems with exact step labels, and a scripted step generator.

Problems add one-digit amounts to a starting count ("tom has 3 apples . tom gets 2 , then finds 1 . how many
apples now ?"); a solution has one step per addition and a final "the answer is N ." step. Because the task
knows every step's truth, it can label solutions exactly (:func:`make_problem`) and play a policy model with a
known error rate (:class:`ScriptedStepGenerator`, a :class:`fastprm.search.Generator`), which the demo's
search section and Monte Carlo labelling use as ground truth.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Sequence

NAMES = ["tom", "ann", "raj", "mia", "li", "sam"]
ITEMS = ["apples", "coins", "cards", "books", "pens"]
VERBS = ["gets", "finds", "buys", "wins"]
# Every true quantity is a single digit: a PRM trained from scratch for two minutes learns to check one-digit
# sums and copies (measured: step AUROC ~0.55 after 1,500 steps with quantities up to ~30, ~0.93 with 0-9).
MAX_VALUE = 9
STEP_ERRORS = ("arithmetic", "carry")
N_SOLUTIONS = 8  # solutions per held-out problem: best-of-8


def _near(rng: random.Random, x: int) -> int:
    """A plausible wrong value: x off by one or two, still a small non-negative number."""
    return rng.choice([x + d for d in (-2, -1, 1, 2) if x + d >= 0])


def _operations(rng: random.Random, a: int, n: int) -> list[int]:
    """Up to ``n`` amounts of 1-4 added one after another while the count stays within MAX_VALUE.

    Only additions: subtraction doubles the table of one-digit facts, and the PRM then needs about twice the
    training time to learn to check them (measured with this demo's model and budget).
    """
    amounts, value = [], a
    while len(amounts) < n and value < MAX_VALUE:
        b = rng.randint(1, min(4, MAX_VALUE - value))
        amounts.append(b)
        value += b
    return amounts


def _solution(rng: random.Random, a: int, amounts: list[int], error_rate: float):
    """Steps and ProcessBench label (first wrong step, or -1) of one solution.

    Errors: a wrong sum ("arithmetic"), a step that starts from a number other than the previous result or
    the problem's ("carry"), or a final answer that is not the last result ("answer"). A wrong sum or carry
    is sometimes noticed and corrected in the next step ("wait , ..."), so the final answer is right although
    the solution has an error.
    """
    error_at = rng.randrange(len(amounts) + 1) if rng.random() < error_rate else None
    kind = "answer" if error_at == len(amounts) else rng.choice(STEP_ERRORS)
    steps, value, label = [], a, -1
    for k, b in enumerate(amounts):
        true = value + b
        if k == error_at and kind != "answer":
            start = _near(rng, value) if kind == "carry" and k > 0 else value
            # A wrong sum (a carry error needs a previous step to carry from), or a right sum of a wrong start.
            result = _near(rng, true) if start == value else start + b
            steps.append(f"{start} + {b} = {result} .")
            label = len(steps) - 1
            if rng.random() < 0.25:
                steps.append(f"wait , {value} + {b} = {true} .")
            else:
                true = result
        else:
            steps.append(f"{value} + {b} = {true} .")
        value = true
    if kind == "answer" and error_at is not None:
        label = len(steps)
        value = _near(rng, value)
    steps.append(f"the answer is {value} .")
    return steps, label


def make_problem(rng: random.Random, pid: int, n_solutions: int) -> list[dict]:
    """One word problem and ``n_solutions`` solutions of it (ProcessBench rows plus the gold answer).

    Problems differ in difficulty (the share of their solutions with an error, 0.3-0.9), so on hard ones the
    majority answer is often wrong: the case where a PRM should beat majority voting.
    """
    a = rng.randint(1, MAX_VALUE - 3)
    amounts = _operations(rng, a, 3)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    verbs = " , then ".join(f"{rng.choice(VERBS)} {b}" for b in amounts)
    problem = f"{name} has {a} {item} . {name} {verbs} . how many {item} now ?"
    error_rate = rng.uniform(0.3, 0.9)
    rows = []
    for s in range(n_solutions):
        steps, label = _solution(rng, a, amounts, error_rate)
        rows.append(
            {
                "id": f"arith-{pid * n_solutions + s}",  # ProcessBench ids: subset-index
                "problem": problem,
                "steps": steps,
                "label": label,
                "answer": str(a + sum(amounts)),
            }
        )
    return rows


# -- a scripted policy ----------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d+")
_RESULT = re.compile(r"= (-?\d+) \.$")
STOP = "\n"


def problem_numbers(problem: str) -> tuple[int, list[int]]:
    """(starting count, amounts added) of a problem written by :func:`make_problem`."""
    numbers = [int(x) for x in _NUMBER.findall(problem)]
    if len(numbers) < 2:
        raise ValueError(f"not a problem of the synthetic task: {problem!r}")
    return numbers[0], numbers[1:]


def true_answer(problem: str) -> int:
    a, amounts = problem_numbers(problem)
    return a + sum(amounts)


class ScriptedStepGenerator:
    """A noisy solver of the synthetic task behind the :class:`fastprm.search.Generator` protocol.

    Each step it writes is the next addition, computed from the value its previous step stated (so an error
    carries on), with probability ``error_rate`` an error instead: a wrong sum, a wrong starting number
    ("carry"), or, at the end, a wrong final answer. After a step with an error it notices and redoes that
    addition correctly ("wait , ...") with probability ``correct_rate``. Sampling is seeded by ``seed``, the
    prefix and the sample's index, so equal calls give equal steps. ``generated_steps`` counts what it wrote.
    """

    stop = STOP

    def __init__(self, error_rate: float = 0.3, correct_rate: float = 0.3, seed: int = 0):
        self.error_rate, self.correct_rate, self.seed = error_rate, correct_rate, seed
        self.generated_steps = 0

    def prompt(self, problem: str) -> str:
        return problem + STOP

    def _next_step(self, problem: str, steps: Sequence[str], rng: random.Random) -> str:
        a, amounts = problem_numbers(problem)
        done = [s for s in steps if not s.startswith("wait")]
        k = len(done)  # additions written so far
        stated = a if not steps else int(_RESULT.search(steps[-1]).group(1))
        truth = a + sum(amounts[:k])
        if k and stated != truth and not steps[-1].startswith("wait") and rng.random() < self.correct_rate:
            before, b = a + sum(amounts[: k - 1]), amounts[k - 1]
            return f"wait , {before} + {b} = {before + b} ."
        if k == len(amounts):
            answer = _near(rng, stated) if rng.random() < self.error_rate else stated
            return f"the answer is {answer} ."
        b = amounts[k]
        if rng.random() >= self.error_rate:
            return f"{stated} + {b} = {stated + b} ."
        if k and rng.random() < 0.5:  # carry: a wrong start, summed right
            start = _near(rng, stated)
            return f"{start} + {b} = {start + b} ."
        return f"{stated} + {b} = {_near(rng, stated + b)} ."

    def _split(self, prefix: str) -> tuple[str, list[str]]:
        problem, *steps = prefix.split(STOP)
        return problem, [s for s in steps if s]

    def _rng(self, prefix: str, j: int) -> random.Random:
        return random.Random(zlib.crc32(f"{self.seed}|{j}|{prefix}".encode()))

    def generate_steps(
        self, prefixes: Sequence[str], n: int, *, stop: str = STOP, max_new_tokens: int = 64
    ) -> list[list[str]]:
        out = []
        for prefix in prefixes:
            problem, steps = self._split(prefix)
            out.append([self._next_step(problem, steps, self._rng(prefix, j)) for j in range(n)])
        self.generated_steps += n * len(prefixes)
        return out

    def generate_solutions(self, problems: Sequence[str], n: int) -> list[list[list[str]]]:
        return [[self._finish(self.prompt(problem), j) for j in range(n)] for problem in problems]

    def generate_completions(
        self, prefixes: Sequence[str], n: int, *, max_new_tokens: int = 512
    ) -> list[list[str]]:
        """Rollouts: each prefix's solution written on to its final answer, ``n`` times (steps joined by the
        stop string, as a language model writes them)."""
        out = []
        for prefix in prefixes:
            _, given = self._split(prefix)
            out.append([STOP.join(self._finish(prefix, j)[len(given) :]) for j in range(n)])
        return out

    def _finish(self, prefix: str, j: int) -> list[str]:
        """The steps of ``prefix`` and the ones sample ``j`` adds until it states an answer."""
        problem, steps = self._split(prefix)
        rng, steps, given = self._rng(prefix, j), list(steps), len(steps)
        while not steps or not steps[-1].startswith("the answer"):
            steps.append(self._next_step(problem, steps, rng))
        self.generated_steps += len(steps) - given
        return steps
