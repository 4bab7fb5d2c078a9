"""``fastprm demo``: offline, on CPU, train a PRM from scratch on synthetic arithmetic and evaluate it.

Steps: generate multi-step word problems with exact step labels (errors injected at known steps, some
solutions that notice and correct their error, several solutions per problem with different answers); build
a word-level tokenizer; train a small Qwen2-shaped PRM with ``fastprm train``; score held-out problems with
``fastprm score``; evaluate (step AUROC, ProcessBench-style F1, best-of-8 against majority vote and random)
with ``fastprm eval``; search (``fastprm search``: best-of-8 and step-level beam search with the trained PRM
and the task's scripted noisy solver, :class:`fastprm.synthetic.ScriptedStepGenerator`, at about the same
number of generated steps); write figures and an HTML report with ``fastprm report``.

:func:`prepare` writes the data, tokenizer and model config; :func:`pipeline` lists the ``fastprm`` commands
that follow, which the CLI's ``demo`` command runs (this module imports nothing from the CLI).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .synthetic import N_SOLUTIONS, make_problem

# The search section: the scripted solver's per-step error rate, and beam search's width. Beam search keeps
# BEAM_WIDTH paths and expands each by N_SOLUTIONS / BEAM_WIDTH steps, so every depth generates as many steps
# as the N_SOLUTIONS best-of-N candidates do at each of theirs: about the same generation budget.
SEARCH_ERROR_RATE = 0.3
BEAM_WIDTH = 2


# Monte Carlo labels (--labels mc): the rollout policy and budget of the labelling quality check
# (tests/test_labeling.py: majority labels from 8 rollouts agree with the truth on >= 90% of steps).
MC_ROLLOUTS = 8
MC_ERROR_RATE = 0.1


def build_tokenizer(corpus: list[str], out: Path):
    """A word-level tokenizer over the demo's vocabulary (numbers are whole tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<pad>", "<unk>", "<bos>", "<step>"]
    numbers = [str(i) for i in range(-20, 100)]
    tok.train_from_iterator([*corpus, " ".join(numbers)], trainers.WordLevelTrainer(special_tokens=specials))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>"
    )
    fast.add_tokens(["<step>"], special_tokens=True)
    fast.save_pretrained(out)
    return fast


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def prepare(
    workdir: Path, train_problems: int = 12000, test_problems: int = 150, seed: int = 0, labels: str = "true"
) -> None:
    """Writes the demo's inputs into ``workdir``: training rows (2 solutions per problem), held-out rows
    (:data:`N_SOLUTIONS` per problem), a word-level tokenizer and the new model's JSON config. With
    ``labels="mc"`` the training rows carry no labels (``train_unlabeled.jsonl``): the pipeline labels them
    by Monte Carlo rollouts first."""
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train_rows = [r for p in range(train_problems) for r in make_problem(rng, p, 2)]
    test_rows = [r for p in range(test_problems) for r in make_problem(rng, 10_000 + p, N_SOLUTIONS)]
    (workdir / "train.jsonl").unlink(missing_ok=True)
    if labels == "mc":
        keep = ("id", "problem", "steps", "answer")
        write_jsonl(workdir / "train_unlabeled.jsonl", [{k: r[k] for k in keep} for r in train_rows])
    else:
        write_jsonl(
            workdir / "train.jsonl",
            [{k: r[k] for k in ("id", "problem", "steps", "label")} for r in train_rows],
        )
    write_jsonl(workdir / "test.jsonl", test_rows)
    problems = {r["problem"]: r["answer"] for r in test_rows}  # the held-out problems, once each
    write_jsonl(workdir / "search.jsonl", [{"problem": p, "answer": a} for p, a in problems.items()])
    print(
        f"[1/6] data: {len(train_rows)} training solutions, {test_problems} held-out problems x {N_SOLUTIONS}",
        flush=True,
    )
    tok = build_tokenizer(
        [r["problem"] + " " + " ".join(r["steps"]) for r in train_rows], workdir / "tokenizer"
    )
    spec = {
        "backbone": {
            "model_type": "qwen2", "vocab_size": len(tok), "hidden_size": 128, "intermediate_size": 384,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 256, "tie_word_embeddings": True,
        },
        "tokenizer": str(workdir / "tokenizer"),
        "convention": "token-classification",
        "separator": "<step>",
    }  # fmt: skip
    (workdir / "model.json").write_text(json.dumps(spec, indent=1))


