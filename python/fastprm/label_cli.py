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

from .cli import on_ray, refuse_ray_options
from .io import BadRow, check_input_file, json_text, one_line, read_rows
from .labeling.rows import LabelOptions, label_chunk
from .search_cli import load_generator


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
    """``fastprm label``; with ``--ray``: :mod:`fastprm.distributed.cli`."""
    from tqdm import tqdm

    if args.ray:
        return on_ray("label", args)
    refuse_ray_options("label", args)

    try:
        check_input_file(args.input, "--input")
    except ValueError as err:
        raise SystemExit(f"fastprm label: {err}") from None
    output = Path(args.output)
    if output.exists() and not args.resume:
        raise SystemExit(f"fastprm label: --output {output} exists; pass --resume to continue it")
    done = _resume_point(output) if args.resume else 0
    generator = load_generator(args, "label")
    options = LabelOptions.from_args(args)
    rows = itertools.islice(read_rows(args.input, args.split_steps), done, None)
    counts = {"rows": done, "rollouts": 0, "bad": 0}
    start = time.perf_counter()
    with open(output, "ab") as out, tqdm(unit=" rows", initial=done, disable=args.quiet) as bar:
        while chunk := list(itertools.islice(rows, args.chunk_rows)):
            try:
                records, chunk_counts = label_chunk(generator, chunk, options)
            except BadRow as row:
                raise SystemExit(
                    f"fastprm label: {row}; {counts['rows']} rows labelled in {output}"
                ) from None
            except Exception as err:  # the generator's, or a bad option: what is written stays
                raise SystemExit(
                    f"fastprm label: {one_line(err)}; {counts['rows']} rows labelled in {output} "
                    "(--resume continues)"
                ) from None
            out.write("".join(json_text(rec) + "\n" for rec in records).encode())
            out.flush()  # one write per chunk, then to disk: a kill loses at most it
            os.fsync(out.fileno())
            for key, n in chunk_counts.items():
                counts[key] += n
            bar.update(len(chunk))
            bar.set_postfix(rollouts_per_s=f"{counts['rollouts'] / (time.perf_counter() - start):.1f}")
    if not args.quiet:
        print(
            f"labelled {counts['rows']} rows -> {output}; {counts['rollouts']} rollouts this run"
            + (f"; {counts['bad']} bad rows recorded" if counts["bad"] else ""),
            file=sys.stderr,
        )
    return 0
