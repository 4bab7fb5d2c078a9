"""One-line errors of ``fastprm train`` and ``fastprm eval`` / ``report`` (issue 10, defects 10 and 11): options
checked when parsed, files before any work, every data error named by file and line, never a traceback."""

from __future__ import annotations

import json

import pytest

from fastprm.cli import build_parser, main

GOOD = {"prompt": "1+1?", "completions": ["1+1=2.", "The answer is 2."], "labels": [True, True]}


def write_jsonl(path, rows):
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def error_of(*argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    message = exc.value.code
    assert isinstance(message, str) and "\n" not in message, message
    return message


BAD_OPTIONS = [
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--lr", "-1e-5"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--max-steps", "0"], "--max-steps"),
    (["train", "--batch-tokens", "0"], "--batch-tokens"),
    (["train", "--warmup", "-1"], "--warmup"),
    (["train", "--weight-decay", "inf"], "--weight-decay"),
    (["train", "--pos-weight", "0"], "--pos-weight"),
    (["train", "--lora-r", "-1"], "--lora-r"),
    (["train", "--eval-steps", "0"], "--eval-steps"),
    (["train", "--dtype", "fp16"], "--dtype"),
    (["train", "--label-mode", "first"], "--label-mode"),
    (["train", "--neutral", "maybe"], "--neutral"),
    (["train", "--data-format", "csv"], "--data-format"),
    (["eval", "processbench", "--threshold", "nan"], "--threshold"),
    (["eval", "processbench", "--threshold", "-inf"], "--threshold"),
    (["eval", "processbench", "--examples", "-1"], "--examples"),
    (["eval", "bon", "--orders", "0"], "--orders"),
    (["eval", "bon", "--aggregates", "min,max"], "--aggregates"),
]
REQUIRED = {
    "train": ["--model", "m", "--data", "d.jsonl", "--output", "o"],
    "eval": ["--scores", "s.jsonl"],
}


@pytest.mark.parametrize(("argv", "option"), BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_is_one_line_naming_it(capsys, argv, option):
    with pytest.raises(SystemExit) as exc:
        main([*argv, *REQUIRED[argv[0]]])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("fastprm ") and option in line


def test_train_dtype_takes_torch_names():
    parse = build_parser().parse_args
    for name, torch_name in [("bf16", "bfloat16"), ("bfloat16", "bfloat16"), ("float32", "float32")]:
        assert parse(["train", *REQUIRED["train"], "--dtype", name]).dtype == torch_name
    assert parse(["train", *REQUIRED["train"]]).dtype == "float32"
    assert (
        parse(["score", "--model", "m", "--input", "i", "--output", "o", "--dtype", "float16"]).dtype
        == "float16"
    )


# -- train: files and data ------------------------------------------------------------------------------


def train_error(model, data, tmp_path, *extra) -> str:
    return error_of(
        "train", "--model", model, "--data", data, "--output", tmp_path / "out", "--max-steps", "1", *extra
    )


def test_train_missing_files(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    assert (
        train_error(tmp_path, tmp_path / "no.jsonl", tmp_path)
        == f"fastprm train: --data {tmp_path / 'no.jsonl'}: no such file"
    )
    assert "--eval" in train_error(tmp_path, data, tmp_path, "--eval", tmp_path / "no.jsonl")
    assert "--model" in train_error(tmp_path / "nothing", data, tmp_path)
    assert "--lr-scheduler 'sideways'" in train_error(tmp_path, data, tmp_path, "--lr-scheduler", "sideways")
    assert "--resume" in train_error(tmp_path, data, tmp_path, "--resume", tmp_path / "ckpt")


def test_train_bad_model_json(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    (tmp_path / "model.json").write_text("{not json")
    assert "not a checkpoint folder or a model JSON" in train_error(tmp_path / "model.json", data, tmp_path)
    (tmp_path / "model.json").write_text('{"backbone": {}}')
    assert "'tokenizer'" in train_error(tmp_path / "model.json", data, tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"backbone": {}, "tokenizer": "t", "convention": "x"}))
    assert "unknown convention 'x'" in train_error(tmp_path / "model.json", data, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in train_error(empty, data, tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("rows.csv", "a,b\n", "unknown file type '.csv'"),
        ("rows.jsonl", '{"text": "x"}\n', "no known format"),
        (
            "rows.jsonl",
            json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "labels": [2, 1]}) + "\n",
            "rows.jsonl:2: label 0 is 2",
        ),
        (
            "rows.jsonl",
            json.dumps(GOOD) + '\n{"prompt": "p", "completions": ["ok \\ud800"], "labels": [1]}\n',
            "rows.jsonl:2: step 0 is not valid Unicode",
        ),
        ("rows.jsonl", b'{"prompt": "\xff"}\n', "rows.jsonl:1: not UTF-8"),
        ("rows.json", "[1, 2", "not a UTF-8 JSON file"),
    ],
)
def test_train_data_errors_are_one_line(qwen_prm_dir, tmp_path, name, content, expected):
    data = tmp_path / name
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert expected in train_error(qwen_prm_dir, data, tmp_path)
    assert not (tmp_path / "out").exists()


