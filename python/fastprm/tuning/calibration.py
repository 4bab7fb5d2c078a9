"""Calibration: measures the Scorer's candidate choices on the machine at hand and keeps the fastest.

Which batch layout, token budget and GEMM route score fastest depends on the CPU (its vector units, whether
its BLAS uses them, cache sizes), the thread count, the torch build and the model's shape, so fastprm
measures instead of assuming, as autotuners do (Triton's autotune, oneDNN's primitive cache): once per
:func:`calibration_key`, the result cached on disk (:mod:`.plan`).

Three phases, bounded to seconds (about 3 s for a 4-layer tiny model, 15-35 s at Qwen2.5-0.5B widths and
full depth on a 2-core AMD EPYC Zen 5):

1. GEMM route: the backbone's own linear layers at 512 and 2048 rows, each route in turn.
2. Layout: synthetic rows shaped like PRM inputs (a shared template header, a problem, 48-token steps,
   160-768 tokens) scored by the first :data:`CALIBRATION_DEPTH` layers of the backbone with the chosen
   route, for each candidate of :data:`LAYOUT_CANDIDATES`: cheap, and it rules out the clear losers.
3. Confirmation: each layout's fastest candidate, where close to the fastest, once more through the
   whole backbone, which overturns a clear shallow ranking (a shallow slice over-weights what does not grow
   with depth).

Layouts are measured with the hand-fused decoder layers (:mod:`fastprm.models.fused_layers`) where the
backbone has them, as they will most likely run (the unfused MLP's activations of large packed batches
overflow the cache, which the fused layers' row slices avoid: measuring unfused ranked packed 8,192-token
batches 17% behind one forward per row at full depth on an AMD EPYC Zen 5). Then the chosen plan with and
without them through the whole backbone, on the same rows in turn; fused only when faster.

``torch.compile`` is measured only when asked (``include_compile``), through the whole backbone against the
chosen eager plan on the same rows: compiling takes far longer than the rest of the calibration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from .. import __version__
from .._native import native
from ..machine import cpu_description
from ..models.fused_layers import fusable
from ..models.gemm_routes import available_gemm_routes, default_gemm_route, route_gemms, routed_linears
from ..models.step_rows import uncompile_backbone
from ..tokenization import TokenizedSolution
from .plan import (
    DEFAULT_BATCH_TOKENS,
    PLAN_FORMAT,
    ScoringPlan,
    pinned_choices,
    read_calibration,
    tune_mode,
    write_calibration,
)

CALIBRATION_DEPTH = 2
# (layout, batch_tokens) candidates; rows ignores the budget.
LAYOUT_CANDIDATES = (
    ("rows", DEFAULT_BATCH_TOKENS),
    ("packed", 1024),
    ("packed", 2048),
    ("packed", 4096),
    ("packed", 8192),
    ("padded", 4096),
)
ROW_LENGTHS = (160, 256, 384, 512, 768)
STEP_TOKENS = 48
HEADER_TOKENS, PROMPT_TOKENS = 24, 96
GEMM_ROWS = (512, 2048)
# Each layout's fastest candidate on the shallow backbone (CONFIRM_COUNT layouts at most), where within
# CONFIRM_WITHIN of the fastest, is measured again once at full depth (a shallow slice can misrank: on an AMD
# EPYC Zen 5 at Qwen2.5-0.5B widths it put packed 1,024-token batches 6-8% ahead of one forward per row, and
# full depth reversed it). That run overturns the shallow winner only when another candidate runs
# CONFIRM_MARGIN times faster: one full-depth run moved 5-10% between runs there, and a 2% lead (rows over
# packed) had chosen a plan that then scored 10% slower.
CONFIRM_COUNT, CONFIRM_WITHIN, CONFIRM_MARGIN = 3, 1.2, 1.05
# Compilation is chosen only when it scores this much faster than eager: it costs seconds to minutes at
# every start of a process, and smaller gains are within the noise of one calibration.
COMPILE_MARGIN = 1.05
# Fused layers are chosen when they score this much faster than the unfused plan: they cost nothing at start,
# but a smaller lead is within one calibration's noise on a busy machine.
FUSED_MARGIN = 1.02
# The workload of one layout measurement: what the first candidate scores in about TARGET_SECONDS, within
# [MIN_TOKENS, MAX_TOKENS] tokens. Every candidate is measured REPEATS times, in turn; the best time counts.
TARGET_SECONDS, MIN_TOKENS, MAX_TOKENS, REPEATS = 0.5, 2048, 16384, 2

_retuned: set[str] = set()  # keys calibrated again in this process under FASTPRM_TUNE=retune


def calibration_key(prm) -> dict:
    """What a calibration depends on: CPU model and ISA flags, the extension's code path (FASTPRM_CPU_ISA can
    force another), threads, torch and fastprm versions, device, dtype and the backbone's shape."""
    config = prm.backbone.config
    cpu, flags = cpu_description()
    shape = {
        name: getattr(config, name, None)
        for name in (
            "model_type",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "_attn_implementation",
        )
    }
    return {
        "cpu": cpu,
        "isa_flags": flags,
        "kernel_isa": native.selected_isa() if native else "reference",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fastprm": __version__,
        "device": prm.device.type,
        "dtype": str(prm.dtype).removeprefix("torch."),
        "backbone": shape,
        "plan_format": PLAN_FORMAT,
    }


