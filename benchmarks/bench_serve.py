"""Load benchmark of ``fastprm serve`` under a GRPO-like load, against the same load one request at a time and
against vLLM's own server on the same checkpoint, in one run.

The load: ``--clients`` concurrent clients (default 64), each posting, again and again, a group of the 8 real
sampled solutions of one real MATH problem (``--group``: fewer per request, the group then spread over
several requests) (``../shared/data/qwen25_math_eval``: 100 problems x 8 solutions,
steps split at blank lines), client ``i`` starting at problem ``i``. Every answer is checked against the
scores of one offline scoring of all 800 rows (same checkpoint and dtype): rows lost, duplicated or with
other scores are counted, as are errors; all must be 0.

Methods (each its own server process, started, warmed up, loaded for ``--seconds``, stopped):

- ``fastprm``: ``fastprm serve`` (dynamic batching) with ``--model-workers`` (default 2: two copies of the
  model, the cores split between them), fastprm's own ``/v1/score`` with text rows: the server tokenizes,
  and rows of one group share their problem's prompt.
- ``fastprm_one_model``: the same with one model on every core (``--model-workers 1``).
- ``fastprm_sequential``: the same requests sent one at a time by one client, to a server with
  ``--max-wait-ms 0`` (a lone request is scored at once) and one model on every core (the fastest setup for
  one request at a time): what a server without batching gets.
- ``fastprm_pooling``: ``fastprm serve``'s vLLM-compatible ``/pooling`` with the same token ids vLLM gets
  (``--model-workers`` as ``fastprm``).
- ``vllm``: vLLM's server (``--runner pooling``, its CPU build, torch-compiled, from the venv of
  ``setup_vllm_venv.sh``), ``/pooling`` with token ids tokenized here beforehand (so its tokenizing costs it
  nothing; fastprm's /v1/score pays its own).

The clients run in this process (one asyncio thread) on the same cores as the server, for every method alike.
Peak RSS is the largest sum of resident memory over the server's process tree (vLLM runs 2-3 processes).

With ``--repeats N`` each method runs N times, methods alternating; the table shows each method's run with the
most rows/s (errors, lost, duplicated and mismatched answers summed over all its runs), the JSON every run.

    python benchmarks/bench_serve.py [--seconds 60] [--clients 64] [--dtype float32] [--methods ...] [--repeats N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_score import DATA, VLLM_VENV, make_checkpoint, vllm_env
from bench_search import load_problems
from common import markdown_table, write_results

METHODS = ("fastprm", "fastprm_one_model", "fastprm_sequential", "fastprm_pooling", "vllm")
ENDPOINT = {
    "fastprm": "/v1/score",
    "fastprm_one_model": "/v1/score",
    "fastprm_sequential": "/v1/score",
    "fastprm_pooling": "/pooling",
    "vllm": "/pooling",
}
MODEL_NAME = "prm"
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}  # vs the offline scores (other batch shapes, other kernels)


def offline(model_dir: Path, dtype: str, groups) -> tuple[dict, dict, int, float]:
    """Step scores and token ids of every (group, solution) row, scored once offline, the separator id, and
    the offline rate (rows/s, tokenizing included, one group per call as the load sends them: what one model
    on every core does without HTTP)."""
    from fastprm.models import PRM
    from fastprm.scoring import Scorer

    scorer = Scorer(PRM.from_pretrained(model_dir, dtype=getattr(torch, dtype)))
    problems = [p for p, sols in groups for _ in sols]
    solutions = [s for _, sols in groups for s in sols]
    scorer.score_tokenized(scorer.tokenizer(problems[:8], solutions[:8]))  # first-call costs
    start = time.perf_counter()
    tokenized = scorer.tokenizer(problems, solutions)
    scores = [s for k in range(0, len(tokenized), 8) for s in scorer.score_tokenized(tokenized[k : k + 8])]
    rate = len(tokenized) / (time.perf_counter() - start)
    keys = [(g, k) for g, (_, sols) in enumerate(groups) for k in range(len(sols))]
    return (
        {key: s.step_scores for key, s in zip(keys, scores)},
        {key: t.input_ids for key, t in zip(keys, tokenized)},
        scorer.tokenizer.separator_ids[0],
        rate,
    )


class TreeRSS:
    """Peak of the summed resident memory of a process and its descendants, sampled from /proc."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.pid, self.interval, self.peak = pid, interval, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _tree(self) -> list[int]:
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        tree, frontier = [self.pid], [self.pid]
        while frontier:
            frontier = [p for p, parent in parents.items() if parent in frontier]
            tree += frontier
        return tree

    def _run(self) -> None:
        while not self.done.wait(self.interval):
            total = 0
            for pid in self._tree():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                if match := re.search(r"VmRSS:\s+(\d+) kB", status):
                    total += int(match.group(1))
            self.peak = max(self.peak, total)

    def stop_mb(self) -> float:
        self.done.set()
        self.thread.join()
        return self.peak / 1024


