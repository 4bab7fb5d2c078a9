"""Where a fused scoring forward spends its time: per-part seconds, share and GEMM rate.

    python benchmarks/bench_score.py --shape 0.5b --layers 24 --rows 60      # makes the checkpoint first
    python benchmarks/bench_forward_breakdown.py --model /tmp/fastprm-bench-score/qwen25-math-prm-0.5b-24l

Scores real ProcessBench rows (as bench_score does) with the fused decoder layers under the oneDNN GEMM route
and wall-clock timers around each part of a fused layer: RMSNorm, the QKV GEMM, rotary, attention, the
gate/up GEMMs with the SwiGLU (fastprm's SwiGLU GEMM where it runs, else oneDNN's post-ops), o_proj and
down_proj; "other" is the rest of the call (Python, batching, the head). The machine is synchronous on CPU, so the timers add up to the call. The fastest of
--repeats calls counts. GEMM rates are the parts' linear FLOPs over their seconds: compare them with the
dense ceiling bench_score measures (the same shapes alone).
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench_score import cpu_results_name, load_rows
from common import markdown_table, write_results
from fastprm.machine import cpu_description
from fastprm.models import PRM, fused_layers, onednn_linear
from fastprm.scoring import Scorer


class Timers:
    """Seconds and FLOPs per part, added up by the wrappers :meth:`wrap` puts in place."""

    def __init__(self) -> None:
        self.seconds: collections.Counter = collections.Counter()
        self.flops: collections.Counter = collections.Counter()

    def wrap(self, owner: object, name: str, part: str, flops: Callable | None = None) -> None:
        """Replaces ``owner.name`` with a wrapper adding its seconds (and ``flops(args, out)``) to ``part``."""
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def wrapper(*args, **kwargs):
            begin = time.perf_counter()
            out = inner(*args, **kwargs)
            self.seconds[part] += time.perf_counter() - begin
            if flops is not None:
                self.flops[part] += flops(args, out)
            return out

        setattr(owner, name, wrapper)


def instrument(timers: Timers) -> None:
    """Timers on the parts of a fused layer; each GEMM's FLOPs are 2 x rows x in x out."""
    timers.wrap(fused_layers, "rms_norm_cpu", "rms_norm")
    timers.wrap(fused_layers, "rotary_cpu_", "rotary")
    timers.wrap(fused_layers.varlen_attention, "varlen_attention", "attention")
    timers.wrap(
        fused_layers, "_linear", "qkv GEMM", lambda a, out: 2 * a[0].shape[0] * a[0].shape[1] * out.shape[1]
    )
    timers.wrap(
        fused_layers._Merged, "swiglu", "gate/up GEMMs + SwiGLU",
        lambda a, out: 4 * a[1].shape[0] * a[1].shape[1] * out.shape[1],
    )  # fmt: skip
    timers.wrap(
        onednn_linear, "linear", "o_proj + down_proj GEMMs",
        lambda a, out: 2 * out.numel() // out.shape[-1] * a[0].in_features * a[0].out_features,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a checkpoint folder bench_score made")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--layout", choices=["rows", "packed", "padded"], default="packed")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if not onednn_linear.available(dtype):
        sys.exit(
            f"bench_forward_breakdown: torch's oneDNN runs no {args.dtype} GEMMs on {cpu_description()[0]}"
        )
    prm = PRM.from_pretrained(Path(args.model), dtype=dtype)
    scorer = Scorer(
        prm,
        layout=args.layout,
        batch_tokens=args.batch_tokens,
        gemm_route="onednn",
        compile=False,
        fused=True,
    )
    problems, solutions = load_rows(args.rows)
    tokenized = scorer.tokenizer(problems, solutions)
    tokens = sum(len(t.input_ids) for t in tokenized)
    scorer.score_tokenized(tokenized[:2])  # first-call costs: weight packing, primitives
    timers = Timers()
    instrument(timers)
    best: tuple[float, dict[str, float], dict[str, int]] | None = None
    for _ in range(args.repeats):
        timers.seconds.clear()
        timers.flops.clear()
        begin = time.perf_counter()
        scorer.score_tokenized(tokenized)
        seconds = time.perf_counter() - begin
        if best is None or seconds < best[0]:
            best = (seconds, dict(timers.seconds), dict(timers.flops))
    seconds, parts, flops = best
    parts["other"] = seconds - sum(parts.values())
    rows = []
    for part, spent in parts.items():
        row = {"part": part, "seconds": spent, "share": spent / seconds}
        if part in flops:
            row["gflops"] = flops[part] / spent / 1e9
        rows.append(row)
    rows.sort(key=lambda r: -r["seconds"])
    head = (
        f"{args.rows} ProcessBench rows, {tokens} tokens, {args.dtype}, {scorer.plan.describe()}: "
        f"{tokens / seconds:.0f} tokens/s (the fastest of {args.repeats} calls, {seconds:.2f} s)"
    )
    table = markdown_table(rows, ["part", "seconds", "share", "gflops"])
    print(head + "\n\n" + table)
    name = f"{cpu_results_name('bench_forward_breakdown')}_{Path(args.model).name}_{args.dtype}"
    command = "python benchmarks/bench_forward_breakdown.py " + " ".join(sys.argv[1:])
    path = write_results(name, command, rows, head + "\n\n" + table, {"tokens": tokens, "seconds": seconds})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
