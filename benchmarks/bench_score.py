"""Scoring throughput on a ProcessBench-shaped workload: fastprm vs the model-card recipe vs the bare backbone.

    python benchmarks/bench_score.py                 # reduced Qwen2.5-0.5B shape (4 layers), bf16 and fp32
    python benchmarks/bench_score.py --layers 24     # the full Qwen2.5-0.5B depth
    python benchmarks/bench_score.py --rows 40       # a quick run

Real problems and steps from ../shared/data/processbench (gsm8k), the real Qwen2 tokenizer, and a
random-weight checkpoint in the Qwen2.5-Math-PRM on-disk format. Every method scores the same rows with the
same weights and dtype; each runs in its own process (for its peak RSS), methods alternate, and the best of
--repeats runs counts. Ratios are what to read: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import markdown_table, write_results

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
METHODS = ("fastprm", "recipe_b1", "recipe_b8", "backbone_b1", "backbone_buckets")


def load_rows(n: int) -> tuple[list[str], list[list[str]]]:
    rows = json.loads((DATA / "processbench" / "gsm8k.json").read_text())[:n]
    return [r["problem"] for r in rows], [r["steps"] for r in rows]


def make_checkpoint(path: Path, layers: int) -> None:
    """Random weights, Qwen2.5-0.5B widths (hidden 896, 14 heads, 2 KV heads), ``layers`` deep."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2Model

    from fastprm.models import CONVENTIONS, PRM
    from fastprm.models.heads import MLPHead

    tok = AutoTokenizer.from_pretrained(DATA / "tokenizers" / "qwen2")
    tok.add_tokens(["<extra_0>"], special_tokens=True)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=896, intermediate_size=4864, num_hidden_layers=layers,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    prm = PRM(Qwen2Model(config), MLPHead(896, 2), CONVENTIONS["qwen2.5-math-prm"], tok)
    prm.save_pretrained(path, format="original")


def recipe_scores(model_dir: Path, dtype: torch.dtype, problems, solutions, batch: int) -> tuple[int, int]:
    """The Qwen2.5-Math-PRM model card: chat string, full forward of the padded batch (head on every token),
    softmax, Python masking per sample."""
    from transformers import AutoModel, AutoTokenizer

    from fastprm.models.checkpoint import read_tensors

    tok = AutoTokenizer.from_pretrained(model_dir)
    backbone = AutoModel.from_pretrained(model_dir, dtype=dtype).eval()
    head_w = read_tensors(model_dir, "score")
    H = backbone.config.hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(H, H), torch.nn.ReLU(), torch.nn.Linear(H, 2)).to(dtype)
    head.load_state_dict(head_w)
    system = "Please reason step by step, and put your final answer within \\boxed{}."
    step_sep_id = tok.encode("<extra_0>")[0]
    n_tokens = n_steps = 0
    with torch.no_grad():
        for i in range(0, len(problems), batch):
            texts = [
                f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n"
                + "<extra_0>".join(s) + "<extra_0><|im_end|>\n"
                for p, s in zip(problems[i : i + batch], solutions[i : i + batch])
            ]  # fmt: skip
            enc = tok(texts, return_tensors="pt", padding=True)
            hidden = backbone(**enc, use_cache=False).last_hidden_state
            probabilities = torch.softmax(head(hidden), dim=-1) * (enc.input_ids == step_sep_id).unsqueeze(-1)
            for sample in probabilities:
                n_steps += len(sample[sample != 0].view(-1, 2)[:, 1].cpu().tolist())
            n_tokens += int(enc.attention_mask.sum())
    return n_tokens, n_steps


