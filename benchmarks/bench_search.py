"""Search-time scoring: problem-shared prefixes for best-of-N, sessions for beam search.

Best-of-N: the real problems x 8 real sampled solutions of ``../shared/data/qwen25_math_eval`` (MATH), the real
Qwen2 tokenizer, the random Qwen2.5-Math-PRM-format checkpoint of ``bench_score.py``, in two prompt forms:
``zero-shot`` (the problem alone) and ``4-shot`` (four worked GSM8K train examples before every problem, as
evaluation harnesses do). Methods, each in its own process, on the same rows:

- fastprm_grouped: the Scorer as users get it (its tuned plan, problem-shared prefixes on);
- fastprm_ungrouped: the same plan with ``share_prefix=False`` (every row computes its whole prompt);
- recipe_b1: the Qwen2.5-Math-PRM model card, one row at a time (bench_score.py's recipe);
- vllm_prefix: vLLM's pooling runner with prefix caching asked for (``enable_prefix_caching=True``), from the
  venv of ``benchmarks/setup_vllm_venv.sh``, over fastprm's token ids.

It also counts the backbone tokens each form needs with and without sharing: their ratio is the ideal
speed-up of grouping (what grouped scoring would gain if time followed tokens).

Beam search: 10 steps deep, beam width 4, 4 expansions per beam, real MATH steps as the expansions (a replay
generator: no generation cost), on the same checkpoint: :func:`fastprm.search.beam_search` with sessions
(each new step runs only its own tokens) against ``rescore=True`` (every candidate re-scored from scratch at
every depth, as search loops without incremental scoring do). PRM time, tokens through the backbone, and the
largest difference between the two runs' step scores.

Results: benchmarks/results/bench_search.{md,json}, with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_score import DATA, VLLM_VENV, make_checkpoint, recipe_scores, run_vllm, vllm_env
from common import markdown_table, write_results

FORMS = ("zero-shot", "4-shot")
BON_METHODS = ("fastprm_grouped", "fastprm_ungrouped", "recipe_b1", "vllm_prefix")
SHOTS = 4
PARITY_TOL_FP32 = 1e-4


def load_problems(n: int) -> list[tuple[str, list[list[str]]]]:
    """(problem, 8 solutions as steps) of the first ``n`` problems; steps are the solution's paragraphs."""
    rows = []
    with open(DATA / "qwen25_math_eval" / "math_cot_100.jsonl") as f:
        for line in f:
            r = json.loads(line)
            solutions = [[s.strip() for s in text.split("\n\n") if s.strip()] for text in r["code"]]
            rows.append((r["question"], [s for s in solutions if s]))
            if len(rows) == n:
                break
    return rows


def few_shot_block() -> str:
    """The first SHOTS GSM8K train problems with their worked answers, as a few-shot prompt."""
    shots = []
    with open(DATA / "gsm8k" / "train.jsonl") as f:
        for line in f:
            r = json.loads(line)
            work, answer = r["answer"].split("####")
            shots.append(f"Question: {r['question']}\nAnswer: {work.strip()} The answer is {answer.strip()}.")
            if len(shots) == SHOTS:
                break
    return "\n\n".join(shots) + "\n\nQuestion: "


def bon_rows(n_problems: int, form: str) -> tuple[list[str], list[list[str]]]:
    prefix = few_shot_block() if form == "4-shot" else ""
    problems, solutions = [], []
    for problem, sols in load_problems(n_problems):
        for steps in sols:
            problems.append(prefix + problem)
            solutions.append(steps)
    return problems, solutions


def token_counts(scorer, problems, solutions) -> dict:
    """Backbone tokens of the rows: all of them, and with each distinct prompt counted once."""
    tokenized = scorer.tokenizer(problems, solutions)
    total = sum(len(t.input_ids) for t in tokenized)
    prompts = {tuple(t.input_ids[: t.prompt_length]) for t in tokenized}
    shared = total - sum(t.prompt_length for t in tokenized) + sum(len(p) for p in prompts)
    return {"tokens": total, "tokens_shared": shared, "ideal_speedup": total / shared}


# -- children -------------------------------------------------------------------------------------------------


def run_bon(method: str, model_dir: Path, dtype: str, n_problems: int, form: str) -> dict:
    problems, solutions = bon_rows(n_problems, form)
    if method == "recipe_b1":
        start = time.perf_counter()
        n_tokens, _ = recipe_scores(model_dir, getattr(torch, dtype), problems, solutions, 1)
        return {"seconds": time.perf_counter() - start, "tokens": n_tokens}
    from fastprm.models import PRM
    from fastprm.scoring import Scorer

    prm = PRM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    scorer = Scorer(prm, share_prefix=method == "fastprm_grouped")
    start = time.perf_counter()
    out = scorer.score(problems, solutions)
    seconds = time.perf_counter() - start
    probs_path(model_dir, form, method).write_text(json.dumps([o.step_scores for o in out]))
    return {"seconds": seconds, "plan": scorer.plan.describe(), **token_counts(scorer, problems, solutions)}


