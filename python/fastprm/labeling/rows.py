"""Labelling rows read from files, a chunk at a time: the checks a row needs (a reference answer, no empty
step), one :func:`~fastprm.labeling.mc.mc_label` call for the chunk's good rows, and the TRL stepwise output
records. ``fastprm label`` runs it in one process and each Ray worker of ``fastprm label --ray``
(:mod:`fastprm.distributed`) on its batches, so both write the same lines for the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..io import BadRow, InputRow
from .mc import StepLabels, mc_label


@dataclass(frozen=True)
class LabelOptions:
    """How rows are labelled: the arguments of :func:`mc_label` plus what the ``labels`` field holds
    (``soft``: the rollout pass rates, ``hard``: 0/1) and whether bad rows are recorded or raised."""

    rollouts: int = 8
    method: str = "linear"
    hard: str | float = "any"
    max_new_tokens: int = 512
    soft_labels: bool = True
    skip_bad_rows: bool = False

    @classmethod
    def from_args(cls, args) -> LabelOptions:
        """The options of ``fastprm label``'s parsed arguments (``--hard`` comes as text)."""
        return cls(
            rollouts=args.rollouts,
            method=args.method,
            hard=float(args.hard) if args.hard not in ("any", "majority") else args.hard,
            max_new_tokens=args.max_new_tokens,
            soft_labels=args.labels == "soft",
            skip_bad_rows=args.skip_bad_rows,
        )


def reference_answer(record: dict) -> str | None:
    """A row's reference answer: ``answer`` (GSM8K's worked answer: the part after ``####``), else ``gt`` or
    ``final_answer``."""
    for key in ("answer", "gt", "final_answer"):
        value = record.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
            return str(value).split("####")[-1].strip()
    return None


def labeled_record(row: InputRow, labels: StepLabels, reference: str, soft: bool) -> dict:
    """The TRL stepwise row of one labelled solution: the labelled steps (through the first error when the
    steps after it are unlabelled) and their labels, plus both label kinds and the rollout counts."""
    n = next((k for k, h in enumerate(labels.hard) if h is None), len(labels.hard))
    values = [s if soft and s is not None else float(h) for s, h in zip(labels.soft[:n], labels.hard[:n])]
    return {
        **({"id": row.record["id"]} if "id" in row.record else {}),
        "prompt": row.problem,
        "completions": row.steps[:n],
        "labels": values,
        "soft_labels": labels.soft,
        "hard_labels": labels.hard,
        "rollouts": labels.rollouts,
        "first_error": labels.first_error,
        "answer": reference,
    }


def label_chunk(
    generator, chunk: Sequence[InputRow | BadRow], options: LabelOptions
) -> tuple[list[dict], dict[str, int]]:
    """Labels the good rows of ``chunk`` in one :func:`mc_label` call and returns one output record per row,
    in order, with the counts ``rows`` (good and bad), ``rollouts`` and ``bad``.

    A row without a reference answer or with an empty step is bad, as is one the reader could not parse; the
    first bad row is raised unless ``options.skip_bad_rows`` (then its :meth:`BadRow.record` takes its
    place). The generator's own errors propagate.
    """
    good: list[tuple[InputRow, str]] = []
    records: list[dict | None] = []
    for row in chunk:
        if not isinstance(row, BadRow):
            reference = reference_answer(row.record)
            if reference is None:
                row = row.bad("no reference answer ('answer', 'gt' or 'final_answer')")
            elif any(not s.strip() for s in row.steps):
                row = row.bad("an empty step")
        if isinstance(row, BadRow):
            if not options.skip_bad_rows:
                raise row
            records.append(row.record())
        else:
            good.append((row, reference))
            records.append(None)
    labels = mc_label(
        generator, [r.problem for r, _ in good], [r.steps for r, _ in good], [a for _, a in good],
        rollouts=options.rollouts, method=options.method, hard=options.hard,
        max_new_tokens=options.max_new_tokens,
    )  # fmt: skip
    made = iter(labeled_record(r, lab, a, options.soft_labels) for (r, a), lab in zip(good, labels))
    counts = {
        "rows": len(chunk),
        "rollouts": sum(lab.total_rollouts for lab in labels),
        "bad": len(chunk) - len(good),
    }
    return [rec if rec is not None else next(made) for rec in records], counts
