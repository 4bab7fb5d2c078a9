"""Scoring throughput on a ProcessBench-shaped workload: fastprm (tuned, and with each choice forced) vs the
model-card recipe vs the bare backbone vs vLLM's pooling runner, and each as a fraction of the machine's
dense GEMM ceiling.

    python benchmarks/bench_score.py --shape 0.5b --layers 24 --rows 400   # Qwen2.5-0.5B, full depth
    python benchmarks/bench_score.py --shape tiny --layers 4 --rows 1400   # hidden 256, overheads rule
    python benchmarks/bench_score.py --rows 40 --layers 4                  # a quick run

Real problems and steps from ../shared/data/processbench (gsm8k, then math), the real Qwen2 tokenizer, and a
random-weight checkpoint in the Qwen2.5-Math-PRM on-disk format.

fastprm is calibrated for the machine first (``fastprm tune``, its table is kept in the results) and every
fastprm method reads that calibration: ``fastprm`` takes the tuned plan, ``fastprm_<choice>`` pins one choice
(FASTPRM_TUNE_PIN) and keeps the rest, ``fastprm_untuned`` runs without calibration (FASTPRM_TUNE=off).

The ceiling: the GEMM rate of the model's own linear shapes (its first layer's, at 512 and 2048 rows; the
faster of torch's kernels and oneDNN's; measured by the calibration and again before each round of methods,
the best rate counting) over the linear FLOPs of a full forward per token, all layers at all tokens: the
dense limit of a plain forward. Column ceiling_fraction is each method's tokens/s over it; fastprm
can pass 1.0 because it skips work (the last layer off the step rows, shared prefixes). Every method scores the same rows with the
same weights and dtype; recipe_* run stock transformers (the model card), backbone_* run the backbone as
fastprm loads it (fastprm's attention and, in bf16 on CPUs without native bf16, its fp32-GEMM matmuls) with
the full last layer, no shared prefix and no head, which isolates what those save. Each method runs in its
own process (for its peak RSS), methods alternate, and the best of --repeats runs counts. Ratios are what
to read: absolute times drift on a shared machine.

vllm / vllm_eager run vLLM's CPU build (torch-compiled / enforce_eager) from its own venv, made by
``bash benchmarks/setup_vllm_venv.sh`` (skipped with a message when it is missing). That venv has no fastprm,
so this process tokenizes the rows with fastprm's StepTokenizer and hands vLLM the token ids; vLLM loads the
same checkpoint as Qwen2ForProcessRewardModel with its step pooler and returns P(step good) per step, which
are checked against fastprm's on the first rows (column max_abs_diff_vs_fastprm; fp32 must agree). vLLM's
peak_rss_mb is the summed PSS of its three processes (see TreeRSS).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from common import markdown_table, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
VLLM_METHODS = ("vllm", "vllm_eager")
# fastprm tuned, and with one choice pinned (FASTPRM_TUNE_PIN; None: FASTPRM_TUNE=off): what each is worth on
# the machine at hand.
FASTPRM_VARIANTS = {
    "fastprm": "",
    "fastprm_untuned": None,
    "fastprm_rows": "layout=rows",
    "fastprm_packed": "layout=packed",
    "fastprm_padded": "layout=padded",
    "fastprm_torch_gemms": "gemm_route=torch",
    "fastprm_onednn_gemms": "gemm_route=onednn",
    "fastprm_fp32_gemms": "gemm_route=fp32",  # bf16 only
    "fastprm_compiled": "compile=1",
    "fastprm_fused": "fused=1",  # the hand-fused decoder layers (models/fused_layers.py)
    "fastprm_unfused": "fused=0",
    "fastprm_previous": "",  # the defaults of the python given by --previous-python (older code)
}
METHODS = (
    "fastprm",
    "fastprm_untuned",
    "fastprm_rows",
    "fastprm_packed",
    "fastprm_padded",
    "fastprm_torch_gemms",
    "fastprm_onednn_gemms",
    "fastprm_fp32_gemms",
    "recipe_b1",
    "recipe_b8",
    "backbone_b1",
    "backbone_buckets",
    *VLLM_METHODS,
)
# Same default place as setup_vllm_venv.sh, which honours the same variable.
VLLM_VENV = Path(os.environ.get("FASTPRM_VLLM_VENV", ROOT / ".venvs" / "vllm"))
PARITY_ROWS = 8  # rows whose vLLM step probabilities are compared with fastprm's
PARITY_TOL_FP32 = 1e-4  # both run the same fp32 math; only kernel summation order differs


def load_rows(n: int) -> tuple[list[str], list[list[str]]]:
    """The first ``n`` ProcessBench rows: gsm8k's 400, then math's 1,000."""
    rows = []
    for split in ("gsm8k", "math"):
        rows += json.loads((DATA / "processbench" / f"{split}.json").read_text())[: n - len(rows)]
    return [r["problem"] for r in rows], [r["steps"] for r in rows]


# Backbone widths: Qwen2.5-0.5B's, and a tiny model where per-call overheads rule.
SHAPES = {
    "0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
    },
    "tiny": {
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}


def make_checkpoint(path: Path, shape: str, layers: int) -> None:
    """Random weights of :data:`SHAPES` ``shape``, ``layers`` deep, in the Qwen2.5-Math-PRM format."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2Model

    from fastprm.models import CONVENTIONS, PRM
    from fastprm.models.heads import MLPHead

    tok = AutoTokenizer.from_pretrained(DATA / "tokenizers" / "qwen2")
    tok.add_tokens(["<extra_0>"], special_tokens=True)
    config = Qwen2Config(
        vocab_size=len(tok), num_hidden_layers=layers, max_position_embeddings=4096, rms_norm_eps=1e-6,
        tie_word_embeddings=True, **SHAPES[shape],
    )  # fmt: skip
    torch.manual_seed(0)
    prm = PRM(Qwen2Model(config), MLPHead(config.hidden_size, 2), CONVENTIONS["qwen2.5-math-prm"], tok)
    prm.save_pretrained(path, format="original")


