"""Scoring on Ray (``fastprm score --ray``) against the one-process scorer, on the same rows in one run.

Every method runs in a fresh process (``--child``), one after the other: the one-process scorer on 1 core
and on 2 cores (``taskset``), and Ray with 1 and 2 workers of 1 core each on a local cluster started by the
child. Real ProcessBench rows, a random checkpoint in the Qwen2.5-Math-PRM format (``--shape``,
``--layers``). Reported: rows/s end to end (process start to last row written) and in steady state (rows
over scoring time alone), and for Ray the split of its wall time into cluster start, the workers' model
load, their scoring, and the rest (Ray itself: scheduling, moving rows through the object store, writing
shards). From the measured per-worker rate and bytes per row, the results file works out on paper what 8
GPU workers would need (see ``projection``).

    python benchmarks/bench_ray.py [--rows 1600] [--shape tiny] [--layers 4] [--batch-rows 64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_score import DATA, make_checkpoint
from common import markdown_table, write_results

WORK = Path("/tmp/fastprm-bench-ray")
SUBSETS = ("gsm8k", "math", "olympiadbench", "omnimath")
SHARDS = 4
SCORE_OPTIONS = ["--dtype", "fp32", "--truncation", "drop-steps", "--quiet"]


def write_rows(n: int) -> tuple[Path, Path]:
    """The first ``n`` ProcessBench rows (subsets in turn) as ``all.jsonl`` and as shards in ``in/``."""
    rows = []
    for subset in SUBSETS:
        rows += json.loads((DATA / "processbench" / f"{subset}.json").read_text())
    rows = rows[:n]
    folder = WORK / f"rows_{n}"
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "in").mkdir(parents=True)
    lines = [json.dumps(r) + "\n" for r in rows]
    (folder / "all.jsonl").write_text("".join(lines))
    per = -(-len(lines) // SHARDS)
    for k in range(SHARDS):
        (folder / "in" / f"part{k}.jsonl").write_text("".join(lines[k * per : (k + 1) * per]))
    return folder / "all.jsonl", folder / "in"


def child_one_process(args) -> dict:
    """The one-process scorer: load, then ``fastprm score``'s chunk loop over the file."""
    from fastprm.cli import build_parser, load_scorer
    from fastprm.io import read_rows
    from fastprm.row_scoring import score_chunk

    start = time.perf_counter()
    ns = build_parser().parse_args(["score", "--model", args.model, "--input", args.input, "--output", "-",
                                     *SCORE_OPTIONS])  # fmt: skip
    scorer = load_scorer(ns)
    loaded = time.perf_counter()
    rows = list(read_rows(args.input))
    counts = {"rows": 0, "tokens": 0}
    for k in range(0, len(rows), 1024):
        _, c = score_chunk(scorer, rows[k : k + 1024], skip_bad_rows=True)
        counts["rows"] += c["rows"]
        counts["tokens"] += c["tokens"]
    done = time.perf_counter()
    return {"load_s": loaded - start, "score_s": done - loaded, **counts}


def child_ray(args) -> dict:
    import ray

    from fastprm.distributed import Workers, score_files

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    started = time.perf_counter()
    out = Path(args.output)
    shutil.rmtree(out, ignore_errors=True)
    run = score_files(
        [args.input], out, args.model, Workers(args.workers, 1, 0, args.batch_rows), skip_bad_rows=True,
        load_options={"dtype": "float32"}, scorer_options={"truncation": "drop-steps"},
    )  # fmt: skip
    done = time.perf_counter()
    ray.shutdown()
    out_bytes = sum(f.stat().st_size for f in out.glob("part-*"))
    return {"init_s": started - start, "run_s": done - started, "out_bytes": out_bytes, **run.counts}


