"""``fastprm score`` end to end on a tiny checkpoint."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch

from fastprm.cli import main
from fastprm.models import PRM


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def score_argv(model, src, dst, *extra) -> list[str]:
    return ["score", "--model", str(model), "--input", str(src), "--output", str(dst), "--quiet", *extra]


def run(qwen_prm_dir, tmp_path, rows, *extra):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, rows)
    src.write_bytes(src.read_bytes().replace(b"\\xff", b"\xff"))  # a non-UTF-8 byte where a row asks for one
    code = main(score_argv(qwen_prm_dir, src, dst, "--dtype", "fp32", *extra))
    return code, [json.loads(line) for line in dst.read_text().splitlines()]


def test_every_input_format_and_input_order(qwen_prm_dir, tmp_path):
    rows = [
        {"problem": "2+2?", "steps": ["2+2=4.", "The answer is 4."]},
        {
            "id": "gsm8k-0",
            "generator": "x",
            "problem": "1+1?",
            "steps": ["1+1=2."],
            "final_answer_correct": True,
            "label": -1,
        },
        {"prompt": "3+3?", "completions": ["3+3=6.", "So 6.", "Done."], "labels": [True, True, True]},
        {"problem": "5+5?", "solution": "5+5=10.\n\nThe answer is 10."},
    ]
    code, out = run(qwen_prm_dir, tmp_path, rows, "--split-steps", "--chunk-rows", "3")
    assert code == 0
    assert [len(r["scores"]["step_scores"]) for r in out] == [2, 1, 3, 2]
    assert out[1]["label"] == -1 and out[2]["labels"] == [True, True, True]
    prm = PRM.from_pretrained(qwen_prm_dir, dtype=torch.float32)
    direct = prm.score(["3+3?"], [["3+3=6.", "So 6.", "Done."]])[0]
    torch.testing.assert_close(
        torch.tensor(out[2]["scores"]["step_scores"]), torch.tensor(direct.step_scores)
    )
    assert out[2]["scores"]["first_error"] == direct.first_error


def test_bad_row_names_its_line_or_is_recorded(qwen_prm_dir, tmp_path):
    rows = [
        {"problem": "ok", "steps": ["fine."]},
        "{not json",
        {"problem": "no steps", "steps": []},
        {"problem": "ok", "steps": ["fine."]},
        '{"problem": "bad \\xff byte", "steps": ["x"]}',
    ]
    with pytest.raises(SystemExit, match=r"in.jsonl:2"):
        run(qwen_prm_dir, tmp_path, rows)
    code, out = run(qwen_prm_dir, tmp_path, rows, "--skip-bad-rows")
    assert code == 0 and len(out) == 5
    assert "in.jsonl:2" in out[1]["error"] and "in.jsonl:3" in out[2]["error"]
    assert "in.jsonl:5" in out[4]["error"] and "utf-8" in out[4]["error"]
    assert "scores" in out[0] and "scores" in out[3]


def test_too_long_row_is_named(qwen_prm_dir, tmp_path):
    rows = [{"problem": "ok", "steps": ["fine."]}, {"problem": "long " * 50, "steps": ["x"]}]
    with pytest.raises(SystemExit, match=r"in.jsonl:2.*max_length"):
        run(qwen_prm_dir, tmp_path, rows, "--max-length", "40")
    _, out = run(qwen_prm_dir, tmp_path, rows, "--max-length", "40", "--truncation", "left-truncate-prompt")
    assert out[1]["scores"]["prompt_tokens_dropped"] > 0


def test_pre_tokenized_rows_find_their_steps(qwen_prm_dir, tmp_path):
    """Find mode: ids with the separator id in them (as an RL trainer holds them) score like the text row."""
    prm = PRM.from_pretrained(qwen_prm_dir, dtype=torch.float32)
    problem, steps = "3+3?", ["3+3=6.", "So 6."]
    from fastprm.tokenization import StepTokenizer

    ids = StepTokenizer(prm.tokenizer, prm.convention)([problem], [steps])[0].input_ids
    vocab = len(prm.tokenizer)
    rows = [
        {"input_ids": ids},
        {"input_ids": ids[:3]},  # no separator: no step
        {"input_ids": [1, vocab]},  # out of the vocabulary
        {"input_ids": "not ids"},
        {"problem": problem, "steps": steps},
    ]
    code, out = run(qwen_prm_dir, tmp_path, rows, "--skip-bad-rows")
    assert code == 0
    assert out[0]["scores"]["step_scores"] == out[4]["scores"]["step_scores"]
    assert len(out[0]["scores"]["step_scores"]) == 2
    assert "in.jsonl:2" in out[1]["error"] and "no step" in out[1]["error"]
    assert "in.jsonl:3" in out[2]["error"] and "token ids" in out[2]["error"]
    assert "in.jsonl:4" in out[3]["error"]


# -- issue 10: inputs checked first, outputs renamed into place at the end, one-line errors ---------------


def error_of(argv, code=None) -> str:
    """The message a command ends with: one line (no traceback), naming what is wrong."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    message = exc.value.code
    assert isinstance(message, str) and "\n" not in message, message
    return message