def recipe_scores(model_dir: Path, dtype: torch.dtype, problems, solutions, batch: int) -> tuple[int, int]:
    """The Qwen2.5-Math-PRM model card: chat string, full forward of the padded batch (head on every token),
    softmax, Python masking per sample."""
    from transformers import AutoModel, AutoTokenizer

    from fastprm.models.checkpoint import read_tensors

    tok = AutoTokenizer.from_pretrained(model_dir)
    backbone = AutoModel.from_pretrained(model_dir, dtype=dtype).eval()
    head_w = read_tensors(model_dir, "score")
    H = backbone.config.hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(H, H), torch.nn.ReLU(), torch.nn.Linear(H, 2)).to(dtype)
    head.load_state_dict(head_w)
    system = "Please reason step by step, and put your final answer within \\boxed{}."
    step_sep_id = tok.encode("<extra_0>")[0]
    n_tokens = n_steps = 0
    with torch.no_grad():
        for i in range(0, len(problems), batch):
            texts = [
                f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n"
                + "<extra_0>".join(s) + "<extra_0><|im_end|>\n"
                for p, s in zip(problems[i : i + batch], solutions[i : i + batch])
            ]  # fmt: skip
            enc = tok(texts, return_tensors="pt", padding=True)
            hidden = backbone(**enc, use_cache=False).last_hidden_state
            probabilities = torch.softmax(head(hidden), dim=-1) * (enc.input_ids == step_sep_id).unsqueeze(-1)
            for sample in probabilities:
                n_steps += len(sample[sample != 0].view(-1, 2)[:, 1].cpu().tolist())
            n_tokens += int(enc.attention_mask.sum())
    return n_tokens, n_steps


# The GEMM rate behind the ceiling is measured again before each round of methods (each time the best of
# CEILING_REPEATS calibration-style measurements) and the best of those and the calibration's counts: one
# few-second measurement moved 20% between runs (fp32 oneDNN 297 / 375 / 425 GFLOP/s on the Zen 5).
CEILING_CHILD, CEILING_REPEATS = "gemm_rate", 3


