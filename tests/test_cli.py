"""``fastprm score`` end to end on a tiny checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from fastprm.cli import main
from fastprm.models import PRM


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def run(qwen_prm_dir, tmp_path, rows, *extra):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, rows)
    src.write_bytes(src.read_bytes().replace(b"\\xff", b"\xff"))  # a non-UTF-8 byte where a row asks for one
    code = main(
        [
            "score",
            "--model",
            str(qwen_prm_dir),
            "--input",
            str(src),
            "--output",
            str(dst),
            "--quiet",
            "--dtype",
            "fp32",
            *extra,
        ]
    )
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
