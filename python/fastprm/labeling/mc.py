"""Monte Carlo step labels (Math-Shepherd's completion labels; OmegaPRM's binary search for the first error).

From the prefix ending with step k, a generator writes ``rollouts`` completions; the step's soft label is the
fraction whose final answer matches the reference, its hard label whether that fraction passes the ``hard``
rule (``any``: at least one; ``majority``: more than half; a number t: at least t). The last step's prefix is
the whole solution, so its label is the solution's own answer, with no rollout.

``linear`` labels every step (K - 1 prefixes of rollouts per solution). ``binary`` (OmegaPRM) assumes that
once a prefix can no longer reach the answer, no longer prefix can: a solution whose own answer is right is
labelled good throughout with no rollout; for the others it searches the first step whose prefix fails the
hard rule in about log2(K) prefixes, labels the steps before it good and that step bad, and leaves the steps
after it unlabelled (the first-error label mode of ``fastprm train``), or labels them bad with
``label_after_error``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..metrics.answers import answers_equal, extract_answer
from ..search.generators import DEFAULT_STOP, Generator, prefix_text

METHODS = ("linear", "binary")


@dataclass
class StepLabels:
    """The labels of one solution.

    Attributes:
        soft: per step, the fraction of rollouts that reached the reference answer (the last step: 1.0 or
            0.0, its own answer), None where no rollout ran from the step (``binary``).
        hard: per step, good (True) / bad (False), None where unlabelled.
        rollouts: per step, the rollouts run from its prefix.
        first_error: the first step labelled bad, -1 when none.
    """

    soft: list[float | None]
    hard: list[bool | None]
    rollouts: list[int]
    first_error: int

    @property
    def total_rollouts(self) -> int:
        return sum(self.rollouts)


def hard_rule(hard: str | float) -> Callable[[float], bool]:
    """The soft -> hard rule: ``any`` (> 0), ``majority`` (> 0.5) or a threshold t in (0, 1] (>= t)."""
    if hard == "any":
        return lambda p: p > 0
    if hard == "majority":
        return lambda p: p > 0.5
    if isinstance(hard, (int, float)) and not isinstance(hard, bool) and 0 < hard <= 1:
        return lambda p: p >= hard
    raise ValueError(f"hard must be 'any', 'majority' or a number in (0, 1], got {hard!r}")


def is_correct(text: str, reference: str) -> bool:
    """fastprm's answer checker: the text's final answer (last ``\\boxed{}`` or "the answer is ...") equals
    the reference as a number, a fraction or normalised text."""
    return answers_equal(extract_answer(text), reference)


def mc_label(
    generator: Generator,
    problems: Sequence[str],
    solutions: Sequence[Sequence[str]],
    references: Sequence[str],
    *,
    rollouts: int = 8,
    method: str = "linear",
    hard: str | float = "any",
    max_new_tokens: int = 512,
    check: Callable[[str, str], bool] | None = None,
    label_after_error: bool = False,
    stop: str | None = None,
) -> list[StepLabels]:
    """Monte Carlo labels of ``solutions`` (steps) of ``problems`` against ``references`` (see the module).

    All prefixes of one round (every step of every solution for ``linear``; one probe per unfinished search
    for ``binary``) go to the generator in one ``generate_completions`` call, ``rollouts`` each. ``check``
    (completion text, reference) -> bool replaces fastprm's answer checker; ``stop`` is the text between
    steps (default: the generator's ``stop``, else a blank line). Raises ValueError naming the row for a
    solution without steps or a missing reference.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(rollouts, int) or rollouts < 1:
        raise ValueError(f"rollouts must be a positive integer, got {rollouts!r}")
    if not len(problems) == len(solutions) == len(references):
        raise ValueError(
            f"{len(problems)} problems, {len(solutions)} solutions, {len(references)} references"
        )
    for i, (steps, reference) in enumerate(zip(solutions, references)):
        if not steps or any(not isinstance(s, str) or not s.strip() for s in steps):
            raise ValueError(f"row {i}: the solution needs at least one step and no empty step")
        if reference is None or not str(reference).strip():
            raise ValueError(f"row {i}: no reference answer")
    passes, correct = hard_rule(hard), check or is_correct
    stop = stop or getattr(generator, "stop", DEFAULT_STOP)

    def success(prefixes: list[tuple[int, int]]) -> list[float]:
        """Fraction of ``rollouts`` completions of each (row, step) prefix that reach the row's reference."""
        texts = [prefix_text(generator, problems[i], solutions[i][: k + 1], stop) for i, k in prefixes]
        done = generator.generate_completions(texts, rollouts, max_new_tokens=max_new_tokens)
        return [
            sum(correct(c, str(references[i])) for c in cs) / rollouts for (i, _), cs in zip(prefixes, done)
        ]

    labels = []
    for i, steps in enumerate(solutions):
        own = 1.0 if correct(stop.join(steps), str(references[i])) else 0.0
        K = len(steps)
        labels.append(StepLabels([None] * (K - 1) + [own], [None] * (K - 1) + [passes(own)], [0] * K, -1))
    if method == "linear":
        prefixes = [(i, k) for i, steps in enumerate(solutions) for k in range(len(steps) - 1)]
        for (i, k), p in zip(prefixes, success(prefixes)):
            labels[i].soft[k], labels[i].hard[k], labels[i].rollouts[k] = p, passes(p), rollouts
        for label in labels:
            label.first_error = next((k for k, h in enumerate(label.hard) if not h), -1)
        return labels
    # binary: per wrong solution, the first prefix that fails lies in [lo, hi]; the last step fails already.
    bounds = {i: (0, len(solutions[i]) - 1) for i, label in enumerate(labels) if not label.hard[-1]}
    while probes := [(i, (lo + hi) // 2) for i, (lo, hi) in bounds.items() if lo < hi]:
        for (i, k), p in zip(probes, success(probes)):
            label = labels[i]
            label.soft[k], label.hard[k], label.rollouts[k] = p, passes(p), rollouts
            lo, hi = bounds[i]
            bounds[i] = (k + 1, hi) if passes(p) else (lo, k)
    for i, label in enumerate(labels):
        first = bounds[i][0] if i in bounds else -1
        label.first_error = first
        for k in range(len(label.hard)):
            if first == -1 or k < first:
                label.hard[k] = True
            elif k == first:
                label.hard[k] = False
            else:
                label.hard[k] = False if label_after_error else None
    return labels
