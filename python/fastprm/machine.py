"""What a speed figure or a tuned choice depends on: the CPU model and ISA flags, and the threads given.
Torch-free."""

from __future__ import annotations

import functools
import os
import platform
import sys
from pathlib import Path

# CPU features that decide fastprm's code paths (C++ ISA dispatch, native bf16 GEMMs, AMX).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


@functools.cache  # read once per process: every Scorer's calibration key asks for it
def cpu_description() -> tuple[str, list[str]]:
    """(CPU model name, the :data:`ISA_FLAGS` it has) from /proc/cpuinfo; the platform's name elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    # Virtual machines may show a bare "AMD EPYC": the family and model numbers tell the generation.
    name = (
        f"{fields.get('model name', platform.machine())} "
        f"(family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
    )
    return name, [f for f in ISA_FLAGS if f in flags]


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB (None where the OS does not report it)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KB elsewhere


def fit_threads_to_cores() -> int:
    """Caps torch's intra-op threads at the cores this process may use (its affinity mask: a container's,
    ``taskset``'s or a Ray worker's share), where torch's start-up count (the machine's physical cores) is
    larger: more threads than cores only contend. A smaller count is left as is (torch leaves SMT siblings
    out on purpose, and a user may have lowered it). Returns the thread count. Tokenization never runs while
    torch computes in fastprm, so tokenizer threads do not compete with torch's."""
    import torch

    cores = usable_cpus()
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
    return torch.get_num_threads()
