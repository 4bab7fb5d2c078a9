"""``fastprm label``: Monte Carlo step labels for a JSONL file of solutions, streamed a chunk at a time into
TRL stepwise rows that ``fastprm train`` reads, resumable after an interruption.

Each chunk is appended in one write and flushed to disk. ``--resume`` keeps the complete lines already in
``--output`` (cutting a line a kill left half-written), skips that many input rows and goes on; chunks start
at the same rows as in an uninterrupted run, so a seeded generator writes the same labels.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

from .io import BadRow, InputRow, check_input_file, json_text, one_line, read_rows
from .search_cli import load_generator


def reference_answer(record: dict) -> str | None:
    """A row's reference answer: ``answer`` (GSM8K's worked answer: the part after ``####``), else ``gt`` or
    ``final_answer``."""
    for key in ("answer", "gt", "final_answer"):
        value = record.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
            return str(value).split("####")[-1].strip()
    return None


def labeled_record(row: InputRow, labels, reference: str, soft: bool) -> dict:
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


def _resume_point(path: Path) -> int:
    """Rows already in ``path`` (complete lines); a trailing partial line is cut off."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
    return data[:keep].count(b"\n")


def label(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .labeling import mc_label

    try:
        check_input_file(args.input, "--input")
    except ValueError as err:
        raise SystemExit(f"fastprm label: {err}") from None
    output = Path(args.output)
    if output.exists() and not args.resume:
        raise SystemExit(f"fastprm label: --output {output} exists; pass --resume to continue it")
    done = _resume_point(output) if args.resume else 0
    generator = load_generator(args)
    hard = float(args.hard) if args.hard not in ("any", "majority") else args.hard
    rows = itertools.islice(read_rows(args.input, args.split_steps), done, None)
    counts = {"rows": done, "rollouts": 0, "bad": 0}
    start = time.perf_counter()
    with open(output, "ab") as out, tqdm(unit=" rows", initial=done, disable=args.quiet) as bar:
        while chunk := list(itertools.islice(rows, args.chunk_rows)):
            good, records = [], []
            for row in chunk:
                reason = row.reason if isinstance(row, BadRow) else None
                reference = None if reason else reference_answer(row.record)
                if reason is None and reference is None:
                    reason = "no reference answer ('answer', 'gt' or 'final_answer')"
                elif reason is None and any(not s.strip() for s in row.steps):
                    reason = "an empty step"
                if reason is not None and not isinstance(row, BadRow):
                    row = BadRow(args.input, row.line, reason, row.record.get("id"))
                if isinstance(row, BadRow):
                    if not args.skip_bad_rows:
                        raise SystemExit(f"fastprm label: {row}; {counts['rows']} rows labelled in {output}")
                    records.append(row.record())
                    counts["bad"] += 1
                else:
                    good.append((row, reference))
                    records.append(None)
            try:
                labels = mc_label(
                    generator, [r.problem for r, _ in good], [r.steps for r, _ in good], [a for _, a in good],
                    rollouts=args.rollouts, method=args.method, hard=hard, max_new_tokens=args.max_new_tokens,
                )  # fmt: skip
            except Exception as err:  # the generator's, or a bad option: what is written stays
                raise SystemExit(
                    f"fastprm label: {one_line(err)}; {counts['rows']} rows labelled in {output} "
                    "(--resume continues)"
                ) from None
            made = iter(labeled_record(r, lab, a, args.labels == "soft") for (r, a), lab in zip(good, labels))
            lines = [json_text(rec if rec is not None else next(made)) + "\n" for rec in records]
            out.write("".join(lines).encode())  # one write per chunk, then to disk: a kill loses at most it
            out.flush()
            os.fsync(out.fileno())
            counts["rows"] += len(chunk)
            counts["rollouts"] += sum(lab.total_rollouts for lab in labels)
            bar.update(len(chunk))
            bar.set_postfix(rollouts_per_s=f"{counts['rollouts'] / (time.perf_counter() - start):.1f}")
    if not args.quiet:
        print(
            f"labelled {counts['rows']} rows -> {output}; {counts['rollouts']} rollouts this run"
            + (f"; {counts['bad']} bad rows recorded" if counts["bad"] else ""),
            file=sys.stderr,
        )
    return 0