def test_output_that_is_the_input_is_refused(qwen_prm_dir, tmp_path, monkeypatch):
    """Defect 1: --output equal to --input left it empty with exit 0."""
    src = tmp_path / "rows.jsonl"
    write_jsonl(src, [{"problem": "1+1?", "steps": ["2."]}])
    before = src.read_bytes()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.jsonl").symlink_to(src)
    for same in (src, "rows.jsonl", f"../{tmp_path.name}/rows.jsonl", tmp_path / "link.jsonl"):
        message = error_of(score_argv(qwen_prm_dir, src, same))
        assert "--output" in message and "--input" in message
    assert src.read_bytes() == before


def test_missing_input_leaves_the_output_alone(qwen_prm_dir, tmp_path):
    """Defect 1: a mistyped --input wiped an existing --output."""
    dst = tmp_path / "scored.jsonl"
    dst.write_text("earlier results\n")
    message = error_of(score_argv(qwen_prm_dir, tmp_path / "typo.jsonl", dst))
    assert message == f"fastprm score: --input {tmp_path / 'typo.jsonl'}: no such file"
    assert dst.read_text() == "earlier results\n"
    assert "not a file" in error_of(score_argv(qwen_prm_dir, tmp_path, dst))
    src = write_jsonl_file(tmp_path / "in.jsonl", [{"problem": "p", "steps": ["s"]}])
    assert "does not exist" in error_of(score_argv(qwen_prm_dir, src, tmp_path / "no" / "out.jsonl"))
    assert "is a folder" in error_of(score_argv(qwen_prm_dir, src, tmp_path))
    assert "--model" in error_of(score_argv(tmp_path / "no-model", src, dst))
    assert list(tmp_path.glob("*.partial")) == []


def write_jsonl_file(path, rows):
    write_jsonl(path, rows)
    return path