def start_server(
    method: str, model_dir: Path, dtype: str, separator: int, vllm_python: str, model_workers: int
):
    """The method's server process and its base URL once it answers /health."""
    import httpx

    with socket.socket() as probe:  # a port free now (a server left over from an earlier run keeps its own)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if method == "vllm":
        command = [
            vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--runner", "pooling", "--dtype", dtype, "--pooler-config", f'{{"step_tag_id": {separator}}}',
            "--served-model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
            "--disable-uvicorn-access-log", "--disable-log-stats",
        ]  # fmt: skip
        env = vllm_env()
    else:
        command = [
            sys.executable, "-m", "fastprm", "serve", "--model", str(model_dir), "--dtype", dtype,
            "--served-model-name", MODEL_NAME, "--port", str(port),
            *(["--max-wait-ms", "0"] if method == "fastprm_sequential" else []),
            "--model-workers", str(model_workers if method in ("fastprm", "fastprm_pooling") else 1),
        ]  # fmt: skip
        env = {**os.environ, "FASTPRM_TUNE": "auto"}
    log = open(Path(model_dir).parent / f"bench_serve_{method}.log", "w")  # noqa: SIM115 (lives with the process)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{method} server exited with {process.returncode}; see {log.name}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.kill()
    raise SystemExit(f"{method} server not ready after 600 s; see {log.name}")


