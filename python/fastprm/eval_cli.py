"""``fastprm eval processbench|bon`` (metrics of rows scored by ``fastprm score``) and ``fastprm report``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .io import row_problem_and_steps
from .metrics.answers import answer_key, answers_equal, extract_answer
from .metrics.best_of_n import AGGREGATES, Problem, best_of_n
from .metrics.processbench import Sample, evaluate_processbench
from .report.html import write_report
from .report.tables import metrics_tables, text_table

EXAMPLE_STEP_CHARS = 300  # step text kept per example solution in the metrics JSON (for its figure)


def read_scored(path: str) -> tuple[list[tuple[int, dict]], int]:
    """(line number, row) of every scored row of a ``fastprm score`` output, and the number of bad-row
    records (``{"error": ...}``, written by ``--skip-bad-rows``) skipped."""
    rows, skipped = [], 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SystemExit(f"fastprm eval: {path}:{line_no}: {err}") from None
            if isinstance(row, dict) and "error" in row and "scores" not in row:
                skipped += 1
                continue
            scores = row.get("scores") if isinstance(row, dict) else None
            if not isinstance(scores, dict) or not isinstance(scores.get("step_scores"), list):
                raise SystemExit(
                    f"fastprm eval: {path}:{line_no}: no 'scores' (is this a fastprm score output?)"
                )
            rows.append((line_no, row))
    if not rows:
        raise SystemExit(f"fastprm eval: {path}: no scored rows")
    return rows, skipped


def subset_of(row_id: object) -> str:
    """ProcessBench subset from a row id: ``gsm8k-12`` -> ``gsm8k``; ``all`` when the id has no such form."""
    if isinstance(row_id, str):
        prefix, _, number = row_id.rpartition("-")
        if prefix and number.isdigit():
            return prefix
    return "all"


def json_ready(value):
    """``value`` with NaN and infinities replaced by None, as JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _publish(metrics: dict, args: argparse.Namespace) -> None:
    """Prints the tables; writes the JSON (--output) and the figures (--plots)."""
    metrics = json_ready(metrics)
    print("\n\n".join(text_table(t) for t in metrics_tables(metrics)))
    if args.output:
        Path(args.output).write_text(
            json.dumps(metrics, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        print(f"metrics -> {args.output}", file=sys.stderr)
    if args.plots:
        plots = _plots()
        paths = plots.save_figures(plots.metrics_figures(metrics), args.plots)
        print(f"{len(paths)} figures -> {args.plots}", file=sys.stderr)


def _plots():
    try:
        from .report import plots
    except ImportError as err:
        raise SystemExit(f"fastprm: figures need matplotlib (pip install matplotlib): {err}") from None
    return plots


def _eval_processbench(args: argparse.Namespace) -> int:
    rows, skipped = read_scored(args.scores)
    samples = []
    for line_no, row in rows:
        label = row.get("label")
        if isinstance(label, bool) or not isinstance(label, int) or label < -1:
            raise SystemExit(f"fastprm eval: {args.scores}:{line_no}: 'label' must be an integer >= -1")
        samples.append(Sample(args.subset or subset_of(row.get("id")), label, row["scores"]["step_scores"]))
    metrics = evaluate_processbench(samples, threshold=args.threshold)
    examples = []
    for (line_no, row), sample, predicted in list(zip(rows, samples, metrics["predictions"]))[
        : args.examples
    ]:
        try:
            steps = row_problem_and_steps(row)[1]
        except ValueError as err:
            raise SystemExit(f"fastprm eval: {args.scores}:{line_no}: {err}") from None
        examples.append(
            {
                "id": row.get("id", f"line {line_no}"),
                "label": sample.label,
                "predicted": predicted,
                "steps": [s[:EXAMPLE_STEP_CHARS] for s in steps],
                "step_scores": sample.step_scores,
            }
        )
    _publish(
        {
            "kind": "processbench",
            "scores_file": args.scores,
            "skipped_rows": skipped,
            **metrics,
            "examples": examples,
        },
        args,
    )
    return 0


def _solution_text(row: dict) -> str:
    if isinstance(row.get("solution"), str):
        return row["solution"]
    return "\n\n".join(row_problem_and_steps(row)[1])


def _eval_bon(args: argparse.Namespace) -> int:
    rows, skipped = read_scored(args.scores)
    groups: dict[str, list[tuple[int, dict]]] = {}
    for line_no, row in rows:
        if args.group_key not in row:
            raise SystemExit(f"fastprm eval: {args.scores}:{line_no}: no group key {args.group_key!r}")
        key = row[args.group_key]
        groups.setdefault(key if isinstance(key, str) else json.dumps(key, sort_keys=True), []).append(
            (line_no, row)
        )
    problems = []
    for members in groups.values():
        answers, correct = [], []
        for line_no, row in members:
            try:
                answer = extract_answer(_solution_text(row))
            except ValueError as err:
                raise SystemExit(f"fastprm eval: {args.scores}:{line_no}: {err}") from None
            answers.append(answer_key(answer))
            if args.correct_key:
                if not isinstance(row.get(args.correct_key), bool):
                    raise SystemExit(
                        f"fastprm eval: {args.scores}:{line_no}: no boolean {args.correct_key!r}"
                    )
                correct.append(row[args.correct_key])
            elif args.answer_key in row:
                gold = str(row[args.answer_key])
                # The gold field may be a whole reference solution (GSM8K's "... #### 18"): take its answer.
                correct.append(answers_equal(answer, extract_answer(gold) or gold))
            else:
                raise SystemExit(
                    f"fastprm eval: {args.scores}:{line_no}: no gold answer {args.answer_key!r} (or use --correct-key)"
                )
        scores = {
            agg: [math.nan if row["scores"].get(agg) is None else row["scores"][agg] for _, row in members]
            for agg in args.aggregates
        }
        problems.append(Problem(correct, scores, answers))
    metrics = best_of_n(problems, args.aggregates, bases=args.orders, seed=args.seed)
    _publish({"kind": "best_of_n", "scores_file": args.scores, "skipped_rows": skipped, **metrics}, args)
    return 0


def _report(args: argparse.Namespace) -> int:
    _plots()  # a clear message when matplotlib is missing
    try:
        out = write_report(args.metrics, args.output, args.title)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"fastprm report: {err}") from None
    print(f"report -> {out}", file=sys.stderr)
    return 0


def _aggregates(text: str) -> list[str]:
    names = [a.strip() for a in text.split(",") if a.strip()]
    unknown = sorted(set(names) - set(AGGREGATES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"aggregates are a comma list of {', '.join(AGGREGATES)}")
    return names


def _add_outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", help="write the metrics JSON here (input of fastprm report)")
    parser.add_argument("--plots", metavar="DIR", help="write the PNG figures into this directory")


def add_eval_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``eval`` (``processbench``, ``bon``) and ``report`` to the ``fastprm`` sub-commands."""
    ev = subparsers.add_parser("eval", help="metrics of rows scored by fastprm score")
    kinds = ev.add_subparsers(dest="eval_command", required=True)

    pb = kinds.add_parser(
        "processbench", help="first-error F1 (ProcessBench), threshold sweep, step calibration"
    )
    pb.add_argument("--scores", required=True, help="JSONL written by fastprm score from ProcessBench rows")
    pb.add_argument("--threshold", type=float, default=0.5, help="a step below it is an error (default 0.5)")
    pb.add_argument(
        "--subset", default=None, help="subset of every row (default: the id prefix, gsm8k of gsm8k-12)"
    )
    pb.add_argument("--examples", type=int, default=4, help="solutions drawn as step-score bars (default 4)")
    _add_outputs(pb)
    pb.set_defaults(func=_eval_processbench)

    bon = kinds.add_parser(
        "bon", help="best-of-N accuracy of PRM selection, weighted and plain majority votes"
    )
    bon.add_argument(
        "--scores", required=True, help="JSONL written by fastprm score, several rows per problem"
    )
    bon.add_argument(
        "--group-key", default="problem", help="rows with equal values are one problem's candidates"
    )
    bon.add_argument(
        "--answer-key", default="answer", help="gold answer field (a bare answer or a solution stating one)"
    )
    bon.add_argument(
        "--correct-key", default=None, help="boolean field of recorded correctness, instead of gold"
    )
    bon.add_argument(
        "--aggregates", type=_aggregates, default=list(AGGREGATES), help="e.g. min,prod (default all)"
    )
    bon.add_argument(
        "--orders",
        type=int,
        default=4,
        help="seeded candidate orders per problem, each in all its cyclic shifts (default 4)",
    )
    bon.add_argument("--seed", type=int, default=0)
    _add_outputs(bon)
    bon.set_defaults(func=_eval_bon)

    report = subparsers.add_parser("report", help="HTML report (tables and figures) of fastprm eval outputs")
    report.add_argument(
        "--metrics", nargs="+", required=True, help="metrics JSON files or directories of them"
    )
    report.add_argument("--output", required=True, help="the HTML file to write")
    report.add_argument("--title", default="fastprm evaluation")
    report.set_defaults(func=_report)