def fallback_plan(prm) -> ScoringPlan:
    """The plan without measurement (FASTPRM_TUNE=off): one forward per row on CPU, packed with
    flash-attention 2, else padded; the default GEMM route of the dtype."""
    from ..batching import default_layout

    return ScoringPlan(default_layout(prm), DEFAULT_BATCH_TOKENS, default_gemm_route(prm.device, prm.dtype))


def tuned_plan(prm, progress: bool = True) -> ScoringPlan:
    """The plan for ``prm`` on the machine running it: calibrated at first use and cached (see :mod:`.plan` for the
    FASTPRM_TUNE, FASTPRM_TUNE_PIN and FASTPRM_CACHE_DIR variables); pinned choices replace measured ones."""
    mode = tune_mode()
    pins = pinned_choices()
    if mode == "off":
        plan = fallback_plan(prm)
    else:
        key = calibration_key(prm)
        record = read_calibration(key)
        marker = repr(sorted(key.items()))
        if record is None or (mode == "retune" and marker not in _retuned):
            record = calibrate(prm, progress=progress)
            _retuned.add(marker)
        plan = ScoringPlan.from_dict(record["plan"])
        if "layout" in pins and "batch_tokens" not in pins:  # that layout's best measured budget
            plan = dataclasses.replace(
                plan, batch_tokens=best_budget(record, pins["layout"], plan.batch_tokens)
            )
    if pins.get("compile"):  # the fused kernels do not compile: a pinned compile turns them off
        plan = dataclasses.replace(plan, fused=False)
    plan = dataclasses.replace(plan, **pins)
    plan.check()
    return plan


def best_budget(record: dict, layout: str, default: int) -> int:
    """The token budget that scored fastest in ``layout`` in a calibration record (``default`` if none)."""
    measured = [e for e in record["table"] if e["phase"] == "layout" and e["layout"] == layout]
    return min(measured, key=lambda e: e["seconds"])["batch_tokens"] if measured else default