def pipeline(
    workdir: Path, max_steps: int = 1500, seed: int = 0, labels: str = "true"
) -> list[tuple[str, list[str]]]:
    """The demo's steps after :func:`prepare`, as (progress line or "", ``fastprm`` argv): (Monte Carlo
    labels), train, score, evaluate, report. ``fastprm demo`` runs them one after the other."""
    w = str(workdir)
    figures = f"{w}/figures"
    mc = [
        (f"[1/6] Monte Carlo labels: {MC_ROLLOUTS} rollouts per step by the scripted solver "
         f"({MC_ERROR_RATE:.0%} step errors), majority rule", [
            "label", "--generator", "synthetic", "--error-rate", str(MC_ERROR_RATE), "--input",
            f"{w}/train_unlabeled.jsonl", "--output", f"{w}/train.jsonl", "--rollouts", str(MC_ROLLOUTS),
            "--hard", "majority", "--labels", "hard", "--chunk-rows", "2048", "--seed", str(seed), "--quiet",
        ]),
    ]  # fmt: skip
    return (mc if labels == "mc" else []) + [
        ("[2/6] training a PRM from scratch", [
            "train", "--model", f"{w}/model.json", "--data", f"{w}/train.jsonl", "--output", f"{w}/prm",
            "--max-steps", str(max_steps), "--batch-size", "32", "--lr", "1e-3", "--warmup", "0.03",
            "--lr-scheduler", "constant_with_warmup", "--weight-decay", "0.01", "--packed",
            "--label-mode", "first_error", "--logging-steps", "50", "--save-steps", "100000", "--seed", str(seed),
        ]),
        ("[3/6] scoring held-out solutions", [
            "score", "--model", f"{w}/prm", "--input", f"{w}/test.jsonl", "--output", f"{w}/scored.jsonl",
            "--dtype", "fp32",
        ]),
        ("[4/6] evaluating", [
            "eval", "processbench", "--scores", f"{w}/scored.jsonl", "--output", f"{w}/processbench.json",
            "--plots", figures,
        ]),
        ("", ["eval", "bon", "--scores", f"{w}/scored.jsonl", "--output", f"{w}/bon.json", "--plots", figures]),
        (f"[5/6] search with the trained PRM and a scripted solver ({SEARCH_ERROR_RATE:.0%} step errors)", [
            "search", "--model", f"{w}/prm", "--generator", "synthetic", "--error-rate", str(SEARCH_ERROR_RATE),
            "--input", f"{w}/search.jsonl", "--output", f"{w}/search_bon.jsonl", "--method", "best-of-n",
            "--n", str(N_SOLUTIONS), "--seed", str(seed), "--dtype", "fp32",
        ]),
        ("", [
            "search", "--model", f"{w}/prm", "--generator", "synthetic", "--error-rate", str(SEARCH_ERROR_RATE),
            "--input", f"{w}/search.jsonl", "--output", f"{w}/search_beam.jsonl", "--method", "beam",
            "--beam-width", str(BEAM_WIDTH), "--expansions", str(N_SOLUTIONS // BEAM_WIDTH), "--aggregate", "min",
            "--seed", str(seed), "--dtype", "fp32",
        ]),
        ("", [
            "eval", "search", "--best-of-n", f"{w}/search_bon.jsonl", "--beam", f"{w}/search_beam.jsonl",
            "--output", f"{w}/search.json", "--plots", figures,
        ]),
        ("[6/6] report", [
            "report", "--metrics", f"{w}/processbench.json", f"{w}/bon.json", f"{w}/search.json", "--output",
            f"{w}/report.html",
        ]),
    ]  # fmt: skip


def summary(workdir: Path) -> str:
    """The headline metrics of a finished demo in ``workdir``, and where its report is."""
    from .report.tables import number

    pb = json.loads((workdir / "processbench.json").read_text())
    acc = json.loads((workdir / "bon.json").read_text())
    rules = ", ".join(f"{rule} {number(acc['accuracy'][rule])}" for rule in acc["rules"])
    search = json.loads((workdir / "search.json").read_text())["methods"]
    methods = ", ".join(
        f"{name} {number(v['accuracy'])} ({v['generated_steps']:.0f} steps)" for name, v in search.items()
    )
    return "\n".join(
        [
            "\nfastprm demo, held-out problems:",
            f"  step AUROC                 {number(pb['steps']['auroc'])}",
            f"  ProcessBench-style F1      {number(pb['average']['f1'])} at threshold {pb['threshold']} "
            f"(best {number(pb['best']['f1'])} at {pb['best']['threshold']})",
            f"  best-of-{N_SOLUTIONS} accuracy         {rules}",
            f"  search accuracy            {methods}",
            f"report: {workdir / 'report.html'}",
        ]
    )
