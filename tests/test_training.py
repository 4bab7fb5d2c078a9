"""PRM training: loss goes down, checkpoints resume exactly, 2 gloo processes match 1 process, the trained
model scores with `fastprm score`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import checkpoints as ck

SCRIPT = Path(__file__).parent / "train_script.py"


def train(qwen_prm_dir, out, *extra, torchrun: int = 0):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={torchrun}",
            "--master_port=29517",
            str(SCRIPT),
        ]
    else:
        cmd = [sys.executable, str(SCRIPT)]
    subprocess.run(
        [*cmd, "--model", str(qwen_prm_dir), "--out", str(out), *extra],
        check=True,
        env=env,
        capture_output=True,
    )
    return torch.load(Path(out) / "params.pt"), torch.load(Path(out) / "losses.pt")


def max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_loss_decreases_and_model_saves_in_fastprm_format(qwen_prm_dir, tmp_path):
    from fastprm.models import PRM

    _, losses = train(qwen_prm_dir, tmp_path / "run", "--steps", "8")
    assert losses[-1] < losses[0]
    prm = PRM.from_pretrained(tmp_path / "run", dtype=torch.float32)  # the final save is fastprm's format
    assert prm.convention.name == "qwen2.5-math-prm"
    assert len(prm.score(["What is 2 + 3?"], [["2 + 3 = 5.", "The answer is 5."]])[0].step_scores) == 2


def test_resume_is_exact(qwen_prm_dir, tmp_path):
    straight, _ = train(qwen_prm_dir, tmp_path / "straight", "--steps", "6")
    train(qwen_prm_dir, tmp_path / "resumed", "--steps", "6", "--save-steps", "3")
    resumed, _ = train(
        qwen_prm_dir,
        tmp_path / "resumed",
        "--steps",
        "6",
        "--resume",
        str(tmp_path / "resumed" / "checkpoint-3"),
    )
    assert (tmp_path / "resumed" / "steps_run.txt").read_text() == "3"  # steps 4-6 only
    assert max_diff(straight, resumed) == 0.0


def test_two_gloo_processes_match_one_process(qwen_prm_dir, tmp_path):
    one, _ = train(qwen_prm_dir, tmp_path / "one", "--per-device-batch", "4", "--steps", "3")
    two, _ = train(qwen_prm_dir, tmp_path / "two", "--per-device-batch", "2", "--steps", "3", torchrun=2)
    assert max_diff(one, two) <= 1e-5


def test_token_budget_batches(qwen_prm_dir, tmp_path):
    _, losses = train(qwen_prm_dir, tmp_path / "budget", "--batch-tokens", "400", "--steps", "4")
    assert len(losses) == 4


def sgd_run_differences(qwen_prm_dir, tmp_path, *option: str) -> tuple[float, float]:
    """(max |loss diff|, max |parameter diff|) of 3 SGD steps with and without ``option``.

    SGD, not Adam: Adam's update is ~lr wherever a gradient is tiny, so 1e-7 of rounding in such an entry
    would move a parameter by ~lr; with SGD parameters differ by lr x the gradient difference
    (tests/test_packing.py compares the gradients themselves).
    """
    base, base_losses = train(qwen_prm_dir, tmp_path / "base", "--steps", "3", "--optim", "sgd")
    other, other_losses = train(qwen_prm_dir, tmp_path / "other", "--steps", "3", "--optim", "sgd", *option)
    return max(abs(a - b) for a, b in zip(base_losses, other_losses)), max_diff(base, other)


def test_packed_batches_train_like_padded_ones(qwen_prm_dir, tmp_path):
    loss_diff, param_diff = sgd_run_differences(qwen_prm_dir, tmp_path, "--packed")
    assert loss_diff <= 1e-5
    assert param_diff <= 1e-6


def test_gradient_checkpointing_changes_nothing_but_memory(qwen_prm_dir, tmp_path):
    loss_diff, param_diff = sgd_run_differences(qwen_prm_dir, tmp_path, "--gradient-checkpointing")
    assert loss_diff <= 1e-6
    assert param_diff <= 1e-6


def test_train_cli_from_a_new_model_config_then_score(tmp_path):
    import json

    from fastprm.cli import main

    tok = ck.qwen_tokenizer(tmp_path / "tok")
    backbone = ck.tiny_qwen2_config(len(tok)).to_dict()
    spec = {"backbone": backbone, "tokenizer": str(tmp_path / "tok"), "convention": "token-classification"}
    (tmp_path / "model.json").write_text(json.dumps(spec))
    rows = [
        {
            "prompt": f"What is {i} + 1?",
            "completions": [f"{i} + 1 = {i + 1}.", f"The answer is {i + 1}."],
            "labels": [True, i % 2 == 0],
        }
        for i in range(12)
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "trained"
    args = [
        "train",
        "--model",
        str(tmp_path / "model.json"),
        "--data",
        str(tmp_path / "train.jsonl"),
        "--eval",
        str(tmp_path / "train.jsonl"),
    ]
    assert (
        main(
            [
                *args,
                "--output",
                str(out),
                "--max-steps",
                "3",
                "--batch-size",
                "4",
                "--lr",
                "1e-3",
                "--eval-steps",
                "3",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "score",
                "--model",
                str(out),
                "--input",
                str(tmp_path / "train.jsonl"),
                "--output",
                str(tmp_path / "s.jsonl"),
                "--quiet",
            ]
        )
        == 0
    )
    scored = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(scored) == 12 and all(len(r["scores"]["step_scores"]) == 2 for r in scored)
    # --seed also draws a new model's random weights: the same seed trains the same model, another does not
    from safetensors.torch import load_file

    for name, seed in [("first", "42"), ("again", "42"), ("other", "7")]:
        assert main([*args, "--output", str(tmp_path / name), "--max-steps", "1", "--seed", seed]) == 0
    first, again, other = (load_file(tmp_path / n / "model.safetensors") for n in ("first", "again", "other"))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_lora_with_gradient_checkpointing_trains_adapters_and_saves_merged(qwen_prm_dir, tmp_path):
    """peft LoRA on every linear layer: embeddings stay frozen, merged adapters change the linear weights,
    and the saved model scores."""
    import json

    from fastprm.cli import main
    from fastprm.models import PRM

    rows = [
        {
            "prompt": f"What is {i} + 2?",
            "completions": [f"{i} + 2 = {i + 2 + i % 2}."],
            "labels": [i % 2 == 0],
        }
        for i in range(16)
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "lora"
    args = [
        "train",
        "--model",
        str(qwen_prm_dir),
        "--data",
        str(tmp_path / "train.jsonl"),
        "--output",
        str(out),
    ]
    options = [
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--lr",
        "1e-2",
        "--lora-r",
        "4",
        "--gradient-checkpointing",
    ]
    assert main([*args, *options]) == 0
    before = PRM.from_pretrained(qwen_prm_dir, dtype=torch.float32).state_dict()
    after = PRM.from_pretrained(out, dtype=torch.float32)
    trained = after.state_dict()
    assert torch.equal(trained["backbone.embed_tokens.weight"], before["backbone.embed_tokens.weight"])
    q_proj = "backbone.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(trained[q_proj], before[q_proj])
    assert not any("lora" in name for name in trained)
    assert len(after.score(["What is 1 + 2?"], [["1 + 2 = 3."]])[0].step_scores) == 1