def test_failing_run_leaves_no_output_and_names_the_partial_file(qwen_prm_dir, tmp_path):
    """Defect 2: a too-long row on line 50 of 100 (chunks of 10) left a partial output that looked complete."""
    rows = [{"id": f"r{i}", "problem": f"{i}+1?", "steps": [f"{i + 1}."]} for i in range(100)]
    rows[49] = {"id": "long", "problem": "long " * 60, "steps": ["x"]}
    src, dst = write_jsonl_file(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    dst.write_text("earlier results\n")
    message = error_of(score_argv(qwen_prm_dir, src, dst, "--chunk-rows", "10", "--max-length", "60"))
    (partial,) = tmp_path.glob("out.jsonl.*.partial")
    assert message.startswith(f"fastprm score: {src}:50: ") and "max_length=60" in message
    assert "row 50" not in message  # the row is named once
    assert f"{dst} was not written" in message and str(partial) in message
    assert dst.read_text() == "earlier results\n"
    written = [json.loads(line) for line in partial.read_text().splitlines()]
    assert [r["id"] for r in written] == [f"r{i}" for i in range(40)]  # the whole chunks before line 50


def test_bad_first_chunk_leaves_nothing(qwen_prm_dir, tmp_path):
    src = write_jsonl_file(tmp_path / "in.jsonl", ["{not json"])
    message = error_of(score_argv(qwen_prm_dir, src, tmp_path / "out.jsonl"))
    assert message.startswith(f"fastprm score: {src}:1: ") and message.endswith("out.jsonl was not written")
    assert list(tmp_path.iterdir()) == [src]


def test_interrupted_run_leaves_no_output(qwen_prm_dir, tmp_path, monkeypatch, capsys):
    """Defect 2, Ctrl-C: the scorer interrupted on its third chunk."""
    from fastprm.scoring import Scorer

    calls = []
    score_tokenized = Scorer.score_tokenized

    def interrupted(self, rows):
        calls.append(len(rows))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return score_tokenized(self, rows)

    monkeypatch.setattr(Scorer, "score_tokenized", interrupted)
    src = write_jsonl_file(tmp_path / "in.jsonl", [{"problem": f"{i}?", "steps": ["a."]} for i in range(9)])
    with pytest.raises(SystemExit) as exc:
        main(score_argv(qwen_prm_dir, src, tmp_path / "out.jsonl", "--chunk-rows", "3"))
    assert exc.value.code == 130
    (partial,) = tmp_path.glob("out.jsonl.*.partial")
    err = capsys.readouterr().err
    assert (
        f"fastprm score: interrupted; {tmp_path / 'out.jsonl'} was not written" in err and str(partial) in err
    )
    assert not (tmp_path / "out.jsonl").exists() and len(partial.read_text().splitlines()) == 6


def test_output_replaces_the_old_file_only_at_the_end(qwen_prm_dir, tmp_path):
    src = write_jsonl_file(tmp_path / "in.jsonl", [{"problem": "1+1?", "steps": ["2."]}])
    dst = tmp_path / "out.jsonl"
    dst.write_text("old\n")
    dst.chmod(0o640)
    assert main(score_argv(qwen_prm_dir, src, dst)) == 0
    assert "scores" in json.loads(dst.read_text()) and (dst.stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_lone_surrogate_is_a_bad_row(qwen_prm_dir, tmp_path):
    """Defect 3: a lone surrogate ended the run with a TypeError in the tokenizer, even with --skip-bad-rows."""
    rows = [
        {"problem": "1+1?", "steps": ["2."]},
        '{"id": "s1", "problem": "1+1?", "steps": ["ok", "ok \\ud800"]}',
        '{"problem": "\\udfff", "steps": ["a"]}',
    ]
    with pytest.raises(SystemExit, match=r"in\.jsonl:2: 'steps'\[1\] is not valid Unicode text"):
        run(qwen_prm_dir, tmp_path, rows)
    code, out = run(qwen_prm_dir, tmp_path, rows, "--skip-bad-rows")
    assert code == 0 and "scores" in out[0]
    assert out[1] == {
        "error": f"{tmp_path / 'in.jsonl'}:2: 'steps'[1] is not valid Unicode text (a lone surrogate)",
        "line": 2,
        "id": "s1",
    }
    assert out[2]["error"].endswith("in.jsonl:3: 'problem' is not valid Unicode text (a lone surrogate)")


def test_bad_row_records_keep_the_id_and_name_the_row_once(qwen_prm_dir, tmp_path):
    rows = [
        {"id": 7, "problem": "long " * 60, "steps": ["x"]},
        {"id": "b", "problem": "p", "steps": []},
        {"problem": "p", "steps": "a plain string"},
    ]
    code, out = run(qwen_prm_dir, tmp_path, rows, "--skip-bad-rows", "--max-length", "60")
    assert code == 0
    assert [r.get("id") for r in out] == [7, "b", None] and [r["line"] for r in out] == [1, 2, 3]
    assert all(not re.search(r"\brow \d", r["error"]) for r in out), out
    assert "in.jsonl:1: " in out[0]["error"] and "max_length=60" in out[0]["error"]


def nan_checkpoint(qwen_prm_dir, path):
    """The tiny Qwen2.5-Math-PRM with a NaN head bias: every step probability is NaN."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(qwen_prm_dir, path)
    tensors = load_file(path / "model.safetensors")
    tensors["score.2.bias"] = torch.full_like(tensors["score.2.bias"], math.nan)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return path


def strict(text: str) -> list[dict]:
    return [
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
        for line in text.splitlines()
    ]


def test_nan_scores_are_written_as_null_and_are_errors(qwen_prm_dir, tmp_path, capsys):
    """Defect 7: NaN was written into the JSON (invalid), and eval said F1 100 at 0.5 where its sweep said 0."""
    model = nan_checkpoint(qwen_prm_dir, tmp_path / "nan_prm")
    rows = [
        {"id": "t-0", "problem": "1+1?", "steps": ["1+1=2.", "So 2."], "label": -1},
        {"id": "t-1", "problem": "1+1?", "steps": ["1+1=3.", "So 3."], "label": 0},
    ]
    src, dst = write_jsonl_file(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    assert main(score_argv(model, src, dst, "--dtype", "fp32")) == 0
    scored = strict(dst.read_text())
    assert [r["scores"]["step_scores"] for r in scored] == [[None, None], [None, None]]
    assert all(r["scores"][agg] is None for r in scored for agg in ("min", "prod", "mean"))
    metrics = tmp_path / "pb.json"
    assert main(["eval", "processbench", "--scores", str(dst), "--output", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert m["predictions"] == [0, 0]  # a step with no score is an error at that step
    assert m["subsets"]["t"]["f1"] == 0.0 and m["best"]["f1"] == 0.0
    assert m["steps"]["n_nan"] == 3


def test_rows_whose_steps_were_all_dropped_are_not_predictions(qwen_prm_dir, tmp_path, capsys):
    """Defect 8: a row with every step dropped by truncation counted as a correct "-1" prediction."""
    from fastprm.models import PRM
    from fastprm.tokenization import StepTokenizer

    prm = PRM.from_pretrained(qwen_prm_dir, dtype=torch.float32)
    fits = len(StepTokenizer(prm.tokenizer, prm.convention)(["1+1?"], [["2."]])[0].input_ids)
    rows = [
        {"id": "t-0", "problem": "1+1?", "steps": ["2."], "label": -1},
        {"id": "t-1", "problem": "1+1?", "steps": ["two " * 30], "label": -1},
    ]
    src, dst = write_jsonl_file(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    argv = score_argv(qwen_prm_dir, src, dst, "--max-length", str(fits), "--truncation", "drop-steps")
    assert main([a for a in argv if a != "--quiet"]) == 0
    assert "1 rows with no step scored" in capsys.readouterr().err
    scored = strict(dst.read_text())
    assert scored[1]["scores"]["step_scores"] == [] and scored[1]["scores"]["steps_dropped"] == 1
    metrics = tmp_path / "pb.json"
    assert main(["eval", "processbench", "--scores", str(dst), "--output", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert m["unscored_rows"] == 1 and m["subsets"]["t"]["n_correct"] == 1 and m["predictions"][1] is None
    assert re.search(r"^rows with no scored step \(left out\)\s+1$", capsys.readouterr().out, re.MULTILINE)


def test_split_steps_output_has_the_scored_steps(qwen_prm_dir, tmp_path):
    rows = [{"problem": "5+5?", "solution": "5+5=10.\n\nThe answer is 10.\n\n"}]
    _, out = run(qwen_prm_dir, tmp_path, rows, "--split-steps")
    assert out[0]["steps"] == ["5+5=10.", "The answer is 10."] and len(out[0]["scores"]["step_scores"]) == 2
    _, out = run(qwen_prm_dir, tmp_path, rows, "--split-steps", r"\.")
    assert out[0]["steps"] == ["5+5=10", "The answer is 10"]


def test_torch_dtype_names(qwen_prm_dir, tmp_path):
    rows = [{"problem": "1+1?", "steps": ["2."]}]
    _, fp32 = run(qwen_prm_dir, tmp_path, rows)  # run() passes --dtype fp32
    _, float32 = run(qwen_prm_dir, tmp_path, rows, "--dtype", "float32")
    assert float32 == fp32
    _, bf16 = run(qwen_prm_dir, tmp_path, rows, "--dtype", "bfloat16")
    assert bf16[0]["scores"]["step_scores"][0] == pytest.approx(fp32[0]["scores"]["step_scores"][0], abs=0.02)


BAD_OPTIONS = [
    (["--chunk-rows", "0"], "--chunk-rows"),
    (["--chunk-rows", "-1"], "--chunk-rows"),
    (["--chunk-rows", "2.5"], "--chunk-rows"),
    (["--batch-tokens", "0"], "--batch-tokens"),
    (["--max-length", "0"], "--max-length"),
    (["--threshold", "nan"], "--threshold"),
    (["--threshold", "inf"], "--threshold"),
    (["--threshold", "1.5"], "--threshold"),
    (["--split-steps", ""], "--split-steps"),
    (["--split-steps", "("], "--split-steps"),
    (["--split-steps", "x*"], "--split-steps"),
    (["--dtype", "float64"], "--dtype"),
    (["--truncation", "cut"], "--truncation"),
    (["--layout", "ragged"], "--layout"),
    (["--convention", "qwen"], "--convention"),
]


@pytest.mark.parametrize(("extra", "option"), BAD_OPTIONS, ids=[" ".join(e) for e, _ in BAD_OPTIONS])
def test_bad_score_option_is_one_line_naming_it(tmp_path, capsys, extra, option):
    """Defect 10: --chunk-rows 0 scored nothing; the others were accepted or crashed. Checked before any
    file is read or model loaded."""
    with pytest.raises(SystemExit) as exc:
        main(["score", "--model", "m", "--input", "i", "--output", "o", *extra])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("fastprm score: error: argument") and option in line


def test_checkpoint_problems_are_one_line(qwen_prm_dir, tmp_path):
    src = write_jsonl_file(tmp_path / "in.jsonl", [{"problem": "p", "steps": ["s"]}])
    empty = tmp_path / "empty"
    empty.mkdir()
    message = error_of(score_argv(empty, src, tmp_path / "out.jsonl"))
    assert message.startswith(f"fastprm score: cannot load --model {empty}: ") and "config.json" in message
    broken = tmp_path / "broken"
    shutil.copytree(qwen_prm_dir, broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:1000])
    assert str(broken) in error_of(score_argv(broken, src, tmp_path / "out.jsonl"))
    not_ours = error_of(score_argv(qwen_prm_dir, src, tmp_path / "out.jsonl", "--convention", "fastprm"))
    assert not_ours.startswith(f"fastprm score: cannot load --model {qwen_prm_dir}: ")
    assert list(tmp_path.glob("*.partial")) == [] and not (tmp_path / "out.jsonl").exists()


def test_score_runs_the_calibrated_plan_and_reports_it(qwen_prm_dir, tmp_path, monkeypatch, capsys):
    """With calibration on, fastprm score calibrates once (cached), scores as the fixed plan does (1e-5),
    and ends with the plan and the peak RSS; a bad pin or route is one line naming it."""
    rows = [{"problem": "What is 2 + 3?", "steps": ["2 + 3 = 5.", "The answer is 5."]}] * 3
    _, fixed = run(qwen_prm_dir, tmp_path, rows)
    monkeypatch.setenv("FASTPRM_TUNE", "auto")
    monkeypatch.setenv("FASTPRM_CACHE_DIR", str(tmp_path / "cache"))
    src, dst = tmp_path / "in.jsonl", tmp_path / "tuned.jsonl"
    argv = [
        "score",
        "--model",
        str(qwen_prm_dir),
        "--input",
        str(src),
        "--output",
        str(dst),
        "--dtype",
        "fp32",
    ]
    assert main(argv) == 0
    assert list((tmp_path / "cache" / "tune").glob("*.json"))
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(
        r"(rows|packed|padded) layout.*GEMMs(, compiled)?(, fused layers)?; peak RSS \d+ MB", summary
    ), summary
    for got, expected in zip(map(json.loads, dst.read_text().splitlines()), fixed):
        assert got["scores"]["step_scores"] == pytest.approx(expected["scores"]["step_scores"], abs=1e-5)
    monkeypatch.setenv("FASTPRM_TUNE_PIN", "layout=diagonal")
    with pytest.raises(SystemExit, match="fastprm score: layout must be one of rows, packed, padded"):
        main([*argv, "--quiet"])
    monkeypatch.delenv("FASTPRM_TUNE_PIN")
    with pytest.raises(
        SystemExit, match=r"fastprm score: gemm_route 'fp32' cannot run a torch\.float32 model"
    ):
        main([*argv, "--quiet", "--gemm-route", "fp32"])
