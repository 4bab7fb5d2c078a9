"""The choices a :class:`~fastprm.scoring.Scorer` makes per machine, their environment overrides and their
cache file. Torch-free.

Environment:
    FASTPRM_TUNE: ``auto`` (default: calibrate once per machine and model shape, then read the cache),
        ``off`` (no calibration: :func:`fallback_plan`) or ``retune`` (calibrate again, replacing the cache).
    FASTPRM_TUNE_PIN: choices fixed whatever was measured, e.g. ``layout=packed,batch_tokens=4096,
        gemm_route=onednn,compile=0,fused=1``.
    FASTPRM_CACHE_DIR: where calibrations are kept (default ``$XDG_CACHE_HOME/fastprm`` or
        ``~/.cache/fastprm``), one JSON file per key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..batching import LAYOUTS

TUNE_MODES = ("auto", "off", "retune")
# How matmuls run (fastprm.models.gemm_routes): torch's kernels, oneDNN with packed weights, bf16 as fp32 GEMMs.
GEMM_ROUTES = ("torch", "onednn", "fp32")
# Token budget of a packed or padded batch when nothing was measured.
DEFAULT_BATCH_TOKENS = 16384
# The plan's format, part of every calibration key: a cache written for other fields is never read.
PLAN_FORMAT = 2
_BOOLEAN_FIELDS = ("compile", "fused")


@dataclass(frozen=True)
class ScoringPlan:
    """How a Scorer runs the backbone.

    Attributes:
        layout: ``rows``, ``packed`` or ``padded`` (:data:`fastprm.batching.LAYOUTS`).
        batch_tokens: token budget of one packed or padded batch.
        gemm_route: ``torch``, ``onednn`` or ``fp32`` (:mod:`fastprm.models.gemm_routes`).
        compile: whether the backbone's layers run through ``torch.compile``.
        fused: whether the decoder layers run hand-fused (:mod:`fastprm.models.fused_layers`); not with
            ``compile``.
    """

    layout: str
    batch_tokens: int
    gemm_route: str
    compile: bool = False
    fused: bool = False

    def describe(self) -> str:
        budget = "" if self.layout == "rows" else f" ({self.batch_tokens} tokens per batch)"
        compiled = ", compiled" if self.compile else ""
        fused = ", fused layers" if self.fused else ""
        return f"{self.layout} layout{budget}, {self.gemm_route} GEMMs{compiled}{fused}"

    @classmethod
    def from_dict(cls, fields: dict) -> ScoringPlan:
        plan = cls(**{f.name: fields[f.name] for f in dataclasses.fields(cls)})
        plan.check()
        return plan

    def check(self) -> None:
        """Raises ValueError naming the first field out of range."""
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if (
            not isinstance(self.batch_tokens, int)
            or isinstance(self.batch_tokens, bool)
            or self.batch_tokens < 1
        ):
            raise ValueError(f"batch_tokens must be a positive integer, got {self.batch_tokens!r}")
        if self.gemm_route not in GEMM_ROUTES:
            raise ValueError(f"gemm_route must be one of {', '.join(GEMM_ROUTES)}, got {self.gemm_route!r}")
        for name in _BOOLEAN_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.compile and self.fused:
            raise ValueError(
                "compile and fused exclude each other (torch.compile cannot trace the fused kernels)"
            )


def tune_mode() -> str:
    """FASTPRM_TUNE, checked."""
    mode = os.environ.get("FASTPRM_TUNE", "auto").strip().lower() or "auto"
    if mode not in TUNE_MODES:
        raise ValueError(f"FASTPRM_TUNE must be one of {', '.join(TUNE_MODES)}, got {mode!r}")
    return mode


def pinned_choices() -> dict[str, object]:
    """FASTPRM_TUNE_PIN as {field: value}, checked (not against the machine: the Scorer does that)."""
    text = os.environ.get("FASTPRM_TUNE_PIN", "").strip()
    pins: dict[str, object] = {}
    names = {f.name for f in dataclasses.fields(ScoringPlan)}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in names:
            raise ValueError(f"FASTPRM_TUNE_PIN: {item!r} is not one of {', '.join(sorted(names))} = value")
        if name == "batch_tokens":
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"FASTPRM_TUNE_PIN: batch_tokens must be a positive integer, got {value!r}")
            pins[name] = int(value)
        elif name in _BOOLEAN_FIELDS:
            if value.lower() not in ("0", "1", "true", "false"):
                raise ValueError(f"FASTPRM_TUNE_PIN: {name} must be 0 or 1, got {value!r}")
            pins[name] = value.lower() in ("1", "true")
        else:
            pins[name] = value
    return pins


def cache_dir() -> Path:
    """Where calibrations are kept: FASTPRM_CACHE_DIR, else the user's cache folder."""
    if folder := os.environ.get("FASTPRM_CACHE_DIR"):
        return Path(folder)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastprm"


def cache_file(key: dict) -> Path:
    """The calibration file of ``key`` (the machine, the model shape, the dtype: see
    :func:`fastprm.tuning.calibration.calibration_key`)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "tune" / f"{digest}.json"


def read_calibration(key: dict) -> dict | None:
    """The cached calibration of ``key``, or None when there is none or it is unreadable or stale (a file
    of another key, another format, or a plan that no longer checks)."""
    try:
        record = json.loads(cache_file(key).read_text())
        if record.get("key") != key:
            return None
        ScoringPlan.from_dict(record["plan"])
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_calibration(record: dict) -> Path:
    """Writes a calibration atomically (a reader never sees half a file); returns its path."""
    path = cache_file(record["key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, path)
    return path
