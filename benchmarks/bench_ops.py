"""Fused step scoring (C++ on CPU) against the pure-PyTorch reference: throughput at the realistic shapes of
training and batch scoring, and the per-call latency of the small calls a search or a server makes.

    python benchmarks/bench_ops.py            # both tables at full size (minutes)
    python benchmarks/bench_ops.py --quick    # tiny shapes and few calls: checks that the script runs

Every method is timed in the same run, interleaved, on the same inputs; ratios are what to read. The results
record the CPU model, its ISA flags, fastprm's CPU code path, the torch version and the thread count.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch

from common import markdown_table, time_interleaved, write_results
from fastprm import _native
from fastprm.ops import find_steps, score_steps
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
LATENCY_STEPS = {1: 1, 8: 2, 64: 8}  # K steps -> B sequences of a small call
FULL_LATENCY_H = (896, 3584)
QUICK_LATENCY_H = (128,)
TABLES = ("throughput", "latency")


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


def make_small_call(K: int, H: int, dtype: torch.dtype, seed: int = 0):
    """A batch of LATENCY_STEPS[K] sequences with K steps in all, one every STEP_EVERY rows."""
    B = LATENCY_STEPS[K]
    gen = torch.Generator().manual_seed(seed)
    N = K * STEP_EVERY
    input_ids = torch.randint(0, SEP, (N,), generator=gen, dtype=torch.int32)
    input_ids[STEP_EVERY - 1 :: STEP_EVERY] = SEP
    cu_seqlens = torch.linspace(0, N, B + 1).round().to(torch.int32)
    hidden = torch.randn(N, H, generator=gen).to(dtype)
    weight = (torch.randn(2, H, generator=gen) / H**0.5).to(dtype)
    return hidden, weight, torch.zeros(2, dtype=dtype), input_ids, cu_seqlens


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


def call_times(fns: dict[str, Callable[[], object]], calls: int, blocks: int = 10) -> dict[str, list[float]]:
    """Seconds of each of ``calls`` single calls per function. The functions take turns in ``blocks`` blocks
    of back-to-back calls (the first call of each block untimed): back to back as in a loop of small calls,
    in turns so that drift and the other processes on the machine hit all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            fn()
            for _ in range(max(1, calls // blocks)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return times


def bench_latency(K: int, H: int, dtype: torch.dtype, calls: int) -> list[dict]:
    """Per-call microseconds (median and min) of a small call, fused vs the eager reference, with the step
    rows found (find mode), given by index (given mode) or passed alone (rows mode, what
    ``PRM.score_step_rows`` does)."""
    hidden, weight, bias, input_ids, cu = make_small_call(K, H, dtype)
    step_index, cu_steps = find_steps(input_ids, cu, SEP)
    step_rows = hidden[step_index]
    modes = {
        "find": (
            lambda: fused(hidden, weight, bias, input_ids, cu),
            lambda: reference(hidden, weight, bias, input_ids, cu),
        ),
        "given": (
            lambda: score_steps(hidden, weight, bias, step_index=step_index, cu_steps=cu_steps),
            lambda: score_steps_reference(hidden, weight, bias, step_index, cu_steps),
        ),
        "rows": (
            lambda: score_steps(step_rows, weight, bias, cu_steps=cu_steps),
            lambda: score_steps_reference(step_rows, weight, bias, None, cu_steps),
        ),
    }
    rows = []
    for mode, (fused_call, reference_call) in modes.items():
        times = call_times({"fused": fused_call, "reference": reference_call}, calls)
        us = {name: (statistics.median(t) * 1e6, min(t) * 1e6) for name, t in times.items()}
        rows.append({
            "dtype": str(dtype).removeprefix("torch."),
            "mode": mode,
            "K": K,
            "B": LATENCY_STEPS[K],
            "H": H,
            "fused_median_us": us["fused"][0],
            "fused_min_us": us["fused"][1],
            "reference_median_us": us["reference"][0],
            "reference_min_us": us["reference"][1],
            "x_reference_median": us["reference"][0] / us["fused"][0],
        })  # fmt: skip
    return rows


THROUGHPUT_COLUMNS = [
    "dtype", "N", "H", "B", "K", "fwd_fused_ms", "fwd_x_eager", "fwd_x_compiled", "fwd_of_memcpy_bw",
    "fwd_GBps", "train_fused_ms", "train_x_eager", "train_x_compiled",
]  # fmt: skip
LATENCY_COLUMNS = [
    "dtype", "mode", "K", "B", "H", "fused_median_us", "fused_min_us", "reference_median_us",
    "reference_min_us", "x_reference_median",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes and few calls, to check the script runs"
    )
    parser.add_argument(
        "--repeats", type=int, default=15, help="timed calls per method and shape (throughput)"
    )
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per method and shape (latency)")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated torch dtypes")
    parser.add_argument(
        "--tables", default=",".join(TABLES), help=f"comma-separated tables to run: {', '.join(TABLES)}"
    )
    parser.add_argument("--name", default=None, help="results file name (default bench_ops[_quick])")
    args = parser.parse_args()
    tables = args.tables.split(",")
    if not set(tables) <= set(TABLES):
        parser.error(f"--tables: expected a subset of {', '.join(TABLES)}, got {args.tables!r}")
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]

    throughput, latency = [], []
    if "throughput" in tables:
        for dtype in dtypes:
            for N, H, B in QUICK_SHAPES if args.quick else FULL_SHAPES:
                row = bench_shape(N, H, B, dtype, 3 if args.quick else args.repeats)
                throughput.append(row)
                print(
                    f"{row['dtype']:>8} N={N:>6} H={H:>5} B={B:>4} K={row['K']:>5} | fwd {row['fwd_fused_ms']:8.3f} ms  "
                    f"x{row['fwd_x_eager']:5.1f} eager  x{row['fwd_x_compiled']:5.1f} compiled  "
                    f"{100 * row['fwd_of_memcpy_bw']:5.1f}% of memcpy ({row['fwd_GBps']:.1f} GB/s) | "
                    f"fwd+bwd {row['train_fused_ms']:8.2f} ms  x{row['train_x_eager']:5.2f} eager  "
                    f"x{row['train_x_compiled']:5.2f} compiled",
                    flush=True,
                )
    if "latency" in tables:
        for dtype in dtypes:
            for H in QUICK_LATENCY_H if args.quick else FULL_LATENCY_H:
                for K in LATENCY_STEPS:
                    for row in bench_latency(K, H, dtype, 50 if args.quick else args.calls):
                        latency.append(row)
                        print(
                            f"{row['dtype']:>8} {row['mode']:>5} K={K:>3} H={H:>5} | fused "
                            f"{row['fused_median_us']:7.1f} us (min {row['fused_min_us']:6.1f})  reference "
                            f"{row['reference_median_us']:7.1f} us (min {row['reference_min_us']:6.1f})  "
                            f"x{row['x_reference_median']:5.1f}",
                            flush=True,
                        )

    isa = _native.native.selected_isa() if _native.native else "reference (no C++ extension)"
    sections = [f"fastprm CPU code path: {isa}"]
    if throughput:
        sections.append(
            "## Throughput (median ms per call)\n\n" + markdown_table(throughput, THROUGHPUT_COLUMNS)
        )
    if latency:
        sections.append(
            "## Per-call latency of small calls (us; median and min of many calls)\n\n"
            + markdown_table(latency, LATENCY_COLUMNS)
        )
    command = "python benchmarks/bench_ops.py " + shlex.join(sys.argv[1:])
    name = args.name or ("bench_ops_quick" if args.quick else "bench_ops")
    extra = {"fastprm_isa": isa, "latency_rows": latency}
    path = write_results(name, command.strip(), throughput, "\n\n".join(sections), extra)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