def write_vllm_tokens(model_dir: Path, dtype: str, n_problems: int, form: str) -> Path:
    """fastprm's token ids of the rows for the vLLM child (bench_score.py's format)."""
    from fastprm.models import PRM
    from fastprm.scoring import Scorer

    problems, solutions = bon_rows(n_problems, form)
    scorer = Scorer(PRM.from_pretrained(model_dir, dtype=getattr(torch, dtype)))
    start = time.perf_counter()
    tokenized = scorer.tokenizer(problems, solutions)
    payload = {
        "step_tag_id": scorer.tokenizer.separator_ids[0],
        "tokenize_seconds": time.perf_counter() - start,
        "rows": [{"input_ids": t.input_ids, "n_steps": len(t.step_ends)} for t in tokenized],
    }
    path = model_dir.parent / f"{model_dir.name}-search-{form}-{n_problems}-tokens.json"
    path.write_text(json.dumps(payload))
    return path


def probs_path(model_dir: Path, form: str, method: str) -> Path:
    return model_dir.parent / f"{model_dir.name}-search-{form}-{method}-probs.json"


class ReplayGenerator:
    """Real MATH steps as beam expansions (fastprm.search.Generator, no generation cost).

    Expansion j of a prefix at depth d is step d of solution (offset + j) mod 8 of its problem, the offset a
    hash of the prefix so that different beams get different steps. Steps that state a final answer are left
    out (and solutions cycle), so that every path runs the full depth.
    """

    stop = "\n\n"

    def __init__(self, problems: list[tuple[str, list[list[str]]]]):
        self.solutions = {}
        for problem, sols in problems:
            kept = [[s for s in steps if "boxed" not in s] for steps in sols]
            self.solutions[self.prompt(problem)] = [s for s in kept if s]

    def prompt(self, problem: str) -> str:
        return problem + self.stop

    def generate_steps(self, prefixes, n, *, stop="\n\n", max_new_tokens=0):
        out = []
        for prefix in prefixes:
            prompt = next(p for p in self.solutions if prefix.startswith(p))
            sols, depth = self.solutions[prompt], prefix[len(prompt) :].count(stop)
            offset = zlib.crc32(prefix.encode())
            out.append(
                [
                    sols[(offset + j) % len(sols)][depth % len(sols[(offset + j) % len(sols)])]
                    for j in range(n)
                ]
            )
        return out

    def generate_solutions(self, problems, n):
        return [self.solutions[self.prompt(p)][:n] for p in problems]


def run_beam(model_dir: Path, dtype: str, n_problems: int, depth: int, width: int, expansions: int) -> dict:
    """Both beam searches over the same problems, interleaved: PRM seconds, tokens and score parity."""
    from fastprm.models import PRM
    from fastprm.search import beam_search

    prm = PRM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    problems = load_problems(n_problems)
    generator = ReplayGenerator(problems)
    seconds = {"sessions": 0.0, "rescore": 0.0}
    tokens = {"sessions": 0, "rescore": 0}
    diff = 0.0
    for problem, _ in problems:
        results = {}
        for mode in ("sessions", "rescore"):
            start = time.perf_counter()
            results[mode] = beam_search(
                prm, generator, problem, beam_width=width, expansions=expansions, max_steps=depth,
                aggregate="min", stop=generator.stop, rescore=mode == "rescore",
            )  # fmt: skip
            seconds[mode] += time.perf_counter() - start
            tokens[mode] += results[mode].counters["prm_tokens"]
        for a, b in zip(results["sessions"].candidates, results["rescore"].candidates):
            if a.steps != b.steps:
                raise SystemExit("sessions and re-scoring kept different beams")
            diff = max(diff, max(abs(x - y) for x, y in zip(a.step_scores, b.step_scores)))
        assert results["sessions"].counters["depth"] == depth
    return {"seconds": seconds, "tokens": tokens, "max_abs_diff": diff}


# -- parent -----------------------------------------------------------------------------------------------