def run_method(method: str, model_dir: Path, dtype: torch.dtype, n_rows: int, batch_tokens: int) -> dict:
    # Only what older fastprm versions also have (fastprm_previous runs this function on them).
    from fastprm.models import PRM
    from fastprm.scoring import Scorer

    problems, solutions = load_rows(n_rows)
    start = time.perf_counter()
    setup = {}
    if method in FASTPRM_VARIANTS:  # the choices come from the environment (see fastprm_env)
        prm = PRM.from_pretrained(model_dir, dtype=dtype)
        begin = time.perf_counter()
        scorer = Scorer(prm)
        if getattr(scorer, "plan", None) and scorer.plan.compile:  # compilation is excluded, as vLLM's is
            scorer.score(problems[:4], solutions[:4])
        setup = {"setup_seconds": time.perf_counter() - begin, "plan": str(getattr(scorer, "plan", ""))}
        start = time.perf_counter()
        tokenized = scorer.tokenizer(problems, solutions)
        out = scorer.score_tokenized(tokenized)
        n_tokens, n_steps = sum(len(t.input_ids) for t in tokenized), sum(len(o.step_scores) for o in out)
    elif method.startswith("recipe"):
        n_tokens, n_steps = recipe_scores(
            model_dir, dtype, problems, solutions, 1 if method == "recipe_b1" else 8
        )
    else:  # the bare backbone over exactly fastprm's tokens, no head
        from fastprm.batching import token_budget_batches

        prm = PRM.from_pretrained(model_dir, dtype=dtype)
        scorer = Scorer(prm, batch_tokens=batch_tokens)
        tokenized = scorer.tokenizer(problems, solutions)
        lengths = [len(t.input_ids) for t in tokenized]
        start = time.perf_counter()
        with torch.inference_mode():
            if method == "backbone_b1":
                for t in tokenized:
                    prm.hidden_states(torch.tensor([t.input_ids]))
            else:
                for batch in token_budget_batches(lengths, batch_tokens):
                    T = max(lengths[i] for i in batch)
                    ids = torch.zeros(len(batch), T, dtype=torch.long)
                    mask = torch.zeros(len(batch), T, dtype=torch.long)
                    for b, i in enumerate(batch):
                        ids[b, : lengths[i]] = torch.tensor(tokenized[i].input_ids)
                        mask[b, : lengths[i]] = 1
                    prm.hidden_states(ids, attention_mask=mask)
        n_tokens, n_steps = sum(lengths), sum(len(t.step_ends) for t in tokenized)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rows_per_s": n_rows / seconds,
        "steps_per_s": n_steps / seconds,
        "tokens_per_s": n_tokens / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **setup,
    }


def gemm_rate(model_dir: Path, dtype: torch.dtype) -> dict:
    """The fastest GEMM rate of the model's first-layer linear shapes over the machine's GEMM routes, as the
    calibration measures it (:func:`fastprm.tuning.calibration.gemm_seconds`), best of CEILING_REPEATS."""
    from fastprm.models import PRM
    from fastprm.models.gemm_routes import available_gemm_routes
    from fastprm.tuning.calibration import gemm_flops, gemm_seconds

    prm = PRM.from_pretrained(model_dir, dtype=dtype)
    flops = gemm_flops(prm)
    routes = available_gemm_routes(prm.device, prm.dtype)
    seconds = min(min(gemm_seconds(prm, routes).values()) for _ in range(CEILING_REPEATS))
    return {"gflops": flops / seconds / 1e9}