def run_method(method: str, model_dir: Path, dtype: torch.dtype, n_rows: int, batch_tokens: int) -> dict:
    from fastprm.models import PRM
    from fastprm.scoring import Scorer, token_budget_batches

    problems, solutions = load_rows(n_rows)
    start = time.perf_counter()
    if method == "fastprm":
        scorer = Scorer(PRM.from_pretrained(model_dir, dtype=dtype), batch_tokens=batch_tokens)
        start = time.perf_counter()
        tokenized = scorer.tokenizer(problems, solutions)
        out = scorer.score_tokenized(tokenized)
        n_tokens, n_steps = sum(len(t.input_ids) for t in tokenized), sum(len(o.step_scores) for o in out)
    elif method.startswith("recipe"):
        n_tokens, n_steps = recipe_scores(
            model_dir, dtype, problems, solutions, 1 if method == "recipe_b1" else 8
        )
    else:  # the bare backbone over exactly fastprm's tokens, no head
        prm = PRM.from_pretrained(model_dir, dtype=dtype)
        scorer = Scorer(prm, batch_tokens=batch_tokens)
        tokenized = scorer.tokenizer(problems, solutions)
        lengths = [len(t.input_ids) for t in tokenized]
        start = time.perf_counter()
        with torch.inference_mode():
            if method == "backbone_b1":
                for t in tokenized:
                    prm.hidden_states(torch.tensor([t.input_ids]))
            else:
                for batch in token_budget_batches(lengths, batch_tokens):
                    T = max(lengths[i] for i in batch)
                    ids = torch.zeros(len(batch), T, dtype=torch.long)
                    mask = torch.zeros(len(batch), T, dtype=torch.long)
                    for b, i in enumerate(batch):
                        ids[b, : lengths[i]] = torch.tensor(tokenized[i].input_ids)
                        mask[b, : lengths[i]] = 1
                    prm.hidden_states(ids, attention_mask=mask)
        n_tokens, n_steps = sum(lengths), sum(len(t.step_ends) for t in tokenized)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rows_per_s": n_rows / seconds,
        "steps_per_s": n_steps / seconds,
        "tokens_per_s": n_tokens / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--workdir", default="/tmp/fastprm-bench-score")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_dir = Path(args.workdir) / f"qwen25-math-prm-0.5b-{args.layers}l"

    if args.child:
        method, dtype = args.child
        print(json.dumps(run_method(method, model_dir, getattr(torch, dtype), args.rows, args.batch_tokens)))
        return
    if not (DATA / "processbench").exists():
        sys.exit(f"shared data not found at {DATA}")
    if not (model_dir / "config.json").exists():
        make_checkpoint(model_dir, args.layers)

    rows = []
    for dtype in args.dtypes.split(","):
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for method in args.methods.split(","):
                cmd = [sys.executable, __file__, *sys.argv[1:], "--child", method, dtype]
                out = (
                    subprocess.run(cmd, check=True, capture_output=True, text=True)
                    .stdout.strip()
                    .splitlines()[-1]
                )
                result = json.loads(out)
                if method not in best or result["seconds"] < best[method]["seconds"]:
                    best[method] = result
        fast = best.get("fastprm")
        for method, r in best.items():
            row = {"dtype": dtype, "method": method, **r}
            if fast:
                row["fastprm_speedup"] = r["seconds"] / fast["seconds"]
            rows.append(row)
            print(
                f"{dtype:>8} {method:>17}: {r['rows_per_s']:7.2f} rows/s {r['steps_per_s']:8.1f} steps/s "
                f"{r['tokens_per_s']:9.0f} tok/s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                + (f"fastprm is x{row['fastprm_speedup']:.2f} faster" if fast else ""),
                flush=True,
            )
    columns = [
        "dtype",
        "method",
        "rows_per_s",
        "steps_per_s",
        "tokens_per_s",
        "peak_rss_mb",
        "fastprm_speedup",
    ]
    command = "python benchmarks/bench_score.py " + shlex.join(sys.argv[1:])
    path = write_results(
        "bench_score",
        command.strip(),
        rows,
        markdown_table(rows, columns),
        {"layers": args.layers, "rows": args.rows},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