def beam_row(beam: dict, args: argparse.Namespace) -> dict:
    """The results row of the beam search child, printed."""
    row = {
        "form": f"beam d{args.depth} w{args.beam_width} x{args.expansions}, {args.beam_problems} problems",
        "method": "sessions vs rescore",
        "seconds": beam["seconds"]["sessions"],
        "rescore_seconds": beam["seconds"]["rescore"],
        "session_speedup": beam["seconds"]["rescore"] / beam["seconds"]["sessions"],
        "tokens_sessions": beam["tokens"]["sessions"],
        "tokens_rescore": beam["tokens"]["rescore"],
        "max_abs_diff": beam["max_abs_diff"],
    }
    print(
        f"beam search: sessions {beam['seconds']['sessions']:.2f} s, re-scoring {beam['seconds']['rescore']:.2f} s "
        f"(x{row['session_speedup']:.2f}); tokens {beam['tokens']['sessions']} vs {beam['tokens']['rescore']}; "
        f"max score difference {beam['max_abs_diff']:.2e}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="0.5b", choices=("0.5b", "tiny"))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--problems", type=int, default=100, help="best-of-N problems (8 solutions each)")
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--methods", default=",".join(BON_METHODS))
    parser.add_argument("--beam-problems", type=int, default=5)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--beam-width", type=int, default=4)
    parser.add_argument("--expansions", type=int, default=4)
    parser.add_argument("--parts", default="bon,beam", help="which parts to run: bon (best-of-N), beam")
    parser.add_argument("--name", default="bench_search", help="results file name in benchmarks/results/")
    parser.add_argument("--workdir", default="/tmp/fastprm-bench-score")
    parser.add_argument("--vllm-python", default=str(VLLM_VENV / "bin" / "python"))
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "FORM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_dir = Path(args.workdir) / f"qwen25-math-prm-{args.shape}-{args.layers}l"

    if args.child:
        method, form = args.child
        if method == "vllm_prefix":
            tokens = model_dir.parent / f"{model_dir.name}-search-{form}-{args.problems}-tokens.json"
            result = run_vllm(
                "vllm", model_dir, args.dtype, tokens, probs_path(model_dir, form, method), True
            )
        elif method == "beam":
            result = run_beam(
                model_dir, args.dtype, args.beam_problems, args.depth, args.beam_width, args.expansions
            )
        else:
            result = run_bon(method, model_dir, args.dtype, args.problems, form)
        print(json.dumps(result), flush=True)
        return

    if not (model_dir / "config.json").exists():
        make_checkpoint(model_dir, args.shape, args.layers)
    os.environ["FASTPRM_CACHE_DIR"] = str(Path(args.workdir) / "tune-cache")
    methods = args.methods.split(",")
    if "vllm_prefix" in methods and not Path(args.vllm_python).exists():
        print(f"skipping vllm_prefix: no vLLM venv python at {args.vllm_python}", flush=True)
        methods.remove("vllm_prefix")

    def child(method: str, form: str) -> dict:
        vllm = method == "vllm_prefix"
        cmd = [args.vllm_python if vllm else sys.executable, __file__, *sys.argv[1:], "--child", method, form]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=vllm_env() if vllm else dict(os.environ)
        )
        if proc.returncode:
            sys.exit(f"{method} {form} failed:\n{proc.stderr[-4000:]}")
        return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])

    rows = []
    parts = args.parts.split(",")
    for form in args.forms.split(",") if "bon" in parts else []:
        if "vllm_prefix" in methods:
            write_vllm_tokens(model_dir, args.dtype, args.problems, form)
        results = {m: child(m, form) for m in methods}
        grouped, ungrouped = results.get("fastprm_grouped"), results.get("fastprm_ungrouped")
        counts = grouped or ungrouped
        reference = probs_path(model_dir, form, "fastprm_ungrouped")
        for method, r in results.items():
            row = {"form": form, "method": method, "seconds": r["seconds"]}
            if counts:
                row["rows_tokens"] = counts["tokens"]
                row["tokens_per_s"] = counts["tokens"] / r["seconds"]
            if grouped:
                row["grouped_speedup"] = r["seconds"] / grouped["seconds"]
            if method == "fastprm_grouped" and ungrouped:
                row["ideal_speedup"] = r["ideal_speedup"]
                row["tokens_computed_fraction"] = r["tokens_shared"] / r["tokens"]
                row["fraction_of_ideal"] = (ungrouped["seconds"] / r["seconds"]) / r["ideal_speedup"]
            if method in ("fastprm_grouped", "vllm_prefix") and reference.exists():
                mine = json.loads(probs_path(model_dir, form, method).read_text())
                want = json.loads(reference.read_text())
                row["max_abs_diff"] = max(abs(a - b) for p, q in zip(mine, want) for a, b in zip(p, q))
            row["plan"] = r.get("plan", "")
            rows.append(row)
            print(
                f"{form:>9} {method:>18}: {r['seconds']:8.2f} s"
                + (f"  grouped is x{row['grouped_speedup']:.2f} faster" if "grouped_speedup" in row else "")
                + (f"  ideal x{row['ideal_speedup']:.2f}" if "ideal_speedup" in row else ""),
                flush=True,
            )
    if "beam" in parts:
        rows.append(beam_row(child("beam", "-"), args))
    columns = [
        "form", "method", "seconds", "tokens_per_s", "grouped_speedup", "ideal_speedup", "tokens_computed_fraction",
        "fraction_of_ideal", "max_abs_diff", "rescore_seconds", "session_speedup", "tokens_sessions",
        "tokens_rescore", "plan",
    ]  # fmt: skip
    command = "python benchmarks/bench_search.py " + shlex.join(sys.argv[1:])
    extra = {"shape": args.shape, "layers": args.layers, "dtype": args.dtype, "problems": args.problems}
    path = write_results(args.name, command, rows, markdown_table(rows, columns), extra)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