def calibrate(prm, include_compile: bool = False, progress: bool = True, save: bool = True) -> dict:
    """Measures the candidates on ``prm`` and returns the calibration record (``key``, ``plan``,
    ``table``: one entry per measurement, ``seconds``), also written to the cache unless ``save`` is
    False."""
    from tqdm import tqdm

    start = time.perf_counter()
    table: list[dict] = []
    routes = available_gemm_routes(prm.device, prm.dtype)
    fused_candidate = prm.device.type == "cpu" and fusable(prm.backbone)
    steps = len(routes) + len(LAYOUT_CANDIDATES) + CONFIRM_COUNT + int(include_compile) + int(fused_candidate)
    bar = tqdm(
        total=steps,
        desc="fastprm: calibrating scoring for the running CPU and this model (once)",
        unit=" candidates",
        disable=not progress,
        leave=False,
    )
    with bar:
        gemm = gemm_seconds(prm, routes, bar.update)
        route = min(gemm, key=gemm.get)
        flops = gemm_flops(prm)
        for name, seconds in gemm.items():
            table.append(
                {"phase": "gemm", "gemm_route": name, "seconds": seconds, "gflops": flops / seconds / 1e9}
            )
        with shallow_backbone(prm.backbone, CALIBRATION_DEPTH) as depth:
            rate = _tokens_per_second(prm, route)
            layouts = _measure_layouts(
                prm, route, fused_candidate, LAYOUT_CANDIDATES, _workload(rate), REPEATS, "layout", bar.update
            )
        table += layouts
        best, confirmed = _confirm_at_full_depth(
            prm, route, fused_candidate, layouts, rate, depth, bar.update
        )
        table += confirmed
        plan = ScoringPlan(best["layout"], best["batch_tokens"], route)
        full_depth_tokens = _workload(rate * depth / prm.backbone.config.num_hidden_layers)
        if fused_candidate:
            fused = _measure_fused(prm, plan, full_depth_tokens)
            table.append(fused)
            bar.update()
            if fused["seconds"] * FUSED_MARGIN < fused["unfused_seconds"]:
                plan = dataclasses.replace(plan, fused=True)
        if include_compile:  # through the whole backbone: a shallow slice misjudged it
            compiled = _measure_compiled(prm, plan, full_depth_tokens)
            table.append(compiled)
            bar.update()
            if compiled.get("seconds", float("inf")) * COMPILE_MARGIN < compiled.get("eager_seconds", 0.0):
                plan = dataclasses.replace(plan, compile=True, fused=False)
    record = {
        "key": calibration_key(prm),
        "plan": dataclasses.asdict(plan),
        "table": table,
        "depth": CALIBRATION_DEPTH,
        "seconds": time.perf_counter() - start,
    }
    if save:
        record["path"] = str(write_calibration(record))
    return record


def _confirm_at_full_depth(
    prm, route: str, fused: bool, layouts: list[dict], rate: float, depth: int, done: Callable[[], object]
) -> tuple[dict, list[dict]]:
    """Phase 3: each layout's fastest shallow candidate, where within CONFIRM_WITHIN of the fastest, once
    more through the whole backbone; the shallow winner stays unless another runs CONFIRM_MARGIN times
    faster there. Returns the winner's shallow entry and the full-depth entries (none when the backbone is no
    deeper than the slice or one candidate is left)."""
    layers = prm.backbone.config.num_hidden_layers
    ranked = sorted(layouts, key=lambda r: r["seconds"])
    per_layout = [r for i, r in enumerate(ranked) if r["layout"] not in {q["layout"] for q in ranked[:i]}]
    finalists = [
        r for r in per_layout[:CONFIRM_COUNT] if r["seconds"] <= ranked[0]["seconds"] * CONFIRM_WITHIN
    ]
    if depth >= layers or len(finalists) < 2:
        for _ in range(CONFIRM_COUNT):
            done()
        return ranked[0], []
    candidates = [(r["layout"], r["batch_tokens"]) for r in finalists]
    n_tokens = _workload(rate * depth / layers)
    confirmed = _measure_layouts(prm, route, fused, candidates, n_tokens, 1, "confirm", done)
    for _ in range(CONFIRM_COUNT - len(confirmed)):
        done()
    fastest = min(range(len(confirmed)), key=lambda i: confirmed[i]["seconds"])
    overturned = confirmed[fastest]["seconds"] * CONFIRM_MARGIN < confirmed[0]["seconds"]
    return finalists[fastest if overturned else 0], confirmed


