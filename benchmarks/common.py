"""Shared benchmark plumbing: interleaved timing (the machine is noisy) and result files."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

try:
    from fastprm.machine import cpu_description
except ImportError:  # a benchmark child in another venv (vLLM's): the torch-free module from the source tree
    sys.path.append(str(Path(__file__).resolve().parents[1] / "python"))
    from fastprm.machine import cpu_description

RESULTS = Path(__file__).parent / "results"


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, calling them in turn so drift hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def machine_info() -> dict[str, object]:
    """What a figure depends on: the CPU model and ISA flags, thread count, torch and Python versions."""
    model, flags = cpu_description()
    return {
        "cpu": model,
        "isa_flags": flags,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }


def write_results(
    name: str, command: str, rows: list[dict], markdown: str, extra: dict | None = None
) -> Path:
    """Writes benchmarks/results/<name>.json and .md, each with the command that produced them."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "machine": machine_info(), "rows": rows, **(extra or {})}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    md = f"# {name}\n\nCommand: `{command}`\n\nMachine: {payload['machine']}\n\n{markdown}\n"
    path = RESULTS / f"{name}.md"
    path.write_text(md)
    return path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
