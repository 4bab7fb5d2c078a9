"""``fastprm demo``: offline, on CPU, train a PRM from scratch on synthetic arithmetic and evaluate it.

Steps: generate multi-step word problems with exact step labels (errors injected at known steps, some
solutions that notice and correct their error, several solutions per problem with different answers); build
a word-level tokenizer; train a small Qwen2-shaped PRM with ``fastprm train``; score held-out problems with
``fastprm score``; evaluate (step AUROC, ProcessBench-style F1, best-of-8 against majority vote and random)
with ``fastprm eval``; write figures and an HTML report with ``fastprm report``.

:func:`prepare` writes the data, tokenizer and model config; :func:`pipeline` lists the ``fastprm`` commands
that follow, which the CLI's ``demo`` command runs (this module imports nothing from the CLI).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["tom", "ann", "raj", "mia", "li", "sam"]
ITEMS = ["apples", "coins", "cards", "books", "pens"]
VERBS = ["gets", "finds", "buys", "wins"]
# Every true quantity is a single digit: a PRM trained from scratch for two minutes learns to check one-digit
# sums and copies (measured: step AUROC ~0.55 after 1,500 steps with quantities up to ~30, ~0.93 with 0-9).
MAX_VALUE = 9
STEP_ERRORS = ("arithmetic", "carry")
N_SOLUTIONS = 8  # solutions per held-out problem: best-of-8


def _near(rng: random.Random, x: int) -> int:
    """A plausible wrong value: x off by one or two, still a small non-negative number."""
    return rng.choice([x + d for d in (-2, -1, 1, 2) if x + d >= 0])


def _operations(rng: random.Random, a: int, n: int) -> list[int]:
    """Up to ``n`` amounts of 1-4 added one after another while the count stays within MAX_VALUE.

    Only additions: subtraction doubles the table of one-digit facts, and the PRM then needs about twice the
    training time to learn to check them (measured with this demo's model and budget).
    """
    amounts, value = [], a
    while len(amounts) < n and value < MAX_VALUE:
        b = rng.randint(1, min(4, MAX_VALUE - value))
        amounts.append(b)
        value += b
    return amounts


def _solution(rng: random.Random, a: int, amounts: list[int], error_rate: float):
    """Steps and ProcessBench label (first wrong step, or -1) of one solution.

    Errors: a wrong sum ("arithmetic"), a step that starts from a number other than the previous result or
    the problem's ("carry"), or a final answer that is not the last result ("answer"). A wrong sum or carry
    is sometimes noticed and corrected in the next step ("wait , ..."), so the final answer is right although
    the solution has an error.
    """
    error_at = rng.randrange(len(amounts) + 1) if rng.random() < error_rate else None
    kind = "answer" if error_at == len(amounts) else rng.choice(STEP_ERRORS)
    steps, value, label = [], a, -1
    for k, b in enumerate(amounts):
        true = value + b
        if k == error_at and kind != "answer":
            start = _near(rng, value) if kind == "carry" and k > 0 else value
            # A wrong sum (a carry error needs a previous step to carry from), or a right sum of a wrong start.
            result = _near(rng, true) if start == value else start + b
            steps.append(f"{start} + {b} = {result} .")
            label = len(steps) - 1
            if rng.random() < 0.25:
                steps.append(f"wait , {value} + {b} = {true} .")
            else:
                true = result
        else:
            steps.append(f"{value} + {b} = {true} .")
        value = true
    if kind == "answer" and error_at is not None:
        label = len(steps)
        value = _near(rng, value)
    steps.append(f"the answer is {value} .")
    return steps, label


def make_problem(rng: random.Random, pid: int, n_solutions: int) -> list[dict]:
    """One word problem and ``n_solutions`` solutions of it (ProcessBench rows plus the gold answer).

    Problems differ in difficulty (the share of their solutions with an error, 0.3-0.9), so on hard ones the
    majority answer is often wrong: the case where a PRM should beat majority voting.
    """
    a = rng.randint(1, MAX_VALUE - 3)
    amounts = _operations(rng, a, 3)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    verbs = " , then ".join(f"{rng.choice(VERBS)} {b}" for b in amounts)
    problem = f"{name} has {a} {item} . {name} {verbs} . how many {item} now ?"
    error_rate = rng.uniform(0.3, 0.9)
    rows = []
    for s in range(n_solutions):
        steps, label = _solution(rng, a, amounts, error_rate)
        rows.append(
            {
                "id": f"arith-{pid * n_solutions + s}",  # ProcessBench ids: subset-index
                "problem": problem,
                "steps": steps,
                "label": label,
                "answer": str(a + sum(amounts)),
            }
        )
    return rows


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


def prepare(workdir: Path, train_problems: int = 12000, test_problems: int = 150, seed: int = 0) -> None:
    """Writes the demo's inputs into ``workdir``: training rows (2 solutions per problem), held-out rows
    (:data:`N_SOLUTIONS` per problem), a word-level tokenizer and the new model's JSON config."""
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train_rows = [r for p in range(train_problems) for r in make_problem(rng, p, 2)]
    test_rows = [r for p in range(test_problems) for r in make_problem(rng, 10_000 + p, N_SOLUTIONS)]
    write_jsonl(
        workdir / "train.jsonl", [{k: r[k] for k in ("id", "problem", "steps", "label")} for r in train_rows]
    )
    write_jsonl(workdir / "test.jsonl", test_rows)
    print(
        f"[1/5] data: {len(train_rows)} training solutions, {test_problems} held-out problems x {N_SOLUTIONS}",
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


def pipeline(workdir: Path, max_steps: int = 1500, seed: int = 0) -> list[tuple[str, list[str]]]:
    """The demo's steps after :func:`prepare`, as (progress line or "", ``fastprm`` argv): train, score,
    evaluate, report. ``fastprm demo`` runs them one after the other."""
    w = str(workdir)
    figures = f"{w}/figures"
    return [
        ("[2/5] training a PRM from scratch", [
            "train", "--model", f"{w}/model.json", "--data", f"{w}/train.jsonl", "--output", f"{w}/prm",
            "--max-steps", str(max_steps), "--batch-size", "32", "--lr", "1e-3", "--warmup", "0.03",
            "--lr-scheduler", "constant_with_warmup", "--weight-decay", "0.01", "--packed",
            "--label-mode", "first_error", "--logging-steps", "50", "--save-steps", "100000", "--seed", str(seed),
        ]),
        ("[3/5] scoring held-out solutions", [
            "score", "--model", f"{w}/prm", "--input", f"{w}/test.jsonl", "--output", f"{w}/scored.jsonl",
            "--dtype", "fp32",
        ]),
        ("[4/5] evaluating", [
            "eval", "processbench", "--scores", f"{w}/scored.jsonl", "--output", f"{w}/processbench.json",
            "--plots", figures,
        ]),
        ("", ["eval", "bon", "--scores", f"{w}/scored.jsonl", "--output", f"{w}/bon.json", "--plots", figures]),
        ("[5/5] report", [
            "report", "--metrics", f"{w}/processbench.json", f"{w}/bon.json", "--output", f"{w}/report.html",
        ]),
    ]  # fmt: skip


def summary(workdir: Path) -> str:
    """The headline metrics of a finished demo in ``workdir``, and where its report is."""
    from .report.tables import number

    pb = json.loads((workdir / "processbench.json").read_text())
    acc = json.loads((workdir / "bon.json").read_text())
    rules = ", ".join(f"{rule} {number(acc['accuracy'][rule])}" for rule in acc["rules"])
    return "\n".join(
        [
            "\nfastprm demo, held-out problems:",
            f"  step AUROC                 {number(pb['steps']['auroc'])}",
            f"  ProcessBench-style F1      {number(pb['average']['f1'])} at threshold {pb['threshold']} "
            f"(best {number(pb['best']['f1'])} at {pb['best']['threshold']})",
            f"  best-of-{N_SOLUTIONS} accuracy         {rules}",
            f"report: {workdir / 'report.html'}",
        ]
    )