def gemm_seconds(prm, routes: list[str], done: Callable[[], object] = lambda: None) -> dict[str, float]:
    """Seconds per route to run the first decoder layer's linear layers (or every linear layer of a
    backbone without ``layers``) over [rows, in] inputs for each of :data:`GEMM_ROWS`; best of 3."""
    layers = _linear_layers(prm)
    inputs = [
        torch.randn(rows, layer.in_features, device=prm.device).to(prm.dtype)
        for rows in GEMM_ROWS
        for layer in layers
    ]
    owner = prm.backbone

    def run(route: str) -> float:
        with torch.inference_mode(), route_gemms(owner, route):
            begin = time.perf_counter()
            for x, layer in zip(inputs, layers * len(GEMM_ROWS)):
                layer(x)
            return time.perf_counter() - begin

    seconds = {}
    for route in routes:
        run(route)  # first-call costs: weight packing, kernel selection
        seconds[route] = min(run(route) for _ in range(3))
        done()
    return seconds


def _linear_layers(prm) -> list[nn.Linear]:
    layers = getattr(prm.backbone, "layers", None)
    scope = layers[0] if isinstance(layers, nn.ModuleList) and len(layers) else prm.backbone
    return routed_linears(scope)


def gemm_flops(prm) -> int:
    """FLOPs of one :func:`gemm_seconds` pass: its linear layers over each of :data:`GEMM_ROWS` input rows."""
    return sum(
        2 * rows * layer.in_features * layer.out_features
        for rows in GEMM_ROWS
        for layer in _linear_layers(prm)
    )


def _measure_layouts(
    prm,
    route: str,
    fused: bool,
    candidates: Sequence[tuple[str, int]],
    n_tokens: int,
    repeats: int,
    phase: str,
    done: Callable[[], object],
) -> list[dict]:
    """Best-of-``repeats`` seconds of each (layout, batch_tokens) candidate over one synthetic workload of
    about ``n_tokens`` tokens, with fused decoder layers or without; the candidates take turns, so drift hits
    them alike."""
    from ..scoring import Scorer

    rows = calibration_rows(prm.backbone.config.vocab_size, n_tokens)
    tokens = sum(len(r.input_ids) for r in rows)
    scorers = [
        Scorer(prm, layout=layout, batch_tokens=budget, gemm_route=route, compile=False, fused=fused)
        for layout, budget in candidates
    ]
    best = [float("inf")] * len(scorers)
    for repeat in range(repeats):
        for i, scorer in enumerate(scorers):
            if repeat == 0:
                scorer.score_tokenized(rows[:2])  # first-call costs: the header cache, allocations
            begin = time.perf_counter()
            scorer.score_tokenized(rows)
            best[i] = min(best[i], time.perf_counter() - begin)
            if repeat == repeats - 1:
                done()
    return [
        {
            "phase": phase,
            "layout": layout,
            "batch_tokens": budget,
            "gemm_route": route,
            "fused": fused,
            "tokens": tokens,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
        }
        for (layout, budget), seconds in zip(candidates, best)
    ]


