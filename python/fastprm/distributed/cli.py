"""``fastprm score --ray`` and ``fastprm label --ray``: the one-process commands' rows, options and bad-row
handling, run by :func:`~.run.score_files` / :func:`~.run.label_files` on a Ray cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ray

from ..io import one_line
from .files import input_format
from .run import FileRun, RunFailed, Workers, label_files, score_files

EXIT_INTERRUPTED = 130


def score(args: argparse.Namespace) -> int:
    from ..cli import scorer_options
    from ..io import check_folder

    def run() -> FileRun:
        check_folder(args.model, "--model")
        load_options = {"convention": args.convention, "dtype": args.dtype, "device": args.device}
        return score_files(
            [args.input], args.output, args.model, _workers(args), output_format=args.output_format,
            split_steps=args.split_steps, skip_bad_rows=args.skip_bad_rows, load_options=load_options,
            scorer_options=scorer_options(args),
        )  # fmt: skip

    done = _run("score", args, run)
    if not args.quiet:
        c = done.counts
        print(
            f"scored {c.get('rows', 0)} rows ({c.get('tokens', 0)} tokens) on {args.num_workers} Ray workers "
            f"in {done.seconds:.1f} s (workers: {c.get('load_ms', 0) / 1000:.1f} s loading, "
            f"{c.get('score_ms', 0) / 1000:.1f} s scoring) -> {done.output} ({_shards(done)})"
            + (f"; {c['bad']} bad rows recorded" if c.get("bad") else "")
            + (f"; {c['unscored']} rows with no step scored" if c.get("unscored") else ""),
            file=sys.stderr,
        )
    return 0


def label(args: argparse.Namespace) -> int:
    from ..labeling.rows import LabelOptions
    from ..search import load

    if args.resume:
        raise SystemExit("fastprm label: --resume works in one process only; a --ray run writes a new folder")

    def run() -> FileRun:
        return label_files(
            [args.input], args.output, load.options_of(args), LabelOptions.from_args(args), _workers(args),
            output_format=args.output_format, split_steps=args.split_steps,
        )  # fmt: skip

    done = _run("label", args, run)
    if not args.quiet:
        c = done.counts
        print(
            f"labelled {c.get('rows', 0)} rows on {args.num_workers} Ray workers in {done.seconds:.1f} s -> "
            f"{done.output} ({_shards(done)}); {c.get('rollouts', 0)} rollouts"
            + (f"; {c['bad']} bad rows recorded" if c.get("bad") else ""),
            file=sys.stderr,
        )
    return 0


def _workers(args: argparse.Namespace) -> Workers:
    return Workers(args.num_workers, args.cpus_per_worker, args.gpus_per_worker, args.batch_rows)


def _run(command: str, args: argparse.Namespace, run) -> FileRun:
    """Checks the paths, joins (or starts) the cluster and runs; what a user can get wrong, a bad row and
    an interruption end the command with one line."""
    prefix = f"fastprm {command}"
    if not Path(args.input).exists():
        raise SystemExit(f"{prefix}: --input {args.input}: no such file or folder")
    if Path(args.output).exists():
        raise SystemExit(f"{prefix}: --output {args.output} exists; --ray writes a new folder of shards")
    try:
        input_format([args.input])
    except ValueError as err:
        raise SystemExit(f"{prefix}: {err}") from None
    if not ray.is_initialized():
        ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=not args.quiet)
    ray.data.DataContext.get_current().enable_progress_bars = not args.quiet
    try:
        return run()
    except ValueError as err:  # an option the workers' setup rejected before any row ran
        raise SystemExit(f"{prefix}: {one_line(err)}") from None
    except RunFailed as err:
        if isinstance(err.cause, KeyboardInterrupt):
            print(f"{prefix}: interrupted; {args.output} was not written; {err.note()}", file=sys.stderr)
            raise SystemExit(EXIT_INTERRUPTED) from None
        if (bad := err.bad_row) is not None:
            raise SystemExit(f"{prefix}: {bad}; {args.output} was not written; {err.note()}") from None
        print(f"{prefix}: failed; {args.output} was not written; {err.note()}", file=sys.stderr)
        raise err.cause from None


def _shards(done: FileRun) -> str:
    n = sum(1 for _ in done.output.glob(f"part-*.{done.output_format}"))
    return f"{n} {done.output_format} shards"