def run_child(method: str, dtype: str, python: str, env: dict) -> dict:
    """One method (or the GEMM rate) in its own process: its result, the last JSON line it printed."""
    cmd = [python, __file__, *sys.argv[1:], "--child", method, dtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{method} {dtype} failed:\n{proc.stderr[-4000:]}")
    # The last JSON line: libraries may print other lines to stdout.
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def tokens_file(model_dir: Path, n_rows: int) -> Path:
    """Token ids and step counts that the parent writes for the vLLM child."""
    return model_dir.parent / f"{model_dir.name}-{n_rows}rows-tokens.json"


def probs_file(model_dir: Path, n_rows: int, method: str, dtype: str) -> Path:
    """Per-row step probabilities that a vLLM child writes back for the parity check."""
    return model_dir.parent / f"{model_dir.name}-{n_rows}rows-{method}-{dtype}-probs.json"


def prepare_vllm_inputs(
    model_dir: Path, dtype: torch.dtype, n_rows: int, batch_tokens: int, tokens_path: Path
) -> list[list[float]]:
    """Tokenizes the rows exactly as the fastprm method does and writes the ids for the vLLM child.

    Also stores how long that tokenization took, which the child adds to its time: fastprm's timed region
    includes its tokenizer, and vLLM gets the ids for free otherwise. Returns fastprm's step probabilities
    of the first PARITY_ROWS rows in ``dtype``, to check that vLLM scores the same thing."""
    from fastprm.models import PRM
    from fastprm.scoring import Scorer

    problems, solutions = load_rows(n_rows)
    scorer = Scorer(PRM.from_pretrained(model_dir, dtype=dtype), batch_tokens=batch_tokens)
    start = time.perf_counter()
    tokenized = scorer.tokenizer(problems, solutions)
    tokenize_seconds = time.perf_counter() - start
    if len(scorer.tokenizer.separator_ids) != 1:
        raise SystemExit("vLLM's step pooler finds steps by one step_tag_id; this separator has several ids")
    payload = {
        # Not vLLM's default (151651, the id in the released Qwen2.5-Math-PRM vocabulary): the benchmark
        # tokenizer adds <extra_0> itself, so its id is whatever the tokenizer assigned.
        "step_tag_id": scorer.tokenizer.separator_ids[0],
        "tokenize_seconds": tokenize_seconds,
        "rows": [{"input_ids": t.input_ids, "n_steps": len(t.step_ends)} for t in tokenized],
    }
    tokens_path.write_text(json.dumps(payload))
    return [o.step_scores for o in scorer.score_tokenized(tokenized[:PARITY_ROWS])]


def vllm_env() -> dict[str, str]:
    """Environment of a vLLM child; variables the user set win.

    - VLLM_CPU_OMP_THREADS_BIND: every core this process may use. vLLM's 'auto' keeps one core per rank for its
      scheduler process, which on a 2-core machine halves the compute threads against fastprm's two.
    - OMP_NUM_THREADS only with VLLM_ENABLE_V1_MULTIPROCESSING=0 (engine in this process, no binding done by
      vLLM): otherwise vLLM cuts torch to one thread "for serving".
    - VLLM_CPU_KVCACHE_SPACE=1 (GiB, default 4): prefill-only scoring frees each row's KV cache when it is
      done; 1 GiB holds >40k tokens even at full depth in fp32, and a 4 GiB buffer would only inflate RSS.
    - Logs to stderr, so stdout carries only the result line; no usage-stats traffic.
    """
    cpus = sorted(os.sched_getaffinity(0))
    defaults = {
        "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cpus)),
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_LOGGING_STREAM": "ext://sys.stderr",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
        defaults["OMP_NUM_THREADS"] = str(len(cpus))
    return {**defaults, **os.environ}


class TreeRSS:
    """Peak memory of this process and its descendants, sampled: vLLM runs the model in a worker process
    (and its scheduler in another), so this process's own ru_maxrss would miss it. Summed as PSS, which
    splits shared pages (torch's libraries are mapped in all three) instead of counting them three times."""

    def __init__(self, interval: float = 0.25):
        import psutil  # a vLLM dependency; the vLLM venv has it

        self.me = psutil.Process()
        self.peak = 0
        self.interval = interval
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psutil

        while not self.done.wait(self.interval):
            total = 0
            for p in [self.me, *self.me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # it may end between listing and reading it
                    total += p.memory_full_info().pss
            self.peak = max(self.peak, total)

    def stop_mb(self) -> float:
        self.done.set()
        self.thread.join()
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(self.peak, own) / 2**20


def run_vllm(
    method: str,
    model_dir: Path,
    dtype: str,
    tokens_path: Path,
    probs_path: Path,
    prefix_caching: bool = False,
) -> dict:
    """vLLM's pooling runner over the parent's token ids; runs in the vLLM venv (no fastprm import here).

    Not timed, as the fastprm method does not time its model load: building the LLM (weights, KV cache,
    torch.compile of the backbone in ``vllm`` mode) and one warmup encode() of the first rows, which runs
    whatever vLLM still compiles or initializes lazily on the first real batch. Timed: one encode() of all
    rows and reading P(step good) out of its results, plus the parent's tokenization time (see
    prepare_vllm_inputs). vLLM batches the rows itself with its defaults (here 4096 tokens per step);
    prefix caching and chunked prefill are off, as vLLM sets them for step pooling, unless ``prefix_caching``
    asks for prefix caching (bench_search.py: rows that share a problem).
    """
    from vllm import LLM
    from vllm.config import PoolerConfig
    from vllm.inputs import TokensPrompt

    rss = TreeRSS()
    data = json.loads(tokens_path.read_text())
    prompts = [TokensPrompt(prompt_token_ids=r["input_ids"]) for r in data["rows"]]
    llm = LLM(
        str(model_dir),
        runner="pooling",
        dtype=dtype,
        enforce_eager=method == "vllm_eager",
        # STEP pooling is the model's default; step_tag_id must name our separator (see prepare_vllm_inputs).
        pooler_config=PoolerConfig(step_tag_id=data["step_tag_id"]),
        # Ids come in ready-made: a tokenizer would cost ~0.4 GB in each of two processes and do nothing
        # (vLLM then logs a failed chat-template warmup, which is harmless here).
        skip_tokenizer_init=True,
        **({"enable_prefix_caching": True} if prefix_caching else {}),
    )
    llm.encode(prompts[:4], pooling_task="token_classify", use_tqdm=False)
    start = time.perf_counter()
    outputs = llm.encode(prompts, pooling_task="token_classify", use_tqdm=False)
    # One [n_steps, 2] softmax per row; column 1 is P(step good), as fastprm's positive class.
    probs = [o.outputs.data[:, 1].float().tolist() for o in outputs]
    seconds = time.perf_counter() - start + data["tokenize_seconds"]
    for i, (p, r) in enumerate(zip(probs, data["rows"])):
        if len(p) != r["n_steps"]:
            raise SystemExit(f"row {i}: vLLM scored {len(p)} steps, fastprm's tokenizer made {r['n_steps']}")
    probs_path.write_text(json.dumps(probs))
    n_rows = len(prompts)
    n_tokens = sum(len(r["input_ids"]) for r in data["rows"])
    n_steps = sum(r["n_steps"] for r in data["rows"])
    return {
        "seconds": seconds,
        "rows_per_s": n_rows / seconds,
        "steps_per_s": n_steps / seconds,
        "tokens_per_s": n_tokens / seconds,
        "peak_rss_mb": rss.stop_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--workdir", default="/tmp/fastprm-bench-score")
    parser.add_argument(
        "--name",
        default=None,
        help="results file name in benchmarks/results/ (.md and .json); default one per CPU model, where a "
        "run replaces the rows of its shape and dtypes and keeps the others",
    )
    parser.add_argument(
        "--vllm-python",
        default=str(VLLM_VENV / "bin" / "python"),
        help="python of the venv made by benchmarks/setup_vllm_venv.sh (default: $FASTPRM_VLLM_VENV or "
        ".venvs/vllm in the repo)",
    )
    parser.add_argument(
        "--previous-python",
        default=None,
        help="python of a venv with an older fastprm, for the fastprm_previous method (a regression check)",
    )
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_dir = Path(args.workdir) / f"qwen25-math-prm-{args.shape}-{args.layers}l"

    if args.child:
        method, dtype = args.child
        if method in VLLM_METHODS:
            result = run_vllm(
                method,
                model_dir,
                dtype,
                tokens_file(model_dir, args.rows),
                probs_file(model_dir, args.rows, method, dtype),
            )
        elif method == CEILING_CHILD:
            result = gemm_rate(model_dir, getattr(torch, dtype))
        else:
            result = run_method(method, model_dir, getattr(torch, dtype), args.rows, args.batch_tokens)
        print(json.dumps(result), flush=True)
        return
    if not (DATA / "processbench").exists():
        sys.exit(f"shared data not found at {DATA}")
    if not (model_dir / "config.json").exists():
        make_checkpoint(model_dir, args.shape, args.layers)
    methods = args.methods.split(",")
    if any(m in VLLM_METHODS for m in methods) and not Path(args.vllm_python).exists():
        print(
            f"skipping {', '.join(m for m in methods if m in VLLM_METHODS)}: no vLLM venv python at "
            f"{args.vllm_python}; make it with `bash benchmarks/setup_vllm_venv.sh` (or pass --vllm-python)",
            flush=True,
        )
        methods = [m for m in methods if m not in VLLM_METHODS]
    if "fastprm_previous" in methods and not args.previous_python:
        sys.exit("fastprm_previous needs --previous-python")

    os.environ["FASTPRM_CACHE_DIR"] = str(Path(args.workdir) / "tune-cache")  # children inherit it
    os.environ["FASTPRM_TUNE"] = "off"  # this process tokenizes only; fastprm children get fastprm_env
    rows, calibrations = [], {}
    for dtype in args.dtypes.split(","):
        dtype_methods = [m for m in methods if not (m == "fastprm_fp32_gemms" and dtype != "bfloat16")]
        calibrations[dtype] = tune(model_dir, dtype)
        gemm_rates = [max(e["gflops"] for e in calibrations[dtype]["table"] if e["phase"] == "gemm")]
        print(f"{dtype:>8} tuned plan: {calibrations[dtype]['plan']}", flush=True)
        reference = None
        if any(m in VLLM_METHODS for m in dtype_methods):
            reference = prepare_vllm_inputs(
                model_dir,
                getattr(torch, dtype),
                args.rows,
                args.batch_tokens,
                tokens_file(model_dir, args.rows),
            )
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            gemm_rates.append(run_child(CEILING_CHILD, dtype, sys.executable, os.environ)["gflops"])
            for method in dtype_methods:
                vllm = method in VLLM_METHODS
                python = args.vllm_python if vllm else sys.executable
                if method == "fastprm_previous":
                    python = args.previous_python
                result = run_child(method, dtype, python, vllm_env() if vllm else fastprm_env(method))
                if vllm:
                    probs = json.loads(probs_file(model_dir, args.rows, method, dtype).read_text())
                    diff = max(abs(a - b) for p, q in zip(probs, reference) for a, b in zip(p, q))
                    result["max_abs_diff_vs_fastprm"] = diff
                    if dtype == "float32" and diff > PARITY_TOL_FP32:
                        sys.exit(f"{method}: step probabilities differ from fastprm's by {diff:.3g} in fp32")
                if method not in best or result["seconds"] < best[method]["seconds"]:
                    best[method] = result
        ceiling = dense_ceiling(model_dir, max(gemm_rates))
        print(
            f"{dtype:>8} dense ceiling {ceiling['tokens_per_s']:.0f} tok/s at {ceiling['gflops']:.0f} GFLOP/s, the "
            f"best of the calibration's and each round's GEMM rates ({', '.join(f'{g:.0f}' for g in gemm_rates)})",
            flush=True,
        )
        fast = best.get("fastprm")
        for method, r in best.items():
            row = {"shape": args.shape, "layers": args.layers, "dtype": dtype, "method": method, **r}
            row["ceiling_fraction"] = r["tokens_per_s"] / ceiling["tokens_per_s"]
            row["ceiling_gflops"] = ceiling["gflops"]
            if fast:
                row["fastprm_speedup"] = r["seconds"] / fast["seconds"]
            rows.append(row)
            print(
                f"{dtype:>8} {method:>20}: {r['tokens_per_s']:9.0f} tok/s  {row['ceiling_fraction']:5.2f} of ceiling  "
                f"peak RSS {r['peak_rss_mb']:7.0f} MB  "
                + (f"fastprm is x{row['fastprm_speedup']:.2f} faster  " if fast else "")
                + str(r.get("plan", "")),
                flush=True,
            )
    command = "python benchmarks/bench_score.py " + shlex.join(sys.argv[1:])
    name = args.name or cpu_results_name()
    calibrations = {f"{args.shape}-{args.layers}l-{d}": c for d, c in calibrations.items()}
    rows, calibrations, commands = merged_with_earlier(name, rows, calibrations, command)
    extra = {"rows_scored": args.rows, "calibrations": calibrations, "commands": commands}
    path = write_results(name, "` and `".join(commands), rows, markdown_table(rows, COLUMNS), extra)
    print(f"wrote {path}")


COLUMNS = [
    "shape",
    "layers",
    "dtype",
    "method",
    "tokens_per_s",
    "ceiling_fraction",
    "fastprm_speedup",
    "peak_rss_mb",
    "setup_seconds",
    "max_abs_diff_vs_fastprm",
    "plan",
]


def fastprm_env(method: str) -> dict[str, str]:
    """Environment of a non-vLLM child: fastprm methods read the calibration (pinned per FASTPRM_VARIANTS);
    the others run without one (they only tokenize with fastprm)."""
    pin = FASTPRM_VARIANTS.get(method)
    env = {**os.environ, "FASTPRM_TUNE": "off" if pin is None else "auto", "FASTPRM_TUNE_PIN": pin or ""}
    return env


def tune(model_dir: Path, dtype: str) -> dict:
    """``fastprm tune`` of the checkpoint (its record is kept with the results; fastprm children read it)."""
    cmd = [
        sys.executable,
        "-m",
        "fastprm",
        "tune",
        "--model",
        str(model_dir),
        "--dtype",
        dtype,
        "--json",
        "--quiet",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "FASTPRM_TUNE": "auto"})
    if proc.returncode:
        sys.exit(f"fastprm tune failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def dense_ceiling(model_dir: Path, gflops: float) -> dict:
    """Tokens/s of a plain forward at ``gflops``, the fastest GEMM rate measured on the model's own linear
    shapes: the linear FLOPs of every layer at every token (attention's and the head's not counted)."""
    config = json.loads((model_dir / "config.json").read_text())
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q = config["num_attention_heads"] * head_dim
    kv = config["num_key_value_heads"] * head_dim
    per_layer = 2 * (hidden * q + 2 * hidden * kv + q * hidden + 3 * hidden * inter)
    flops_per_token = per_layer * config["num_hidden_layers"]
    return {
        "gflops": gflops,
        "flops_per_token": flops_per_token,
        "tokens_per_s": gflops * 1e9 / flops_per_token,
    }


def merged_with_earlier(name: str, rows: list[dict], calibrations: dict, command: str) -> tuple:
    """This run's rows and calibrations plus an earlier results file's for other shapes or dtypes (a file per
    CPU model gathers every shape measured on it), and the commands that made them."""
    from common import RESULTS

    try:
        earlier = json.loads((RESULTS / f"{name}.json").read_text())
    except (OSError, ValueError):
        return rows, calibrations, [command]
    if not isinstance(earlier.get("rows"), list):  # a file of an older format: replaced
        return rows, calibrations, [command]
    measured = {(r["shape"], r["layers"], r["dtype"]) for r in rows}
    kept = [
        r
        for r in earlier.get("rows", [])
        if (r.get("shape"), r.get("layers"), r.get("dtype")) not in measured
    ]
    commands = [c for c in earlier.get("commands", []) if c != command] + [command]
    return kept + rows, {**earlier.get("calibrations", {}), **calibrations}, commands


def cpu_results_name(benchmark: str = "bench_score") -> str:
    """One results file per CPU model: <benchmark>_<model>.md / .json."""
    from fastprm.machine import cpu_description

    name = cpu_description()[0].lower()
    return f"{benchmark}_" + "-".join("".join(c if c.isalnum() else " " for c in name).split())


if __name__ == "__main__":
    main()