def _tokens_per_second(prm, route: str) -> float:
    """A first rough rate of the default layout, which sizes the workloads."""
    from ..scoring import Scorer

    probe = calibration_rows(prm.backbone.config.vocab_size, MIN_TOKENS // 4)
    scorer = Scorer(
        prm, layout="rows", batch_tokens=DEFAULT_BATCH_TOKENS, gemm_route=route, compile=False, fused=False
    )
    scorer.score_tokenized(probe[:1])
    begin = time.perf_counter()
    scorer.score_tokenized(probe)
    return sum(len(r.input_ids) for r in probe) / (time.perf_counter() - begin)


def _workload(rate: float) -> int:
    return int(min(MAX_TOKENS, max(MIN_TOKENS, rate * TARGET_SECONDS)))


def _interleaved_best(scorers: list, rows: list[TokenizedSolution]) -> list[float]:
    """Best-of-:data:`REPEATS` seconds of each scorer over ``rows``, the scorers taking turns so that drift
    hits them alike."""
    best = [float("inf")] * len(scorers)
    for _ in range(REPEATS):
        for i, scorer in enumerate(scorers):
            begin = time.perf_counter()
            scorer.score_tokenized(rows)
            best[i] = min(best[i], time.perf_counter() - begin)
    return best


def _measure_fused(prm, plan: ScoringPlan, n_tokens: int) -> dict:
    """The plan with and without fused decoder layers through the whole backbone, on the same rows, in turn:
    the fused entry has the unfused time beside it (``unfused_seconds``)."""
    from ..scoring import Scorer

    rows = calibration_rows(prm.backbone.config.vocab_size, n_tokens)
    tokens = sum(len(r.input_ids) for r in rows)
    options = {**dataclasses.asdict(plan), "compile": False}
    scorers = [Scorer(prm, **{**options, "fused": fused}) for fused in (False, True)]
    for scorer in scorers:
        scorer.score_tokenized(rows[:2])  # first-call costs: merged weights, the header cache
    unfused, fused = _interleaved_best(scorers, rows)
    return {
        "phase": "fused",
        **options,
        "fused": True,
        "tokens": tokens,
        "seconds": fused,
        "unfused_seconds": unfused,
        "tokens_per_s": tokens / fused,
        "unfused_tokens_per_s": tokens / unfused,
    }


def _measure_compiled(prm, plan: ScoringPlan, n_tokens: int) -> dict:
    """The plan with and without ``torch.compile`` through the whole backbone, on the same rows, in turn:
    the compiled entry has the eager time beside it (``eager_seconds``) and its compilation apart
    (``compile_seconds``). The backbone is restored afterwards; a failure to compile is recorded, not
    raised."""
    from ..scoring import Scorer

    rows = calibration_rows(prm.backbone.config.vocab_size, n_tokens)
    tokens = sum(len(r.input_ids) for r in rows)
    entry = {
        "phase": "compile",
        **dataclasses.asdict(plan),
        "compile": True,
        "fused": False,
        "tokens": tokens,
    }
    eager = Scorer(prm, **dataclasses.asdict(plan))
    eager.score_tokenized(rows[:2])
    try:
        compiled = Scorer(prm, **dataclasses.asdict(dataclasses.replace(plan, compile=True, fused=False)))
        begin = time.perf_counter()
        compiled.score_tokenized(rows)  # compiles
        entry["compile_seconds"] = time.perf_counter() - begin
        eager_seconds, seconds = _interleaved_best([eager, compiled], rows)
        best = {"seconds": seconds, "eager_seconds": eager_seconds}
        entry.update(
            best, tokens_per_s=tokens / best["seconds"], eager_tokens_per_s=tokens / best["eager_seconds"]
        )
    except Exception as err:  # any compiler failure means: not a candidate here
        entry["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    finally:
        uncompile_backbone(prm.backbone)
    return entry


def calibration_rows(vocab_size: int, n_tokens: int, seed: int = 0) -> list[TokenizedSolution]:
    """Synthetic tokenized rows of about ``n_tokens`` tokens in all: lengths cycling through
    :data:`ROW_LENGTHS`, the same :data:`HEADER_TOKENS`-token header, a distinct problem, a step every
    :data:`STEP_TOKENS` tokens ending on the last token. Random ids: speed does not depend on them."""
    rng = random.Random(seed)
    header = [rng.randrange(vocab_size) for _ in range(HEADER_TOKENS)]
    rows, total = [], 0
    while total < n_tokens:
        length = ROW_LENGTHS[len(rows) % len(ROW_LENGTHS)]
        ids = header + [rng.randrange(vocab_size) for _ in range(length - HEADER_TOKENS)]
        ends = [*range(PROMPT_TOKENS + STEP_TOKENS - 1, length - 1, STEP_TOKENS), length - 1]
        rows.append(TokenizedSolution(ids, ends, PROMPT_TOKENS, HEADER_TOKENS))
        total += length
    return rows


@contextlib.contextmanager
def shallow_backbone(backbone: nn.Module, depth: int) -> Iterator[int]:
    """Within this context the backbone runs its first ``depth`` decoder layers only (its config says so
    too, for caches and masks); a backbone without a ``layers`` list, or not deeper, runs in full. Yields the
    depth that runs."""
    layers = getattr(backbone, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) <= depth:
        yield backbone.config.num_hidden_layers
        return
    config = backbone.config
    full_depth = config.num_hidden_layers
    backbone.layers = nn.ModuleList(list(layers)[:depth])
    config.num_hidden_layers = depth
    try:
        yield depth
    finally:
        backbone.layers = layers
        config.num_hidden_layers = full_depth
