"""Fused decoder-layer kernels and fused layers against torch eager, as same-run ratios.

    python benchmarks/bench_layers.py --model /tmp/fastprm-bench-score/qwen25-math-prm-tiny-4l

1. Each kernel of fastprm.ops (rms_norm, the fused residual add + rms_norm, silu_mul, rotary_) against the
   torch ops transformers runs for it (the op's reference), at the tiny shape's widths over 4,096 tokens.
2. The whole backbone through ``fastprm.Scorer`` (``packed`` layout, PRM-shaped synthetic rows) with and
   without fused layers, per GEMM route and dtype.

Each pair runs interleaved, REPEATS times; the ratio reported is the median of the per-repeat ratios (old
time / new time), which holds up better than absolute times on a shared machine. Writes markdown to stdout
and, with --out, a JSON record with the CPU model, its ISA flags and the thread count.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from fastprm.machine import cpu_description
from fastprm.models import PRM
from fastprm.models.gemm_routes import available_gemm_routes
from fastprm.ops import (
    rms_norm,
    rms_norm_reference,
    rotary_,
    rotary_reference_,
    silu_mul,
    silu_mul_reference,
)
from fastprm.scoring import Scorer
from fastprm.tuning.calibration import calibration_rows

REPEATS = 7
TOKENS = 4096


def _seconds(fn, calls: int) -> float:
    begin = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - begin) / calls


def paired(old, new, calls: int = 1) -> dict:
    """Median over interleaved repeats of old / new seconds; the medians of each beside it."""
    old(), new()  # first-call costs
    olds, news = [], []
    for _ in range(REPEATS):
        olds.append(_seconds(old, calls))
        news.append(_seconds(new, calls))
    return {
        "old_ms": statistics.median(olds) * 1e3,
        "new_ms": statistics.median(news) * 1e3,
        "speedup": statistics.median(o / n for o, n in zip(olds, news)),
    }


def op_rows(hidden: int, intermediate: int, heads: int, heads_kv: int, dtype: torch.dtype) -> list[dict]:
    D = hidden // heads
    x, r = (torch.randn(TOKENS, hidden).to(dtype) for _ in range(2))
    w = torch.randn(hidden).to(dtype)
    gate_up = torch.randn(TOKENS, 2 * intermediate).to(dtype)
    qkv = torch.randn(TOKENS, (heads + 2 * heads_kv) * D).to(dtype)
    qk = qkv[:, : (heads + heads_kv) * D].view(TOKENS, heads + heads_kv, D)
    cos, sin = (torch.randn(TOKENS, D).to(dtype) for _ in range(2))
    cases = {
        f"rms_norm [{TOKENS}, {hidden}]": (
            lambda: rms_norm_reference(x, w, 1e-6),
            lambda: rms_norm(x, w, 1e-6),
        ),
        f"residual add + rms_norm [{TOKENS}, {hidden}]": (
            lambda: rms_norm_reference(x, w, 1e-6, r),
            lambda: rms_norm(x, w, 1e-6, r),
        ),
        f"silu_mul [{TOKENS}, 2 x {intermediate}]": (
            lambda: silu_mul_reference(gate_up),
            lambda: silu_mul(gate_up),
        ),
        # the eager path rotates q and k as separate [T, H, D] views, as transformers does
        f"rotary q+k [{TOKENS}, {heads}+{heads_kv}, {D}]": (
            lambda: rotary_reference_(qk, cos, sin),
            lambda: rotary_(qk, cos, sin),
        ),
    }
    with torch.inference_mode():
        return [{"op": name, "dtype": str(dtype), **paired(*fns, calls=20)} for name, fns in cases.items()]


def backbone_rows(model: Path, dtype: torch.dtype, n_tokens: int) -> list[dict]:
    prm = PRM.from_pretrained(model, dtype=dtype)
    rows = calibration_rows(prm.backbone.config.vocab_size, n_tokens)
    tokens = sum(len(r.input_ids) for r in rows)
    out = []
    for route in available_gemm_routes(prm.device, dtype):
        options = dict(layout="packed", batch_tokens=4096, gemm_route=route, compile=False)
        plain, fused = (Scorer(prm, **options, fused=f) for f in (False, True))
        result = paired(*(functools.partial(s.score_tokenized, rows) for s in (plain, fused)))
        result["old_tokens_per_s"] = tokens / result["old_ms"] * 1e3
        result["new_tokens_per_s"] = tokens / result["new_ms"] * 1e3
        out.append(
            {"model": model.name, "dtype": str(dtype), "gemm_route": route, "tokens": tokens, **result}
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a Qwen2.5-Math-PRM-format checkpoint")
    parser.add_argument("--tokens", type=int, default=8192, help="synthetic tokens per backbone measurement")
    parser.add_argument("--out", type=Path, help="JSON record to write")
    args = parser.parse_args()
    config = json.loads((args.model / "config.json").read_text())
    shape = [
        config[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
    ]
    cpu, flags = cpu_description()
    record = {
        "cpu": cpu,
        "isa_flags": flags,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "ops": [row for dtype in (torch.float32, torch.bfloat16) for row in op_rows(*shape, dtype)],
        "backbone": [
            row
            for dtype in (torch.float32, torch.bfloat16)
            for row in backbone_rows(args.model, dtype, args.tokens)
        ],
    }
    print(f"{cpu} [{' '.join(flags)}], {record['threads']} threads, torch {torch.__version__}\n")
    print(
        "| op | dtype | torch eager ms | fused ms | speedup (median of paired repeats) |\n|---|---|---|---|---|"
    )
    for row in record["ops"]:
        print(
            f"| {row['op']} | {row['dtype']} | {row['old_ms']:.3f} | {row['new_ms']:.3f} | {row['speedup']:.2f}x |"
        )
    print(
        "\n| backbone | dtype | GEMM route | tokens/s unfused | tokens/s fused | speedup |\n|---|---|---|---|---|---|"
    )
    for row in record["backbone"]:
        print(
            f"| {row['model']} packed | {row['dtype']} | {row['gemm_route']} | {row['old_tokens_per_s']:.0f} | "
            f"{row['new_tokens_per_s']:.0f} | {row['speedup']:.2f}x |"
        )
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