# -- eval and report ------------------------------------------------------------------------------------


def scored_row(**fields):
    return {"problem": "p", "steps": ["a", "b"], "label": -1, **fields, "scores": {"step_scores": [0.9, 0.8]}}


def test_eval_files(tmp_path):
    scores = write_jsonl(tmp_path / "s.jsonl", [scored_row(answer="1")])
    missing = tmp_path / "missing.jsonl"
    assert (
        error_of("eval", "processbench", "--scores", missing)
        == f"fastprm eval: --scores {missing}: no such file"
    )
    assert "no such file" in error_of("eval", "bon", "--scores", missing)
    assert "--output" in error_of("eval", "processbench", "--scores", scores, "--output", scores)
    assert "does not exist" in error_of(
        "eval", "processbench", "--scores", scores, "--output", tmp_path / "x" / "m.json"
    )
    (tmp_path / "figs").write_text("a file")
    assert "--plots" in error_of("eval", "processbench", "--scores", scores, "--plots", tmp_path / "figs")
    assert json.loads(scores.read_text())["scores"]["step_scores"] == [0.9, 0.8]


def test_eval_bad_scored_rows(tmp_path):
    bad_bytes = tmp_path / "bytes.jsonl"
    bad_bytes.write_bytes(json.dumps(scored_row()).encode() + b'\n{"p": "\xff"}\n')
    assert error_of("eval", "processbench", "--scores", bad_bytes).startswith(
        f"fastprm eval: {bad_bytes}:2: "
    )
    strings = write_jsonl(tmp_path / "str.jsonl", [{**scored_row(), "scores": {"step_scores": ["0.9"]}}])
    assert f"{strings}:1: 'step_scores' must hold numbers" in error_of(
        "eval", "processbench", "--scores", strings
    )
    agg = write_jsonl(
        tmp_path / "agg.jsonl", [{**scored_row(answer="1"), "scores": {"step_scores": [0.5], "min": "x"}}]
    )
    assert f"{agg}:1: scores['min']" in error_of("eval", "bon", "--scores", agg, "--aggregates", "min")


def test_report_errors(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "m.json").write_text("{not json")
    message = error_of("report", "--metrics", tmp_path / "m.json", "--output", tmp_path / "r.html")
    assert message.startswith(f"fastprm report: {tmp_path / 'm.json'}: not a JSON file")
    assert "does not exist" in error_of(
        "report", "--metrics", tmp_path, "--output", tmp_path / "no" / "r.html"
    )
    assert "--metrics" in error_of(
        "report", "--metrics", tmp_path / "m.json", "--output", tmp_path / "m.json"
    )


@pytest.mark.parametrize(
    ("command", "option"),
    [("score", "--num-workers 2"), ("score", "--ray-address auto"), ("label", "--output-format parquet"),
     ("label", "--batch-rows 3"), ("score", "--gpus-per-worker 1")],
)  # fmt: skip
def test_ray_options_without_ray_are_refused(tmp_path, command, option):
    """An option of --ray given without it would be ignored: a run meant for a cluster would quietly run in
    one process."""
    first = {"score": ["--model", tmp_path / "m"], "label": ["--generator", "synthetic"]}[command]
    message = error_of(
        command, *first, "--input", tmp_path / "in.jsonl", "--output", tmp_path / "o", *option.split()
    )
    assert (
        message == f"fastprm {command}: {option.split()[0]} is an option of --ray: add --ray, or leave it out"
    )
