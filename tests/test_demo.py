"""The demo's synthetic data: labels are exact, solutions differ, some correct themselves; the pipeline runs."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from fastprm.cli import main
from fastprm.demo import make_problem, pipeline


def first_wrong_step(problem: str, steps: list[str]) -> int:
    """Checks a solution against the problem from scratch: index of its first wrong step, or -1."""
    value = int(re.search(r"has (\d+)", problem).group(1))
    addends = [int(b) for b in re.findall(r"(?:gets|finds|buys|wins) (\d+)", problem)]
    for k, step in enumerate(steps):
        if step.startswith("the answer is"):
            return -1 if int(step.split()[3]) == value else k
        x, b, y = (int(v) for v in re.fullmatch(r"(-?\d+) \+ (\d+) = (-?\d+) \.", step).groups())
        if x != value or b != addends[k] or y != x + b:
            return k
        value = y
    raise AssertionError("no final answer")


def test_labels_are_the_first_wrong_step():
    rng = random.Random(0)
    rows = [r for p in range(300) for r in make_problem(rng, p, 8)]
    for row in rows:
        assert row["label"] == first_wrong_step(row["problem"], row["steps"]), row
    labels = [r["label"] for r in rows]
    assert 0.25 < labels.count(-1) / len(labels) < 0.6
    assert {0, 1, 2, 3} <= set(labels)


def test_solutions_differ_and_some_correct_themselves():
    rng = random.Random(1)
    problems = [make_problem(rng, p, 8) for p in range(200)]
    answers_per_problem = [len({r["steps"][-1] for r in rows}) for rows in problems]
    assert sum(n > 1 for n in answers_per_problem) > 150
    corrected = [r for rows in problems for r in rows if any(s.startswith("wait") for s in r["steps"])]
    assert corrected and all(r["label"] >= 0 for r in corrected)
    assert any(r["steps"][-1] == f"the answer is {r['answer']} ." for r in corrected)


def test_pipeline_runs_end_to_end(tmp_path, capsys):
    """Every stage on a tiny budget (quality is `make demo`'s job): report, metrics and scores exist."""
    argv = ["demo", "--workdir", str(tmp_path), "--train-problems", "40", "--test-problems", "4"]
    assert main([*argv, "--max-steps", "3"]) == 0
    assert (tmp_path / "report.html").exists()
    processbench = json.loads((tmp_path / "processbench.json").read_text())
    bon = json.loads((tmp_path / "bon.json").read_text())
    assert 0.0 <= processbench["steps"]["auroc"] <= 1.0
    assert {"majority", "random", "oracle"} <= set(bon["accuracy"])
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == 4 * 8 and all("scores" in row for row in scored)
    printed = capsys.readouterr().out
    assert (
        "[6/6] report" in printed
        and "search accuracy" in printed
        and "best-of-8 accuracy" in printed
        and str(tmp_path) in printed
    )


def test_pipeline_is_fastprm_commands():
    """The demo is a list of fastprm argv lists; every one parses (the demo imports nothing from the CLI)."""
    from fastprm.cli import build_parser

    steps = pipeline(Path("w"), max_steps=7, seed=3)
    assert [argv[0] for _, argv in steps] == [
        "train",
        "score",
        "eval",
        "eval",
        "search",
        "search",
        "eval",
        "report",
    ]
    parser = build_parser()
    for _, argv in steps:
        parser.parse_args(argv)
    assert steps[0][1][steps[0][1].index("--max-steps") + 1] == "7"
