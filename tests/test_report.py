"""``fastprm eval`` / ``fastprm report`` on small scored files: tables, metrics JSON, PNG figures, HTML."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import pytest

from fastprm.cli import main
from fastprm.eval_cli import subset_of
from fastprm.io import json_safe
from fastprm.metrics import predicted_first_error
from fastprm.report import Table, metrics_tables, text_table
from step_aggregates import step_aggregates

PNG = b"\x89PNG\r\n\x1a\n"


def run(*argv) -> int:
    """The commands as ``fastprm`` runs them."""
    return main([str(a) for a in argv])


def scored(problem: str, steps: list[str], step_scores: list[float], **fields) -> dict:
    """A row as ``fastprm score`` writes it: the input row plus its ``scores``."""
    scores = {"step_scores": step_scores, **step_aggregates(step_scores)}
    scores.update(
        first_error=predicted_first_error(step_scores, 0.5), steps_dropped=0, prompt_tokens_dropped=0
    )
    return {"problem": problem, "steps": steps, **fields, "scores": scores}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def strict_json(path):
    """JSON as a strict parser reads it: NaN or Infinity would fail."""
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


PROCESSBENCH_ROWS = [
    scored("1+1?", ["1+1=3.", "So 3."], [0.2, 0.4], id="gsm8k-0", label=0),
    scored("2+2?", ["2+2=4.", "So $4$."], [0.9, 0.8], id="gsm8k-1", label=-1),
    {"error": "in.jsonl:3: the solution has no steps"},  # a bad row recorded by --skip-bad-rows
    scored("x?", ["a", "b", r"so $\frac{1}{2", "d"], [0.9, 0.7, 0.3, 0.9], id="math-0", label=1),
    scored("y?", ["a"], [0.95], id="math-1", label=-1),
]


def eval_processbench(tmp_path, *extra) -> Path:
    """Runs ``fastprm eval processbench`` on :data:`PROCESSBENCH_ROWS`; returns the metrics JSON path."""
    out = tmp_path / "metrics" / "processbench.json"
    out.parent.mkdir(exist_ok=True)
    scores = write_jsonl(tmp_path / "pb.jsonl", PROCESSBENCH_ROWS)
    assert run("eval", "processbench", "--scores", scores, "--output", out, *extra) == 0
    return out


def test_eval_processbench(tmp_path, capsys):
    m = strict_json(eval_processbench(tmp_path))
    assert m["kind"] == "processbench" and m["skipped_rows"] == 1
    assert m["predictions"] == [0, -1, 2, -1]
    assert m["subsets"]["gsm8k"]["f1"] == 1.0
    assert m["subsets"]["math"]["error_accuracy"] == 0.0 and m["subsets"]["math"]["correct_accuracy"] == 1.0
    assert m["average"]["f1"] == 0.5
    assert [e["id"] for e in m["examples"]] == ["gsm8k-0", "gsm8k-1", "math-0", "math-1"]
    assert m["examples"][2]["steps"][2] == r"so $\frac{1}{2"
    printed = capsys.readouterr().out
    assert re.search(r"^gsm8k\s+1\s+1\s+100\.0\s+100\.0\s+100\.0$", printed, re.MULTILINE), printed
    assert re.search(r"^average\s+50\.0\s+100\.0\s+50\.0$", printed, re.MULTILINE), printed


def test_eval_processbench_subset_option_and_bad_label(tmp_path):
    out = tmp_path / "m.json"
    run(
        "eval",
        "processbench",
        "--scores",
        write_jsonl(tmp_path / "pb.jsonl", PROCESSBENCH_ROWS),
        "--subset",
        "mine",
        "--output",
        out,
    )
    assert list(strict_json(out)["subsets"]) == ["mine"]
    bad = [PROCESSBENCH_ROWS[0], scored("q", ["a"], [0.5], id="gsm8k-2", label="first")]
    with pytest.raises(SystemExit, match=r"bad\.jsonl:2: 'label'"):
        run("eval", "processbench", "--scores", write_jsonl(tmp_path / "bad.jsonl", bad))
    with pytest.raises(SystemExit, match=r"plain\.jsonl:1: no 'scores'"):
        run(
            "eval",
            "processbench",
            "--scores",
            write_jsonl(tmp_path / "plain.jsonl", [{"problem": "p", "steps": ["a"]}]),
        )


def bon_rows() -> list[dict]:
    def candidate(problem, gold, final, step_scores, ok):
        return scored(problem, ["Work.", final], step_scores, answer=gold, ok=ok)

    return [
        candidate("2+2?", "2 + 2 = 4\n#### 4", "The answer is 4.", [0.9, 0.8], True),
        candidate("2+2?", "2 + 2 = 4\n#### 4", "The answer is 5.", [0.95, 0.3], False),
        candidate("2+2?", "2 + 2 = 4\n#### 4", "The answer is $5$.", [0.6, 0.6], False),
        candidate("3+3?", "6", r"So \boxed{6.0}", [0.4, 0.4], True),
        candidate("3+3?", "6", "The answer is 7.", [0.7, 0.7], False),
    ]


def test_eval_bon(tmp_path, capsys):
    out = tmp_path / "bon.json"
    assert (
        run("eval", "bon", "--scores", write_jsonl(tmp_path / "bon.jsonl", bon_rows()), "--output", out) == 0
    )
    acc = strict_json(out)["accuracy"]
    # 2+2: min picks the right candidate, votes pick "5" (two votes, 0.9 > 0.8 weighted); 3+3: min picks "7".
    assert acc["prm-min"] == 0.5 and acc["prm-last"] == 0.5
    assert acc["weighted-min"] == 0.0
    assert acc["majority"] == 0.25  # 3+3: "6" and "7" tie
    assert acc["random"] == pytest.approx((1 / 3 + 1 / 2) / 2) and acc["oracle"] == 1.0
    assert re.search(r"^prm-min\s+50\.0$", capsys.readouterr().out, re.MULTILINE)
    # Recorded correctness instead of gold answers: the same here.
    run(
        "eval",
        "bon",
        "--scores",
        tmp_path / "bon.jsonl",
        "--correct-key",
        "ok",
        "--aggregates",
        "min",
        "--output",
        out,
    )
    again = strict_json(out)["accuracy"]
    assert again == {k: v for k, v in acc.items() if k in again} and "prm-last" not in again
    with pytest.raises(SystemExit, match="no gold answer 'gold'"):
        run("eval", "bon", "--scores", tmp_path / "bon.jsonl", "--answer-key", "gold")


def test_json_safe_and_subset_of():
    assert json_safe({"a": [1.0, math.nan, {"b": -math.inf}], "c": "x"}) == {
        "a": [1.0, None, {"b": None}],
        "c": "x",
    }
    assert [subset_of(i) for i in ("gsm8k-12", "olympiadbench-0", "gsm8k", "a-b", None, 3)] == [
        "gsm8k",
        "olympiadbench",
        "all",
        "all",
        "all",
        "all",
    ]


def test_text_table():
    table = Table("T", ["rule", "acc"], [["prm-min", "50.0"], ["majority", "n/a"]])
    assert text_table(table) == "T\nrule       acc\nprm-min   50.0\nmajority   n/a"


# ---------------------------------------------------------------- figures and the HTML report


@pytest.fixture
def plots():
    pytest.importorskip("matplotlib")
    from fastprm.report import plots

    return plots


def test_step_scores_figure(plots):
    from matplotlib.colors import to_rgba

    steps = ["Step one is long " * 20, r"unbalanced $\frac{1}{2", "third"]
    fig = plots.step_scores_figure(steps, [0.8, 0.2, 0.5], threshold=0.5, label=1, title="gsm8k-$0")
    ax = fig.axes[0]
    bars = ax.patches[:3]
    assert [b.get_facecolor() for b in bars] == [to_rgba(plots.GOOD), to_rgba(plots.BAD), to_rgba(plots.GOOD)]
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "step 0",
        "step 1 (weakest, gold error)",
        "step 2",
    ]
    texts = [t.get_text() for t in ax.texts]
    assert texts[0].endswith("…") and len(texts[0]) == 70 and texts[1] == r"unbalanced $\frac{1}{2"
    assert plots.png_bytes(fig).startswith(PNG)  # text with a stray $ is drawn as text, not mathtext


def test_best_of_n_figure(plots):
    curve = {
        "n": [1, 2, 4],
        "prm-min": [0.1, 0.3, 0.5],
        "random": [0.1, 0.1, 0.1],
        "oracle": [0.1, 0.2, None],
    }
    ax = plots.best_of_n_figure(curve, ["prm-min", "random", "oracle"]).axes[0]
    assert [line.get_label() for line in ax.lines] == ["prm-min", "random", "oracle"]
    assert [line.get_linestyle() for line in ax.lines] == ["-", "--", "--"]
    assert math.isnan(ax.lines[2].get_ydata()[2])  # None is a gap


def test_eval_plots_and_html_report(tmp_path, plots):
    figures = tmp_path / "figures"
    metrics_dir = eval_processbench(tmp_path, "--plots", figures).parent
    scores = write_jsonl(tmp_path / "bon.jsonl", bon_rows())
    run("eval", "bon", "--scores", scores, "--output", metrics_dir / "bon.json", "--plots", figures)
    solutions = [f"solution_{k}.png" for k in range(4)]
    assert sorted(p.name for p in figures.iterdir()) == [
        "best_of_n.png",
        "reliability.png",
        *solutions,
        "threshold_f1.png",
    ]
    assert all(p.read_bytes().startswith(PNG) for p in figures.iterdir())

    report = tmp_path / "report.html"
    assert run("report", "--metrics", metrics_dir, "--output", report) == 0
    page = report.read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 7 and all(base64.b64decode(i).startswith(PNG) for i in images)
    assert "<h2>Best-of-N</h2>" in page and "<h2>ProcessBench</h2>" in page
    assert "<td>prm-min</td><td>50.0</td>" in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # self-contained


def test_report_rejects_other_json(tmp_path, plots):
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(SystemExit, match="not a fastprm eval output"):
        run("report", "--metrics", tmp_path / "other.json", "--output", tmp_path / "r.html")
    with pytest.raises(SystemExit, match="no such metrics"):
        run("report", "--metrics", tmp_path / "missing", "--output", tmp_path / "r.html")


def test_eval_bon_candidates_without_a_score(tmp_path):
    """A null aggregate (no scored step) is never picked and weighs nothing; such candidates are counted."""
    rows = bon_rows()
    rows[0] = {**rows[0], "scores": {**rows[0]["scores"], **dict.fromkeys(("min", "prod", "mean", "last"))}}
    rows[0]["scores"]["step_scores"] = []
    out = tmp_path / "bon.json"
    assert run("eval", "bon", "--scores", write_jsonl(tmp_path / "bon.jsonl", rows), "--output", out) == 0
    m = strict_json(out)
    assert m["unscored_rows"] == 1
    assert m["accuracy"]["prm-min"] == 0.0  # 2+2: the right candidate has no score, so a wrong one is picked
    assert m["accuracy"]["majority"] == 0.25  # it still votes
    assert "1 candidates with no scored step" in text_table(metrics_tables(m)[0])
