"""``fastprm eval processbench|bon`` (metrics of rows scored by ``fastprm score``), ``fastprm eval search``
(accuracy of ``fastprm search`` outputs) and ``fastprm report``.

The options are defined and checked in :mod:`fastprm.cli`; these handlers read and check the files, compute
the metrics (:mod:`fastprm.metrics`, whose rule for missing scores they follow: a null step score is never
correct, a row with no scored step is no ProcessBench prediction) and write them.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import sys
from pathlib import Path

from .io import (
    AtomicOutput,
    check_input_file,
    check_output_file,
    json_safe,
    json_text,
    one_line,
    row_problem_and_steps,
)
from .metrics.answers import answer_key, answers_equal, extract_answer
from .metrics.bon import Problem, best_of_n
from .metrics.processbench import Sample, evaluate_processbench
from .report.html import write_report
from .report.tables import metrics_tables, text_table

EXAMPLE_STEP_CHARS = 300  # step text kept per example solution in the metrics JSON (for its figure)


def read_scored(path: str) -> tuple[list[tuple[int, dict]], int]:
    """(line number, row) of every scored row of a ``fastprm score`` output, and the number of bad-row
    records (``{"error": ...}``, written by ``--skip-bad-rows``) skipped. Any problem ends the command with
    one line naming the file and line."""
    rows, skipped = [], 0
    for line_no, row in _json_lines(path):
        if isinstance(row, dict) and "error" in row and "scores" not in row:
            skipped += 1
            continue
        scores = row.get("scores") if isinstance(row, dict) else None
        if not isinstance(scores, dict) or not isinstance(scores.get("step_scores"), list):
            raise _fail(f"{path}:{line_no}: no 'scores' (is this a fastprm score output?)")
        if not all(_is_score(s) for s in scores["step_scores"]):
            raise _fail(f"{path}:{line_no}: 'step_scores' must hold numbers (or null)")
        rows.append((line_no, row))
    if not rows:
        raise _fail(f"{path}: no scored rows")
    return rows, skipped


def _json_lines(path: str):
    """(line number, decoded JSON) of every non-blank line; a line that is not JSON ends the command."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield line_no, json.loads(raw.decode("utf-8"))
            except ValueError as err:  # not JSON, or not UTF-8
                raise _fail(f"{path}:{line_no}: {err}") from None


def _is_score(value: object) -> bool:
    return value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def _score(value: object) -> float:
    """A score of the JSON as a float: null (no score) is NaN."""
    return math.nan if value is None else float(value)


def _fail(message: str) -> SystemExit:
    return SystemExit(f"fastprm eval: {message}")


def subset_of(row_id: object) -> str:
    """ProcessBench subset from a row id: ``gsm8k-12`` -> ``gsm8k``; ``all`` when the id has no such form."""
    if isinstance(row_id, str):
        prefix, _, number = row_id.rpartition("-")
        if prefix and number.isdigit():
            return prefix
    return "all"


def _check_files(args: argparse.Namespace, inputs: list[tuple[str, str]] | None = None) -> None:
    """The input files (default ``--scores``) exist, and the outputs can be written without touching them."""
    inputs = [("--scores", args.scores)] if inputs is None else inputs
    try:
        for option, path in inputs:
            check_input_file(path, option)
        if args.output:
            check_output_file(args.output, "--output", inputs)
        if args.plots and Path(args.plots).exists() and not Path(args.plots).is_dir():
            raise ValueError(f"--plots {args.plots}: not a folder")
    except ValueError as err:
        raise _fail(str(err)) from None


def _publish(metrics: dict, args: argparse.Namespace) -> None:
    """Prints the tables; writes the JSON (--output) and the figures (--plots)."""
    metrics = json_safe(metrics)
    print("\n\n".join(text_table(t) for t in metrics_tables(metrics)))
    if args.output:
        with AtomicOutput(args.output) as out:
            out.write(json_text(metrics, indent=1) + "\n")
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


def eval_processbench(args: argparse.Namespace) -> int:
    _check_files(args)
    rows, skipped = read_scored(args.scores)
    samples = []
    for line_no, row in rows:
        label = row.get("label")
        if isinstance(label, bool) or not isinstance(label, int) or label < -1:
            raise _fail(f"{args.scores}:{line_no}: 'label' must be an integer >= -1")
        step_scores = [_score(s) for s in row["scores"]["step_scores"]]
        samples.append(Sample(args.subset or subset_of(row.get("id")), label, step_scores))
    metrics = evaluate_processbench(samples, threshold=args.threshold)
    examples = [
        _example(args.scores, line_no, row, sample, predicted)
        for (line_no, row), sample, predicted in zip(rows, samples, metrics["predictions"])
        if predicted is not None  # a row with no scored step has nothing to draw
    ][: args.examples]
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


