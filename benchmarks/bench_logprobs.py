"""Token log-probabilities under a 151,936-token vocabulary: fastprm's fused op against the full-logits
formula, time and peak memory, forward and forward + backward.

Methods (the same hidden [N, H], LM head [V, H] and targets for each):
- ``fused``: :func:`fastprm.ops.token_logprobs` (default chunks and ``gemm_dtype="input"``: bf16 GEMMs for
  bf16 inputs, logits upcast to float32 per chunk);
- ``fused_fp32gemm``: the same with ``gemm_dtype="float32"`` (bf16 operands upcast, float32 GEMMs; bf16 cases
  only, for fp32 it is ``fused``);
- ``eager``: ``log_softmax(hidden @ W.T, -1).gather(1, targets)`` in the inputs' dtype;
- ``compiled``: the same through ``torch.compile`` (its first call, compilation included, is the warm-up);
- ``gemm``: only the fused op's GEMMs (the same chunks into the same tile, no row work): the floor the fused
  op's forward is held against.

Every (case, method) runs in a fresh subprocess: it builds the inputs, notes its RSS and resets its RSS
high-water mark (``/proc/self/clear_refs``), runs the method once (warm-up) and reads the mark (VmHWM): the
difference is the method's peak memory beyond its inputs. Then it times ``--repeats`` calls. Rounds go over the methods in turn, so drift hits
them alike; times are medians over rounds. A case whose full logits would not fit in memory skips eager and
compiled (noted in the table).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time

import torch

from common import markdown_table, write_results

V = 151_936
METHODS = ("fused", "fused_fp32gemm", "eager", "compiled", "gemm")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# eager needs the [N, V] logits and the log_softmax output; with ~16 GiB free, skip what would not fit.
EAGER_MEMORY_LIMIT = 12e9


def _reset_peak_rss() -> None:
    """Resets the process's RSS high-water mark (Linux: VmHWM), so building the inputs does not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss() -> int:
    """The RSS high-water mark in bytes (VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _method(name: str, backward: bool):
    from fastprm.ops import token_logprobs
    from fastprm.ops.token_logprobs import chunked
    from fastprm.ops.token_logprobs.api import DEFAULT_CHUNK_SIZE, DEFAULT_ROW_CHUNK_SIZE
    from fastprm.ops.token_logprobs.reference import gemm_dtype_of

    def full(h, w, t):
        return torch.log_softmax(h @ w.T, dim=-1).gather(1, t[:, None]).squeeze(1)

    class NoRowWork:
        @staticmethod
        def update(*args):
            pass

    if name == "fused":
        fn = token_logprobs
    elif name == "fused_fp32gemm":
        fn = functools.partial(token_logprobs, gemm_dtype="float32")
    elif name == "eager":
        fn = full
    elif name == "compiled":
        fn = torch.compile(full)
    else:
        assert not backward, "gemm is a forward floor"
        chunks = (DEFAULT_CHUNK_SIZE, DEFAULT_ROW_CHUNK_SIZE)
        return lambda h, w, t: chunked.forward(
            h, w, t, 1.0, *chunks, gemm_dtype_of(h.dtype, w.dtype, "input"), NoRowWork
        )
    if not backward:
        return fn

    def with_backward(h, w, t):
        fn(h, w, t).sum().backward()
        h.grad = w.grad = None

    return with_backward


def run_case(case: dict) -> dict:
    """In the child: one method on one case -> peak memory delta (bytes) and median seconds."""
    gen = torch.Generator().manual_seed(0)
    dtype, backward = DTYPES[case["dtype"]], case["backward"]
    hidden = torch.randn(case["N"], case["H"], generator=gen).to(dtype).requires_grad_(backward)
    weight = (torch.randn(V, case["H"], generator=gen) / case["H"] ** 0.5).to(dtype).requires_grad_(backward)
    targets = torch.randint(0, V, (case["N"],), generator=gen)
    fn = _method(case["method"], backward)
    grad_mode = torch.enable_grad() if backward else torch.no_grad()
    with grad_mode:
        before = _rss()
        _reset_peak_rss()
        fn(hidden, weight, targets)
        peak = _peak_rss() - before
        times = []
        for _ in range(case["repeats"]):
            start = time.perf_counter()
            fn(hidden, weight, targets)
            times.append(time.perf_counter() - start)
    return {"peak_bytes": peak, "seconds": statistics.median(times)}


def cases(args) -> list[dict]:
    if args.quick:
        grid = [(4096, 896, "fp32", False)]
    elif args.full:
        grid = [
            (n, h, d, b)
            for n in (4096, 8192, 16384)
            for h in (896, 3584)
            for d in DTYPES
            for b in (False, True)
        ]
    else:
        grid = [(4096, 896, d, b) for d in DTYPES for b in (False, True)] + [(16384, 896, "bf16", False)]
    return [{"N": args.tokens or n, "H": h, "dtype": d, "backward": b} for n, h, d, b in grid]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one case: N=4096, H=896, fp32 forward")
    size.add_argument(
        "--full", action="store_true", help="N 4k/8k/16k x H 896/3584 x fp32/bf16 (hours on 2 cores)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds over the methods (medians over rounds)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per subprocess after the warm-up")
    parser.add_argument("--tokens", type=int, help="N of every case instead of the grid's (e.g. a smoke run)")
    parser.add_argument("--name", default="bench_logprobs", help="results file name in benchmarks/results/")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # the child's JSON case
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    rows = []
    for case in cases(args):
        logits_bytes = case["N"] * V * torch.tensor([], dtype=DTYPES[case["dtype"]]).element_size()
        methods = [
            m
            for m in METHODS
            if not (m == "gemm" and case["backward"])
            and not (m == "fused_fp32gemm" and case["dtype"] == "fp32")
        ]
        if 2 * logits_bytes > EAGER_MEMORY_LIMIT:
            methods = [m for m in methods if m not in ("eager", "compiled")]
        samples: dict[str, list[dict]] = {m: [] for m in methods}
        for _ in range(args.rounds):
            for method in methods:
                child = {**case, "method": method, "repeats": args.repeats}
                out = subprocess.run(
                    [sys.executable, __file__, "--case", json.dumps(child)], capture_output=True, text=True
                )
                if out.returncode:
                    raise RuntimeError(f"{child} failed:\n{out.stderr[-2000:]}")
                samples[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
        row = {**case, "pass": "fwd+bwd" if case["backward"] else "fwd"}
        for method, runs in samples.items():
            row[f"{method}_s"] = statistics.median(r["seconds"] for r in runs)
            row[f"{method}_peak_MiB"] = statistics.median(r["peak_bytes"] for r in runs) / 2**20
        if "eager_s" in row:
            row["eager/fused time"] = row["eager_s"] / row["fused_s"]
            row["fused/eager memory"] = row["fused_peak_MiB"] / max(row["eager_peak_MiB"], 1e-9)
        if "gemm_s" in row:
            row["fused/gemm time"] = row["fused_s"] / row["gemm_s"]
        if "fused_fp32gemm_s" in row:
            row["fp32gemm/fused time"] = row["fused_fp32gemm_s"] / row["fused_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    columns = ["N", "H", "dtype", "pass", *(f"{m}_{k}" for m in METHODS for k in ("s", "peak_MiB"))]
    columns += ["eager/fused time", "fused/eager memory", "fused/gemm time", "fp32gemm/fused time"]
    command = "python benchmarks/bench_logprobs.py " + " ".join(sys.argv[1:])
    markdown = (
        f"V = {V}. Times: median seconds per call; peak: RSS high-water delta of the call in a fresh process "
        "(beyond the inputs; compiled includes its compilation). Empty eager/compiled cells: the [N, V] logits "
        "would not fit in memory; empty fused_fp32gemm cells: fp32 inputs (the same as fused).\n\n"
        + markdown_table(rows, columns)
    )
    print(write_results(args.name, command, rows, markdown))


if __name__ == "__main__":
    main()
