"""``fastprm tune``: calibrate how a model is scored on the machine it runs on, print what was measured, and cache
the choice that ``fastprm score`` and :class:`~fastprm.scoring.Scorer` then use."""

from __future__ import annotations

import argparse
import json

from .cli import load_prm
from .machine import fit_threads_to_cores, peak_rss_mb
from .tuning.plan import ScoringPlan


def tune(args: argparse.Namespace) -> int:
    from .tuning.calibration import calibrate

    prm = load_prm(args, "tune")
    fit_threads_to_cores()
    record = calibrate(prm, include_compile=args.compile, progress=not args.quiet)
    record["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(record, indent=2) if args.json else calibration_table(record))
    return 0


def calibration_table(record: dict) -> str:
    """What a calibration measured and chose, as text."""
    key, plan = record["key"], record["plan"]
    shape = key["backbone"]
    lines = [
        f"machine: {key['cpu']} [{' '.join(key['isa_flags'])}], {key['threads']} threads, torch {key['torch']}",
        f"model: {shape['model_type']} hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
        f"{key['dtype']} on {key['device']}",
        "",
        "GEMM route (the first layer's linear layers at 512 and 2048 rows):",
    ]
    for entry in record["table"]:
        if entry["phase"] == "gemm":
            chosen = "  <- chosen" if entry["gemm_route"] == plan["gemm_route"] else ""
            lines.append(f"  {entry['gemm_route']:<8} {entry['gflops']:8.0f} GFLOP/s{chosen}")
    layouts = [e for e in record["table"] if e["phase"] == "layout"]
    confirmed = [e for e in record["table"] if e["phase"] == "confirm"]
    lines += [
        "",
        f"Layout ({layouts[0]['tokens']} synthetic tokens through the first {record['depth']} layers, "
        f"{plan['gemm_route']} GEMMs{', fused layers' if layouts[0].get('fused') else ''}):",
    ]
    lines += [_candidate_line(entry, plan, chosen_here=not confirmed) for entry in layouts]
    if confirmed:
        lines += [
            "",
            f"Confirmed through all {shape['num_hidden_layers']} layers ({confirmed[0]['tokens']} tokens):",
        ]
    lines += [_candidate_line(entry, plan, chosen_here=True) for entry in confirmed]
    for entry in record["table"]:
        if entry["phase"] == "fused":
            lines += [
                "",
                f"Fused decoder layers, all layers ({entry['tokens']} tokens): {entry['tokens_per_s']:.0f} "
                f"tokens/s against {entry['unfused_tokens_per_s']:.0f} unfused"
                f"{'  <- chosen' if plan['fused'] else ' (not chosen)'}",
            ]
        if entry["phase"] == "compile":
            if "error" in entry:
                lines += ["", f"torch.compile: failed ({entry['error']})"]
            else:
                lines += [
                    "",
                    f"torch.compile, all layers ({entry['tokens']} tokens): {entry['tokens_per_s']:.0f} tokens/s "
                    f"against {entry['eager_tokens_per_s']:.0f} eager, after {entry['compile_seconds']:.1f} s of "
                    f"compilation{'  <- chosen' if plan['compile'] else ' (not chosen)'}",
                ]
    lines += [
        "",
        f"chosen: {ScoringPlan.from_dict(plan).describe()}",
        f"calibration took {record['seconds']:.1f} s; peak RSS {record.get('peak_rss_mb') or 0:.0f} MB",
    ]
    if "path" in record:
        lines.append(
            f"cached in {record['path']} (FASTPRM_TUNE=off ignores it, FASTPRM_TUNE_PIN pins choices)"
        )
    return "\n".join(lines)


def _candidate_line(entry: dict, plan: dict, chosen_here: bool) -> str:
    """One measured layout candidate; marked when it is the plan's and this phase decided."""
    name = entry["layout"] if entry["layout"] == "rows" else f"{entry['layout']} {entry['batch_tokens']}"
    chosen = chosen_here and (entry["layout"], entry["batch_tokens"]) == (
        plan["layout"],
        plan["batch_tokens"],
    )
    return f"  {name:<14} {entry['tokens_per_s']:10.0f} tokens/s{'  <- chosen' if chosen else ''}"