def run_child(kind: str, argv: list[str], cores: str) -> tuple[dict, float]:
    start = time.perf_counter()
    proc = subprocess.run(
        ["taskset", "-c", cores, sys.executable, __file__, "--child", kind, *argv],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1600)
    p.add_argument("--shape", default="tiny")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch-rows", type=int, default=64)
    p.add_argument("--child", choices=("one", "ray"))
    p.add_argument("--model")
    p.add_argument("--input")
    p.add_argument("--output")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    if args.child:
        result = child_one_process(args) if args.child == "one" else child_ray(args)
        print(json.dumps(result))
        return

    model = WORK / f"{args.shape}_{args.layers}l"
    if not model.exists():
        make_checkpoint(model, args.shape, args.layers)
    all_rows, shards = write_rows(args.rows)
    in_bytes = all_rows.stat().st_size
    common = ["--model", str(model)]
    results = []
    for name, kind, cores, extra in [
        ("one process, 1 core", "one", "0", ["--input", str(all_rows)]),
        ("one process, 2 cores", "one", "0,1", ["--input", str(all_rows)]),
        ("Ray, 1 worker x 1 core", "ray", "0,1", ["--input", str(shards), "--workers", "1"]),
        ("Ray, 2 workers x 1 core", "ray", "0,1", ["--input", str(shards), "--workers", "2"]),
    ]:
        argv = [*common, *extra, "--batch-rows", str(args.batch_rows), "--output", str(WORK / "out")]
        r, wall = run_child(kind, argv, cores)
        row = {"method": name, "rows": r["rows"], "tokens": r["tokens"], "process_s": wall}
        if kind == "one":
            row.update(load_s=r["load_s"], score_s=r["score_s"])
            row["steady_rows_per_s"] = r["rows"] / r["score_s"]
        else:
            workers = int(extra[-1])
            score_s, load_s = r["score_ms"] / 1000, r["load_ms"] / 1000
            row.update(
                workers=workers, init_s=r["init_s"], run_s=r["run_s"], load_s=load_s / workers,
                score_s=score_s / workers, out_bytes=r["out_bytes"],
            )  # fmt: skip
            # Ray itself: the run's wall time not spent loading or scoring in the (parallel) workers.
            row["ray_overhead_s"] = r["run_s"] - (load_s + score_s) / workers
            row["ray_overhead_frac"] = (row["ray_overhead_s"] + r["init_s"]) / wall
            row["steady_rows_per_s"] = r["rows"] / (score_s / workers)
        row["end_to_end_rows_per_s"] = r["rows"] / wall
        results.append(row)
        print(json.dumps(row), flush=True)

    base = results[1]["end_to_end_rows_per_s"]
    for row in results:
        row["vs_one_process_2_cores"] = row["end_to_end_rows_per_s"] / base
    two = results[3]
    per_worker = two["steady_rows_per_s"] / two["workers"]
    out_per_row = two["out_bytes"] / two["rows"]
    overhead_per_row = two["ray_overhead_s"] / two["rows"]
    projection = {
        "per_worker_rows_per_s_here": per_worker,
        "input_bytes_per_row": in_bytes / args.rows,
        "output_bytes_per_row": out_per_row,
        "ray_overhead_s_per_row_here": overhead_per_row,
        "note": (
            "8 GPU workers: rows/s = 8 x one GPU worker's scoring rate (not measured here: no GPU) as long as "
            "Ray's per-row cost and the bytes moved stay below it. Measured here: Ray's own time per row "
            f"{overhead_per_row * 1e3:.2f} ms with 2 workers on 2 cores (it shares those cores with the "
            f"workers), {in_bytes / args.rows / 1e3:.1f} kB in and {out_per_row / 1e3:.1f} kB out per row."
        ),
    }
    for gpu_rate in (50.0, 200.0, 1000.0):
        rate = 8 * gpu_rate
        projection[f"8_workers_at_{gpu_rate:g}_rows_per_s_each"] = {
            "rows_per_s": rate,
            "object_store_MB_per_s": rate * (in_bytes / args.rows + out_per_row) / 1e6,
        }
    columns = ["method", "rows", "process_s", "end_to_end_rows_per_s", "vs_one_process_2_cores",
               "steady_rows_per_s", "load_s", "score_s", "init_s", "ray_overhead_s", "ray_overhead_frac"]  # fmt: skip
    md = markdown_table(results, columns)
    md += "\n\n## 8 GPU workers, on paper\n\n" + projection["note"] + "\n\n"
    md += "\n".join(
        f"- {k}: {v['rows_per_s']:.0f} rows/s, {v['object_store_MB_per_s']:.1f} MB/s through the object store"
        for k, v in projection.items()
        if isinstance(v, dict)
    )
    command = "python benchmarks/bench_ray.py " + " ".join(sys.argv[1:])
    print(write_results("bench_ray", command, results, md, {"projection": projection}))


if __name__ == "__main__":
    os.environ.setdefault("FASTPRM_TUNE", "off")  # the same fixed plan in every process
    main()
