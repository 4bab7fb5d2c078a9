"""The arithmetic peaks behind bench_score's dense ceiling, on the CPU this runs on.

bench_score reports each method as a fraction of a ceiling: the GEMM rate of the model's own linear shapes.
This benchmark says how close that rate is to what the CPU's multiply-add instructions can do at all: it
builds ``cpu_peak.cpp`` once per instruction set the CPU has (AVX2 FMA, AVX-512 FMA, AVX512-BF16 dot
products) with the C++ compiler that builds fastprm's extension (``CXX``, else ``c++``), and runs each on
torch's thread count: a GEMM register tile (6 rows x 4 vectors, as fastprm's and oneDNN's kernels use) over
operands held in L1, the most a GEMM built on that instruction can run. Results go to
``benchmarks/results/bench_cpu_peak_<cpu model>.md`` / ``.json``.

    python benchmarks/bench_cpu_peak.py
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench_score import cpu_results_name
from common import markdown_table, write_results
from fastprm.machine import cpu_description

SOURCE = Path(__file__).with_name("cpu_peak.cpp")
# (build macro, compiler flags, the ISA flags a CPU needs to run that build)
BUILDS = (
    ("PEAK_AVX2", ["-mavx2", "-mfma"], ("avx2", "fma")),
    ("PEAK_AVX512", ["-mavx512f"], ("avx512f",)),
    ("PEAK_BF16", ["-mavx512f", "-mavx512bf16"], ("avx512f", "avx512_bf16")),
)


def measure(threads: int) -> list[dict]:
    """One row per instruction the running CPU has: its tile's GFLOP/s on ``threads`` threads and per thread."""
    flags = set(cpu_description()[1])
    compiler = os.environ.get("CXX", "c++")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for macro, options, needs in BUILDS:
            if not flags.issuperset(needs):
                continue
            binary = Path(tmp) / macro.lower()
            build = [
                compiler,
                "-O3",
                "-std=c++17",
                "-fopenmp",
                f"-D{macro}",
                *options,
                str(SOURCE),
                "-o",
                str(binary),
            ]
            subprocess.run(build, check=True)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            out = subprocess.run([str(binary)], check=True, capture_output=True, text=True, env=env).stdout
            for line in out.splitlines():
                row = json.loads(line)
                rows.append({**row, "threads": threads, "gflops_per_thread": row["gflops"] / threads})
                print(f"{row['instruction']:>38} {row['test']:>16}: {row['gflops']:7.0f} GFLOP/s", flush=True)
    return rows


def main() -> None:
    threads = torch.get_num_threads()
    rows = measure(threads)
    if not rows:
        sys.exit(f"bench_cpu_peak: {cpu_description()[0]} has none of AVX2 + FMA, AVX-512, AVX512-BF16")
    command = shlex.join(["python", "benchmarks/bench_cpu_peak.py"])
    table = markdown_table(rows, ["instruction", "test", "threads", "gflops", "gflops_per_thread"])
    path = write_results(cpu_results_name("bench_cpu_peak"), command, rows, table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
