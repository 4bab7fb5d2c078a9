"""Fused step scoring (C++ on CPU) against the pure-PyTorch reference, eager and compiled, and memcpy.

    python benchmarks/bench_ops.py            # the realistic shapes of the issue
    python benchmarks/bench_ops.py --quick    # tiny shapes: checks that the script runs

Every method is timed in the same run, interleaved, on the same inputs; ratios are what to read.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

from common import markdown_table, time_interleaved, write_results
from fastprm import _native
from fastprm.ops import score_steps
from fastprm.ops.step_scoring.reference import find_steps_reference, score_steps_reference

SEP = 11
STEP_EVERY = 40  # about one separator per 40 rows, as in real step-by-step solutions

FULL_SHAPES = [  # (N, H, B)
    (8192, 896, 8),
    (65536, 896, 64),
    (65536, 896, 256),
    (16384, 3584, 8),
    (65536, 3584, 64),
    (65536, 3584, 256),
]
QUICK_SHAPES = [(2048, 128, 8), (4096, 256, 32)]


def make_batch(N: int, H: int, B: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cuts = torch.sort(torch.randint(1, N, (B - 1,), generator=gen)).values
    cu_seqlens = torch.cat([torch.tensor([0]), cuts, torch.tensor([N])]).to(torch.int32)
    input_ids = torch.randint(0, SEP, (N,), generator=gen, dtype=torch.int32)
    input_ids[torch.rand(N, generator=gen) < 1 / STEP_EVERY] = SEP
    hidden = torch.randn(N, H, generator=gen).to(dtype)
    weight = (torch.randn(2, H, generator=gen) / H**0.5).to(dtype)
    bias = torch.zeros(2, dtype=dtype)
    return hidden, weight, bias, input_ids, cu_seqlens


def fused(hidden, weight, bias, input_ids, cu_seqlens):
    return score_steps(hidden, weight, bias, input_ids=input_ids, cu_seqlens=cu_seqlens, sep_token_ids=SEP)


def reference(hidden, weight, bias, input_ids, cu_seqlens):
    step_index, cu_steps = find_steps_reference(input_ids, cu_seqlens, torch.tensor([SEP]))
    return score_steps_reference(hidden, weight, bias, step_index, cu_steps)


compiled_reference = torch.compile(reference)


def training_loss(scores) -> torch.Tensor:
    """What a PRM trainer back-propagates: per-step terms plus the per-sequence reductions."""
    finite = scores.num_steps > 0
    return scores.step_logits.sum() + scores.min[finite].sum() + scores.log_prod[finite].sum()


def bench_shape(N: int, H: int, B: int, dtype: torch.dtype, repeats: int) -> dict:
    hidden, weight, bias, input_ids, cu = make_batch(N, H, B, dtype)
    K = int((input_ids == SEP).sum())
    # Bytes the forward must read: the step rows, the ids it scans, the head.
    must_read = (
        K * H * hidden.element_size() + input_ids.numel() * input_ids.element_size() + weight.numel() * 4
    )
    src = torch.empty(must_read, dtype=torch.uint8)
    dst = torch.empty_like(src)

    forward = {
        "fused": lambda: fused(hidden, weight, bias, input_ids, cu),
        "eager": lambda: reference(hidden, weight, bias, input_ids, cu),
        "compiled": lambda: compiled_reference(hidden, weight, bias, input_ids, cu),
        "memcpy": lambda: dst.copy_(src),
    }
    fwd = time_interleaved(forward, repeats)

    leaf = hidden.clone().requires_grad_()
    w_leaf = weight.clone().requires_grad_()

    def fwd_bwd(fn):
        def run():
            leaf.grad = w_leaf.grad = None
            training_loss(fn(leaf, w_leaf, bias, input_ids, cu)).backward()

        return run

    train = {
        name: fwd_bwd(fn)
        for name, fn in (("fused", fused), ("eager", reference), ("compiled", compiled_reference))
    }
    bwd = time_interleaved(train, max(3, repeats // 2))
    return {
        "N": N,
        "H": H,
        "B": B,
        "K": K,
        "dtype": str(dtype).removeprefix("torch."),
        "fwd_fused_ms": fwd["fused"] * 1e3,
        "fwd_eager_ms": fwd["eager"] * 1e3,
        "fwd_compiled_ms": fwd["compiled"] * 1e3,
        "memcpy_ms": fwd["memcpy"] * 1e3,
        "fwd_x_eager": fwd["eager"] / fwd["fused"],
        "fwd_x_compiled": fwd["compiled"] / fwd["fused"],
        "fwd_of_memcpy_bw": fwd["memcpy"] / fwd["fused"],
        "fwd_GBps": must_read / fwd["fused"] / 1e9,
        "train_fused_ms": bwd["fused"] * 1e3,
        "train_eager_ms": bwd["eager"] * 1e3,
        "train_compiled_ms": bwd["compiled"] * 1e3,
        "train_x_eager": bwd["eager"] / bwd["fused"],
        "train_x_compiled": bwd["compiled"] / bwd["fused"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, to check that the script runs")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--name", default=None, help="results file name (default bench_ops[_quick])")
    args = parser.parse_args()

    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    repeats = 3 if args.quick else args.repeats
    rows = []
    for dtype_name in args.dtypes.split(","):
        for N, H, B in shapes:
            row = bench_shape(N, H, B, getattr(torch, dtype_name), repeats)
            rows.append(row)
            print(
                f"{row['dtype']:>8} N={N:>6} H={H:>5} B={B:>4} K={row['K']:>5} | fwd {row['fwd_fused_ms']:8.3f} ms  "
                f"x{row['fwd_x_eager']:5.1f} eager  x{row['fwd_x_compiled']:5.1f} compiled  "
                f"{100 * row['fwd_of_memcpy_bw']:5.1f}% of memcpy ({row['fwd_GBps']:.1f} GB/s) | "
                f"fwd+bwd {row['train_fused_ms']:8.2f} ms  x{row['train_x_eager']:5.2f} eager  "
                f"x{row['train_x_compiled']:5.2f} compiled",
                flush=True,
            )
    columns = [
        "dtype", "N", "H", "B", "K", "fwd_fused_ms", "fwd_x_eager", "fwd_x_compiled", "fwd_of_memcpy_bw",
        "fwd_GBps", "train_fused_ms", "train_x_eager", "train_x_compiled",
    ]  # fmt: skip
    command = "python benchmarks/bench_ops.py " + shlex.join(sys.argv[1:])
    name = args.name or ("bench_ops_quick" if args.quick else "bench_ops")
    path = write_results(
        name, command.strip(), rows, markdown_table(rows, columns), {"isa": _native.native.selected_isa()}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