def stop_server(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(120)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def request_of(method: str, g: int, ks: list[int], groups, ids) -> dict:
    """The body asking for solutions ``ks`` of problem ``g``."""
    problem, solutions = groups[g]
    if ENDPOINT[method] == "/v1/score":
        return {"rows": [{"problem": problem, "steps": solutions[k], "id": k} for k in ks]}
    return {"model": MODEL_NAME, "task": "token_classify", "input": [ids[(g, k)] for k in ks]}


def step_scores_of(method: str, body: dict, ks: list[int]) -> list[tuple[int, list[float]]]:
    """(solution index, P(good) per step) of each row of a response."""
    if ENDPOINT[method] == "/v1/score":
        return [(r["id"], r["step_scores"]) for r in body["rows"]]
    return [(ks[d["index"]], [row[1] for row in d["data"]]) for d in body["data"]]


async def run_load(
    method: str, url: str, clients: int, seconds: float, warmup: float, group: int, groups, ids, expected, tol
):
    """Closed-loop load: each client posts its next request (``group`` solutions of one problem) as soon as
    its previous answer is in. Counts the answers that complete within the ``seconds`` after ``warmup``
    (the load runs from the start, so the queue is in its steady state by then)."""
    import httpx

    requests = [
        (g, list(range(len(sols)))[k : k + group])
        for g, (_, sols) in enumerate(groups)
        for k in range(0, len(sols), group)
    ]

    stats = {
        "latencies": [],
        "rows": 0,
        "tokens": 0,
        "errors": 0,
        "lost": 0,
        "duplicated": 0,
        "mismatched": 0,
    }
    start = time.monotonic()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def client(i: int, http: httpx.AsyncClient) -> None:
        n = 0
        while time.monotonic() < stop_at:
            g, ks = requests[(i + n * clients) % len(requests)]
            n += 1
            sent = time.monotonic()
            try:
                response = await http.post(
                    url + ENDPOINT[method], json=request_of(method, g, ks, groups, ids)
                )
                ok = response.status_code == 200
                body = response.json() if ok else None
            except httpx.HTTPError:
                ok, body = False, None
            done = time.monotonic()
            if not measure_from <= done <= stop_at:  # answers completed in the window, whenever sent:
                continue  # a window of sends would miss the answers of the last latency's worth of them
            if not ok:
                stats["errors"] += 1
                continue
            stats["latencies"].append(done - sent)
            got = step_scores_of(method, body, ks)
            indices = [k for k, _ in got]
            stats["lost"] += sum(k not in indices for k in ks)
            stats["duplicated"] += len(indices) - len(set(indices))
            for k, probs in got:
                want = expected.get((g, k))
                if (
                    want is None
                    or len(want) != len(probs)
                    or any(abs(a - b) > tol for a, b in zip(probs, want))
                ):
                    stats["mismatched"] += 1
            stats["rows"] += len(got)
            stats["tokens"] += sum(len(ids[(g, k)]) for k, _ in got)

    async def connection(i: int) -> None:  # one connection per client: httpx's shared pool is slow under 64
        async with httpx.AsyncClient(timeout=600) as http:
            await client(i, http)

    await asyncio.gather(*[connection(i) for i in range(clients)])
    return stats


def summarize(method: str, stats: dict, seconds: float, rss_mb: float, clients: int) -> dict:
    lat = sorted(stats["latencies"])
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0] if lat else float("nan")] * 99
    return {
        "method": method,
        "clients": clients,
        "requests_per_s": len(lat) / seconds,
        "rows_per_s": stats["rows"] / seconds,
        "tokens_per_s": stats["tokens"] / seconds,
        "p50_ms": 1000 * q[49],
        "p95_ms": 1000 * q[94],
        "p99_ms": 1000 * q[98],
        "requests": len(lat),
        "errors": stats["errors"],
        "lost": stats["lost"],
        "duplicated": stats["duplicated"],
        "mismatched": stats["mismatched"],
        "peak_rss_mb": rss_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10, help="seconds of load before measuring")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--group", type=int, default=8, help="solutions of one problem per request (1-8)")
    parser.add_argument("--dtype", default="float32", choices=sorted(TOLERANCE))
    parser.add_argument(
        "--model-workers",
        type=int,
        default=2,
        help="fastprm serve --model-workers of fastprm, fastprm_pooling",
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per method, alternating; the best rows/s counts"
    )
    parser.add_argument("--workdir", default="/tmp/fastprm-bench-score")
    parser.add_argument("--name", default="bench_serve")
    parser.add_argument("--vllm-python", default=str(VLLM_VENV / "bin" / "python"))
    args = parser.parse_args()
    methods = args.methods.split(",")
    if "vllm" in methods and not Path(args.vllm_python).exists():
        print(
            f"skipping vllm: no vLLM venv python at {args.vllm_python} (bash benchmarks/setup_vllm_venv.sh)"
        )
        methods.remove("vllm")
    os.environ["FASTPRM_CACHE_DIR"] = str(Path(args.workdir) / "tune-cache")  # the servers' calibration
    model_dir = Path(args.workdir) / f"qwen25-math-prm-tiny-{args.layers}l"
    if not (model_dir / "config.json").exists():
        make_checkpoint(model_dir, "tiny", args.layers)
    if not (DATA / "qwen25_math_eval").exists():
        sys.exit(f"shared data not found at {DATA}")
    groups = load_problems(100)
    os.environ["FASTPRM_TUNE"] = "auto"  # the offline reference on the servers' plan
    expected, ids, separator, offline_rate = offline(model_dir, args.dtype, groups)
    print(
        f"{len(expected)} rows, {sum(map(len, ids.values()))} tokens; offline scores ready "
        f"({offline_rate:.1f} rows/s)",
        flush=True,
    )
    torch.set_num_threads(1)  # this process only sends requests from here on
    runs = []
    for repeat in range(args.repeats):  # methods alternate, so a slow spell of the machine hits them all
        for method in methods:
            process, url = start_server(
                method, model_dir, args.dtype, separator, args.vllm_python, args.model_workers
            )
            load = (args.seconds, args.warmup, args.group, groups, ids, expected, TOLERANCE[args.dtype])
            try:
                rss = TreeRSS(process.pid)
                clients = 1 if method == "fastprm_sequential" else args.clients
                stats = asyncio.run(run_load(method, url, clients, *load))
                row = summarize(method, stats, args.seconds, rss.stop_mb(), clients)
            finally:  # never leave a server behind, whatever failed
                exit_code = stop_server(process)
            row["exit_code"] = exit_code
            runs.append({**row, "repeat": repeat})
            print({k: round(v, 2) if isinstance(v, float) else v for k, v in runs[-1].items()}, flush=True)
    best = {}  # each method's run with the most rows/s; its errors and mismatches are summed over all runs
    for run in runs:
        if run["method"] not in best or run["rows_per_s"] > best[run["method"]]["rows_per_s"]:
            best[run["method"]] = run
    results = []
    for method in methods:
        row = {k: v for k, v in best[method].items() if k != "repeat"}
        for key in ("errors", "lost", "duplicated", "mismatched"):
            row[key] = sum(r[key] for r in runs if r["method"] == method)
        row["exit_code"] = max((r["exit_code"] for r in runs if r["method"] == method), key=abs)
        results.append(row)
    by = {r["method"]: r for r in results}
    ratios = {}
    for mine in ("fastprm", "fastprm_one_model"):
        if mine in by and "fastprm_sequential" in by:
            ratios[f"{mine} / one at a time, rows/s"] = (
                by[mine]["rows_per_s"] / by["fastprm_sequential"]["rows_per_s"]
            )
    for mine in ("fastprm", "fastprm_pooling"):
        if mine in by and "vllm" in by:
            ratios[f"{mine} / vllm, rows/s"] = by[mine]["rows_per_s"] / by["vllm"]["rows_per_s"]
            ratios[f"{mine} / vllm, p99"] = by[mine]["p99_ms"] / by["vllm"]["p99_ms"]
    if "fastprm" in by:
        ratios["fastprm / offline scoring, rows/s"] = by["fastprm"]["rows_per_s"] / offline_rate
    columns = list(results[0]) if results else []
    markdown = (
        markdown_table(results, columns)
        + f"\n\nOffline, no HTTP (one process, every core, one group per call): {offline_rate:.1f} rows/s\n\n"
        + "\n".join(f"- {k}: {v:.2f}x" for k, v in ratios.items())
    )
    command = "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:])
    extra = {
        "ratios": ratios, "dtype": args.dtype, "seconds": args.seconds, "group": args.group,
        "model_workers": args.model_workers, "offline_rows_per_s": offline_rate, "runs": runs,
        "checkpoint": str(model_dir),
    }  # fmt: skip
    path = write_results(args.name, command, results, markdown, extra)
    print(markdown)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