def _example(path: str, line_no: int, row: dict, sample: Sample, predicted: int) -> dict:
    """One solution of the metrics JSON, drawn as step-score bars by the report."""
    try:
        steps = row_problem_and_steps(row)[1]
    except ValueError as err:
        raise _fail(f"{path}:{line_no}: {err}") from None
    return {
        "id": row.get("id", f"line {line_no}"),
        "label": sample.label,
        "predicted": predicted,
        "steps": [s[:EXAMPLE_STEP_CHARS] for s in steps],
        "step_scores": sample.step_scores,
    }


def _solution_text(row: dict) -> str:
    if isinstance(row.get("solution"), str):
        return row["solution"]
    return "\n\n".join(row_problem_and_steps(row)[1])


def eval_bon(args: argparse.Namespace) -> int:
    _check_files(args)
    rows, skipped = read_scored(args.scores)
    groups: dict[str, list[tuple[int, dict]]] = {}
    for line_no, row in rows:
        if args.group_key not in row:
            raise _fail(f"{args.scores}:{line_no}: no group key {args.group_key!r}")
        key = row[args.group_key]
        groups.setdefault(key if isinstance(key, str) else json.dumps(key, sort_keys=True), []).append(
            (line_no, row)
        )
    problems = [_problem(args, members) for members in groups.values()]
    metrics = best_of_n(problems, args.aggregates, bases=args.orders, seed=args.seed)
    unscored = sum(not row["scores"]["step_scores"] for _, row in rows)
    _publish(
        {
            "kind": "best_of_n",
            "scores_file": args.scores,
            "skipped_rows": skipped,
            "unscored_rows": unscored,
            **metrics,
        },
        args,
    )
    return 0


def _problem(args: argparse.Namespace, members: list[tuple[int, dict]]) -> Problem:
    """The candidates of one problem: their correctness, answers and aggregated scores (null: none)."""
    answers, correct = [], []
    for line_no, row in members:
        where = f"{args.scores}:{line_no}"
        try:
            answer = extract_answer(_solution_text(row))
        except ValueError as err:
            raise _fail(f"{where}: {err}") from None
        answers.append(answer_key(answer))
        if args.correct_key:
            if not isinstance(row.get(args.correct_key), bool):
                raise _fail(f"{where}: no boolean {args.correct_key!r}")
            correct.append(row[args.correct_key])
        elif args.answer_key in row:
            gold = str(row[args.answer_key])
            # The gold field may be a whole reference solution (GSM8K's "... #### 18"): take its answer.
            correct.append(answers_equal(answer, extract_answer(gold) or gold))
        else:
            raise _fail(f"{where}: no gold answer {args.answer_key!r} (or use --correct-key)")
    scores = {}
    for agg in args.aggregates:
        values = [row["scores"].get(agg) for _, row in members]
        bad = next((line for (line, _), v in zip(members, values) if not _is_score(v)), None)
        if bad is not None:
            raise _fail(f"{args.scores}:{bad}: scores[{agg!r}] must be a number or null")
        scores[agg] = [_score(v) for v in values]
    return Problem(correct, scores, answers)


def eval_search(args: argparse.Namespace) -> int:
    from .metrics.search import search_metrics

    inputs = [
        (option, path) for option, path in (("--best-of-n", args.best_of_n), ("--beam", args.beam)) if path
    ]
    if not inputs:
        raise _fail("give --best-of-n or --beam (fastprm search outputs)")
    _check_files(args, inputs)
    loaded: dict[str, list[dict]] = {"--best-of-n": [], "--beam": []}
    for option, path in inputs:
        for line_no, row in _json_lines(path):
            if not isinstance(row, dict) or not {"answer", "candidates", "counters"} <= row.keys():
                raise _fail(f"{path}:{line_no}: not a fastprm search row with a gold 'answer'")
            loaded[option].append(row)
    metrics = search_metrics(loaded["--best-of-n"], loaded["--beam"], args.aggregate)
    _publish({**metrics, "scores_file": ", ".join(p for p in (args.best_of_n, args.beam) if p)}, args)
    return 0


def report(args: argparse.Namespace) -> int:
    _plots()  # a clear message when matplotlib is missing
    try:
        check_output_file(args.output, "--output", [("--metrics", m) for m in args.metrics])
        out = write_report(args.metrics, args.output, args.title)
    except (OSError, ValueError) as err:
        raise SystemExit(f"fastprm report: {one_line(err)}") from None
    print(f"report -> {out}", file=sys.stderr)
    return 0
