"""Monte Carlo labelling: quality on known truth, rollouts of binary vs linear search, and generation speed.

1. Quality (synthetic task, where every step's truth is known): the scripted solver as the rollout policy
   labels 240 solutions; agreement of the hard labels with the truth (steps through the first error) and the
   label noise (1 - agreement) for 2 / 4 / 8 / 16 rollouts and the ``any`` / ``majority`` rules, at the
   solver's 10% and 30% step-error rates; and the rollouts ``binary`` (OmegaPRM) needs against ``linear``,
   with how often both find the same first error.
2. Speed: ``TransformersGenerator`` on a tiny random causal LM (Qwen2 layout, the real Qwen2 tokenizer) over
   real GSM8K model solutions (``../shared/data/gsm8k/example_model_solutions.jsonl``, steps = lines):
   rollouts/s and generated tokens/s, linear and binary. Prefix sharing: transformers' ``generate``
   computes each of the n copies of a prefix on its own (no KV sharing between the sequences of a batch), so
   there is no "with sharing" row for it; vLLM's prefix caching (``VLLMGenerator``) would share them.

    python benchmarks/bench_label.py [--speed-solutions 8] [--rollouts 4]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_score import DATA
from common import markdown_table, write_results
from fastprm.labeling import mc_label
from fastprm.synthetic import ScriptedStepGenerator, make_problem


def quality() -> tuple[list[dict], list[dict]]:
    rng = random.Random(1)
    rows = [r for pid in range(60) for r in make_problem(rng, pid, 4)]
    args = ([r["problem"] for r in rows], [r["steps"] for r in rows], [r["answer"] for r in rows])
    truth = [[True] * len(r["steps"]) if r["label"] == -1 else [True] * r["label"] + [False] for r in rows]
    table, search = [], []
    for error_rate in (0.1, 0.3):
        for hard in ("majority", "any"):
            for n in (2, 4, 8, 16):
                labels = mc_label(ScriptedStepGenerator(error_rate, seed=0), *args, rollouts=n, hard=hard)
                pairs = [(lab.hard[k], t) for lab, ts in zip(labels, truth) for k, t in enumerate(ts)]
                agree = sum(a == b for a, b in pairs) / len(pairs)
                table.append(
                    {"solver_error_rate": error_rate, "hard": hard, "rollouts": n, "agreement": agree,
                     "label_noise": 1 - agree}
                )  # fmt: skip
        linear = mc_label(ScriptedStepGenerator(error_rate, seed=0), *args, rollouts=8, hard="majority")
        binary = mc_label(
            ScriptedStepGenerator(error_rate, seed=0), *args, rollouts=8, hard="majority", method="binary"
        )
        search.append(
            {
                "solver_error_rate": error_rate,
                "linear_rollouts": sum(lab.total_rollouts for lab in linear),
                "binary_rollouts": sum(lab.total_rollouts for lab in binary),
                "binary_over_linear": sum(lab.total_rollouts for lab in binary)
                / sum(lab.total_rollouts for lab in linear),
                "same_first_error": sum(a.first_error == b.first_error for a, b in zip(linear, binary))
                / len(rows),
            }
        )
    return table, search


def speed(n_solutions: int, rollouts: int, max_new_tokens: int) -> list[dict]:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from fastprm.search.generators import TransformersGenerator

    tok = AutoTokenizer.from_pretrained(DATA / "tokenizers" / "qwen2")
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    rows = []
    with open(DATA / "gsm8k" / "example_model_solutions.jsonl") as f:
        for line in f:
            r = json.loads(line)
            solution = r["6b_finetuning"]["solution"]
            steps = [s for s in solution.split("\n") if s.strip()]
            if len(steps) >= 2:
                rows.append((r["question"], steps, r["ground_truth"].split("A:")[-1].strip()))
            if len(rows) == n_solutions:
                break
    out = []
    for method in ("linear", "binary"):
        generator = TransformersGenerator(model, tok, seed=0, chat=False, stop="\n", batch_size=32)
        start = time.perf_counter()
        labels = mc_label(
            generator, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], rollouts=rollouts,
            method=method, max_new_tokens=max_new_tokens, stop="\n",
        )  # fmt: skip
        seconds = time.perf_counter() - start
        done = sum(lab.total_rollouts for lab in labels)
        out.append(
            {"method": method, "solutions": len(rows), "rollouts": done, "seconds": seconds,
             "rollouts_per_s": done / seconds, "generated_tokens_per_s": generator.generated_tokens / seconds}
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--speed-solutions", type=int, default=8)
    parser.add_argument("--rollouts", type=int, default=4, help="rollouts per prefix in the speed part")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    table, search = quality()
    rates = speed(args.speed_solutions, args.rollouts, args.max_new_tokens)
    markdown = "\n\n".join(
        [
            "## Quality on the synthetic task (240 solutions)",
            markdown_table(table, list(table[0])),
            "## binary vs linear (8 rollouts, majority)",
            markdown_table(search, list(search[0])),
            "## Speed: TransformersGenerator, tiny random Qwen2 LM, GSM8K model solutions",
            markdown_table(rates, list(rates[0])),
        ]
    )
    command = "python benchmarks/bench_label.py " + " ".join(sys.argv[1:])
    path = write_results("bench_label", command, [*table, *search, *rates], markdown)
    print(markdown)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
