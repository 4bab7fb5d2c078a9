"""Training benchmark: TRL's PRMTrainer (trl==1.13.0) vs fastprm's PRMTrainer, in one run.

    bash benchmarks/setup_trl_venv.sh              # once: TRL in its own venv (.venvs/trl)
    python benchmarks/bench_train.py               # 4 layers of Qwen2.5-0.5B widths, fp32, 8 rows x 24 steps
    python benchmarks/bench_train.py --layers 24   # the full Qwen2.5-0.5B depth
    python benchmarks/bench_train.py --fastprm-config 'b8k:batch_tokens=8192'   # one more fastprm row
    python benchmarks/bench_train.py --layers 1 --steps 4 --batch-size 2 --hidden 128 --heads 4 --kv-heads 2 \\
        --intermediate 256 --workdir /tmp/fastprm-bench-train-smoke   # a quick smoke test

Both trainers start from the same random-weight Qwen2 token-classification checkpoint (num_labels=2, the
real Qwen2 tokenizer) and train on the same rows in the same order (a seeded shuffle written once as TRL
stepwise jsonl; both use sequential sampling), with the same batch size, optimizer steps, learning rate,
scheduler, optimizer (transformers' default), seed and dtype. The rows are real ProcessBench and PRM800K
(phase-1 test, stepwise-critique) solutions. TRL's PRMTrainer runs in the TRL venv (which has no fastprm),
fastprm's in this interpreter's venv; each method trains in its own process, whose peak RSS (VmHWM) is
reported.

Tokens: TRL appends ``step_separator`` ("\\n") to every step and labels the last token of each step; fastprm's
token-classification convention does the same. Rows longer than --max-length are left out here, so neither
trainer truncates (TRL cuts the token list at max_length, fastprm drops whole steps); each child hashes
its token ids and label positions and the parent checks that both saw exactly the same.

Reported per method: s/step and tokens/s (real, non-pad tokens) over the steps after --warmup-steps, peak RSS
and the loss of every optimizer step; ratios fastprm/TRL. An extra fastprm row trains on token-budget
batches (--batch-tokens, default: batch size x mean row length), which groups similar lengths and so pads
less: its batches differ from TRL's, so its loss curve is not compared step by step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TOKENIZER = DATA / "tokenizers" / "qwen2"
PROCESSBENCH_SUBSETS = ("gsm8k", "math", "olympiadbench", "omnimath")
PRM800K_CRITIC = DATA / "prm800k" / "phase1_test.stepwise-critic.parquet"
# Offline and quiet children: no hub calls, no telemetry ping from TRL's trainer, no tokenizer thread pools.
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
TARGET_THROUGHPUT, TARGET_MEMORY = 1.5, 0.75


# -- parent: model, rows, plan ------------------------------------------------------------------------------


def make_checkpoint(path: Path, args: argparse.Namespace) -> None:
    """A random-weight Qwen2ForTokenClassification (num_labels=2) with the real Qwen2 tokenizer: the on-disk
    format TRL's PRMTrainer trains and fastprm's token-classification convention loads."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForTokenClassification

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    config = Qwen2Config(
        vocab_size=151936,  # Qwen2.5-0.5B's padded vocabulary (embedding size drives optimizer memory)
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        num_labels=2,
        classifier_dropout=0.0,  # TRL disables dropout anyway; fastprm's head has none
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(args.seed)
    model = Qwen2ForTokenClassification(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)


def load_rows(sources: list[str]) -> list[dict]:
    """TRL stepwise rows {prompt, completions, labels} from the shared data, through fastprm's loaders.

    ProcessBench: steps up to the first error are judged; later steps are labelled 0 (the loader's default,
    what ``fastprm train`` does). PRM800K stepwise-critique rows: the followed steps (1) + one rated candidate.
    """
    from fastprm.data import load_step_examples

    examples = []
    for source in sources:
        if source == "prm800k":
            examples += load_step_examples(PRM800K_CRITIC, format="prm800k_critic").examples
            continue
        subsets = PROCESSBENCH_SUBSETS if source == "processbench" else [source.removeprefix("processbench/")]
        for subset in subsets:
            path = DATA / "processbench" / f"{subset}.json"
            examples += load_step_examples(path, format="processbench").examples
    # Hard labels as TRL's stepwise format has them (TRL casts labels to int; these are exactly 0.0 / 1.0).
    return [
        {"prompt": e.prompt, "completions": e.steps, "labels": [x >= 0.5 for x in e.labels]} for e in examples
    ]


def row_lengths(model_dir: Path, rows: list[dict]) -> list[int]:
    """Tokens per row under the token-classification convention (prompt, then each step + "\\n")."""
    from transformers import AutoTokenizer

    from fastprm.models import CONVENTIONS
    from fastprm.tokenization import StepTokenizer

    step_tokenizer = StepTokenizer(
        AutoTokenizer.from_pretrained(model_dir), CONVENTIONS["token-classification"]
    )
    tokenized = step_tokenizer([r["prompt"] for r in rows], [r["completions"] for r in rows])
    return [len(t.input_ids) for t in tokenized]


def parse_config(spec: str) -> tuple[str, dict]:
    """``NAME:KEY=VALUE,KEY=VALUE`` -> (NAME, PRMTrainingArguments overrides); values parsed as JSON if they
    can be (numbers, true/false), else kept as strings."""
    name, _, body = spec.partition(":")
    overrides = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


# -- children -----------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM, MiB).

    Not ru_maxrss: Linux carries the forking parent's RSS into the child's ru_maxrss (the fork copy is
    counted before exec), so every child would report at least the parent's size (this parent holds
    thousands of tokenized rows). VmHWM belongs to the exec'd address space alone.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no procfs: KiB on Linux


def recording(trainer_cls: type, record: dict) -> type:
    """``trainer_cls`` whose training loss and batch sizes are recorded per optimizer step (both trainers get
    the same wrapper, so the recording costs both the same)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """Wall time between consecutive optimizer-step ends: covers data loading, collation, forward,
        backward and the optimizer step."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.last, self.last_cpu = time.perf_counter(), time.process_time()
            record["rss_before_train_mb"] = peak_rss_mb()

        def on_step_end(self, args, state, control, **kwargs):
            now, cpu = time.perf_counter(), time.process_time()
            record["step_seconds"].append(now - self.last)
            # CPU seconds of all this process's threads: less sensitive than wall time to other jobs on a
            # shared machine (still not immune: cache and memory bandwidth are shared too).
            record["step_cpu_seconds"].append(cpu - self.last_cpu)
            self.last, self.last_cpu = now, cpu

    class Recording(trainer_cls):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(StepClock())

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
            if model.training:
                loss = out[0] if return_outputs else out
                record["losses"].append(float(loss.detach()))
                ids = inputs["input_ids"]
                mask = inputs.get("attention_mask")
                record["real_tokens"].append(int(mask.sum()) if mask is not None else ids.numel())
                record["padded_tokens"].append(ids.numel())
                # fastprm batches carry cu_steps (one entry per row + 1), which also counts packed rows
                cu_steps = inputs.get("cu_steps")
                record["rows"].append(cu_steps.numel() - 1 if cu_steps is not None else ids.shape[0])
            return out

    return Recording


class TokenHash:
    """sha256 over each row's token ids and (position, label) of its labelled tokens, in dataset order."""

    def __init__(self):
        self.digest = hashlib.sha256()
        self.tokens = 0

    def add(self, input_ids: list[int], labelled: list[tuple[int, int]]) -> None:
        self.digest.update(json.dumps([list(input_ids), labelled]).encode())
        self.tokens += len(input_ids)


def training_kwargs(plan: dict, output_dir: str) -> dict:
    """TrainingArguments both trainers share: every default that TRL's PRMConfig changes is set explicitly
    (gradient checkpointing on, bf16 on, logging every 10 steps)."""
    return {
        "output_dir": output_dir,
        "max_steps": plan["steps"],
        "per_device_train_batch_size": plan["batch_size"],
        "learning_rate": plan["lr"],
        "lr_scheduler_type": plan["lr_scheduler"],
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "seed": plan["seed"],
        "data_seed": plan["seed"],
        "bf16": plan["dtype"] == "bfloat16",
        "gradient_checkpointing": plan["gradient_checkpointing"],
        # The same recompute flavour for both (PRM defaults to non-reentrant; say it for TRL's model too).
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "train_sampling_strategy": "sequential",  # the parent already shuffled the rows once, for both
        "save_strategy": "no",
        "logging_steps": max(plan["steps"], 1),
        "report_to": [],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def finish_record(record: dict, token_hash: TokenHash, args, **trainer_version: str) -> None:
    """What both children report after training besides the timings: the token hash, the optimizer and
    the library versions."""
    import torch
    import transformers

    record.update(
        token_hash=token_hash.digest.hexdigest(),
        dataset_tokens=token_hash.tokens,
        optim=str(getattr(args.optim, "value", args.optim)),
        versions={"torch": torch.__version__, "transformers": transformers.__version__, **trainer_version},
    )


def run_trl(plan: dict, record: dict) -> None:
    """TRL's PRMTrainer as its docs use it: AutoModelForTokenClassification, stepwise rows, PRMConfig."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForTokenClassification, AutoTokenizer
    from trl.experimental.prm import PRMConfig, PRMTrainer

    dtype = getattr(torch, plan["dtype"])
    rows = [json.loads(line) for line in Path(plan["data"]).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(plan["model"])
    model = AutoModelForTokenClassification.from_pretrained(plan["model"], dtype=dtype)
    config = PRMConfig(
        **training_kwargs(plan, str(Path(plan["workdir"]) / "out-trl")),
        max_length=plan["max_length"],  # no row is longer (the parent filtered), so nothing is cut
        step_separator="\n",
        train_on_last_step_only=False,
        disable_dropout=True,
    )
    start = time.perf_counter()
    trainer = recording(PRMTrainer, record)(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    record["setup_seconds"] = time.perf_counter() - start  # includes TRL's tokenization (datasets.map)
    token_hash = TokenHash()
    for item in trainer.train_dataset:
        labels = item["labels"]
        token_hash.add(item["input_ids"], [(p, int(x)) for p, x in enumerate(labels) if x != -100])
    trainer.train()
    assert "fastprm" not in sys.modules, "the TRL child must not import fastprm"
    finish_record(record, token_hash, config, trl=trl.__version__)


def run_fastprm(plan: dict, record: dict, overrides: dict) -> None:
    """fastprm's PRMTrainer wired as ``fastprm train`` wires it (PRM.from_pretrained, StepTokenizer,
    load_step_examples, StepDataset), reading the same TRL-format rows."""
    import torch

    import fastprm
    from fastprm.data import load_step_examples
    from fastprm.models import PRM
    from fastprm.tokenization import StepTokenizer
    from fastprm.training import PRMTrainer, PRMTrainingArguments, StepDataset

    dtype = getattr(torch, plan["dtype"])
    prm = PRM.from_pretrained(plan["model"], dtype=dtype)
    assert prm.convention.name == "token-classification", prm.convention
    kwargs = training_kwargs(plan, str(Path(plan["workdir"]) / f"out-{record['method']}"))
    if overrides.get("batch_tokens"):
        kwargs.pop("train_sampling_strategy")  # token-budget batches come with their own seeded sampler
    args = PRMTrainingArguments(**{**kwargs, **overrides})
    start = time.perf_counter()
    step_tokenizer = StepTokenizer(
        prm.tokenizer, prm.convention, max_length=plan["max_length"], truncation="drop-steps"
    )
    examples = load_step_examples(plan["data"], format="trl").examples
    dataset = StepDataset(examples, step_tokenizer)
    trainer = recording(PRMTrainer, record)(prm, args, train_dataset=dataset)
    record["setup_seconds"] = time.perf_counter() - start  # includes fastprm's tokenization
    token_hash = TokenHash()
    for item in dataset:
        labelled = [(e, int(x)) for e, x in zip(item["step_ends"], item["step_labels"])]
        token_hash.add(item["input_ids"], labelled)
    trainer.train()
    finish_record(record, token_hash, args, fastprm=getattr(fastprm, "__version__", "?"))


def child(plan_path: str, method: str, out_path: str) -> None:
    import torch

    plan = json.loads(Path(plan_path).read_text())
    spec = plan["methods"][method]
    if plan["threads"]:
        torch.set_num_threads(plan["threads"])
    record = {
        "method": method,
        "losses": [],
        "step_seconds": [],
        "step_cpu_seconds": [],
        "real_tokens": [],
        "padded_tokens": [],
        "rows": [],
        "threads": torch.get_num_threads(),
    }
    if spec["kind"] == "trl":
        run_trl(plan, record)
    else:
        run_fastprm(plan, record, spec["overrides"])
    record["peak_rss_mb"] = peak_rss_mb()
    record["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # for reference
    Path(out_path).write_text(json.dumps(record) + "\n")


# -- parent: runs and report --------------------------------------------------------------------------------


def summarize(record: dict, warmup: int) -> dict:
    """s/step and tokens/s over the steps after the first ``warmup`` (allocator and kernel warm-up)."""
    seconds = record["step_seconds"][warmup:]
    real, padded = record["real_tokens"][warmup:], record["padded_tokens"][warmup:]
    total = sum(seconds)
    return {
        "method": record["method"],
        "steps_timed": len(seconds),
        "rows_per_step": sum(record["rows"]) / max(len(record["rows"]), 1),
        "s_per_step": total / max(len(seconds), 1),
        "cpu_s_per_step": sum(record["step_cpu_seconds"][warmup:]) / max(len(seconds), 1),
        "tokens_per_s": sum(real) / total if total else float("nan"),
        "padded_tokens_per_s": sum(padded) / total if total else float("nan"),
        "pad_fraction": 1 - sum(real) / sum(padded) if padded else float("nan"),
        "peak_rss_mb": round(record["peak_rss_mb"]),
        "rss_before_train_mb": round(record.get("rss_before_train_mb", float("nan"))),
        "setup_s": record["setup_seconds"],
        "first_loss": record["losses"][0] if record["losses"] else float("nan"),
        "last_loss": record["losses"][-1] if record["losses"] else float("nan"),
    }


def run_child(python: str, plan_path: Path, method: str, workdir: Path) -> dict:
    out = workdir / f"result-{method}.json"
    out.unlink(missing_ok=True)
    cmd = [python, str(Path(__file__).resolve()), "--child", str(plan_path), method, str(out)]
    env = {**os.environ, **CHILD_ENV}
    print(f"running {method} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    if proc.returncode != 0 or not out.exists():
        sys.exit(f"{method} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(out.read_text())


def plot_losses(records: dict[str, dict], same_batches: set[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=[3, 1])
    trl_losses = records["trl"]["losses"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (method, record) in enumerate(records.items()):
        steps = range(1, len(record["losses"]) + 1)
        label = method if method in same_batches or method == "trl" else f"{method} (other batches)"
        style = "-" if method == "trl" else ("--" if method in same_batches else ":")
        color = colors[i % len(colors)]
        top.plot(steps, record["losses"], style, color=color, marker="o", markersize=3, label=label)
        if method in same_batches:
            diffs = [a - b for a, b in zip(record["losses"], trl_losses)]
            bottom.plot(steps, diffs, style, color=color, marker="o", markersize=3, label=f"{method} - trl")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    top.set_ylabel("training loss (mean step CE)")
    top.set_title("TRL PRMTrainer vs fastprm PRMTrainer: loss per optimizer step")
    top.legend()
    bottom.axhline(0, color="grey", linewidth=0.5)
    bottom.set_xlabel("optimizer step")
    bottom.set_ylabel("loss difference")
    if bottom.get_legend_handles_labels()[0]:
        bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--intermediate", type=int, default=4864)
    parser.add_argument("--heads", type=int, default=14)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch-size", type=int, default=8, help="rows per optimizer step (both trainers)")
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps (both trainers)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of the timing")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--lr-scheduler", default="constant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-length", type=int, default=1024, help="longer rows are left out (TRL's default)"
    )
    parser.add_argument(
        "--rows", type=int, default=None, help="rows to train on (default batch-size x steps: one pass)"
    )
    parser.add_argument(
        "--data",
        default="processbench,prm800k",
        help="comma list of processbench, processbench/SUBSET (gsm8k, math, olympiadbench, omnimath), prm800k",
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on for both trainers")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the results from the last run's result files"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads in each child (0: torch's default)"
    )
    parser.add_argument(
        "--batch-tokens",
        type=int,
        default=-1,
        help="token budget of the extra fastprm row (-1: batch size x mean row length; 0: no extra row)",
    )
    parser.add_argument(
        "--fastprm-config",
        action="append",
        default=[],
        metavar="NAME:KEY=VAL,...",
        help="another fastprm row with these PRMTrainingArguments overrides (repeatable)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of each method (the fastest counts)")
    parser.add_argument(
        "--trl-python",
        default=os.environ.get("FASTPRM_TRL_VENV", str(REPO / ".venvs" / "trl")) + "/bin/python",
        help="python of the TRL venv (made by benchmarks/setup_trl_venv.sh)",
    )
    parser.add_argument("--workdir", default="/tmp/fastprm-bench-train")
    parser.add_argument("--child", nargs=3, metavar=("PLAN", "METHOD", "OUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def write_rows(args: argparse.Namespace, model_dir: Path, workdir: Path) -> tuple[Path, int, float]:
    """Rows of every source that fit max_length, one seeded shuffle, the first --rows of it, written as TRL
    stepwise jsonl; returns (that file, its row count, its mean row length in tokens)."""
    rows = load_rows(args.data.split(","))
    lengths = row_lengths(model_dir, rows)
    fitting = [(r, n) for r, n in zip(rows, lengths) if n <= args.max_length]
    random.Random(args.seed).shuffle(fitting)
    n_rows = min(args.rows or args.batch_size * args.steps, len(fitting))
    chosen = fitting[:n_rows]
    data_path = workdir / "rows.trl.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r, _ in chosen))
    mean_length = sum(n for _, n in chosen) / len(chosen)
    print(
        f"{len(rows)} rows, {len(rows) - len(fitting)} longer than {args.max_length} tokens left out; "
        f"training on {n_rows} (mean {mean_length:.0f} tokens)",
        flush=True,
    )
    return data_path, n_rows, mean_length


def methods_of(args: argparse.Namespace, mean_length: float) -> dict[str, dict]:
    """The trainers to run: TRL, fastprm on TRL's batches, fastprm on token-budget batches (unless
    --batch-tokens 0) and one fastprm row per --fastprm-config."""
    methods: dict[str, dict] = {"trl": {"kind": "trl"}, "fastprm": {"kind": "fastprm", "overrides": {}}}
    budget = (
        args.batch_tokens if args.batch_tokens >= 0 else -(-int(args.batch_size * mean_length) // 64) * 64
    )
    if budget:
        methods["fastprm_budget"] = {"kind": "fastprm", "overrides": {"batch_tokens": budget}}
    for spec in args.fastprm_config:
        name, overrides = parse_config(spec)
        methods[f"fastprm_{name}"] = {"kind": "fastprm", "overrides": overrides}
    return methods


def write_plan(args: argparse.Namespace, model_dir: Path, data_path: Path, methods: dict, workdir: Path):
    """The plan every child reads (model, rows, training settings, methods); returns (plan, its path)."""
    plan = {
        "model": str(model_dir),
        "data": str(data_path),
        "workdir": str(workdir),
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "lr": args.lr,
        "lr_scheduler": args.lr_scheduler,
        "seed": args.seed,
        "max_length": args.max_length,
        "gradient_checkpointing": args.gradient_checkpointing,
        "threads": args.threads,
        "methods": methods,
    }
    plan_path = workdir / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=2) + "\n")
    return plan, plan_path


def run_methods(args: argparse.Namespace, methods: dict, plan_path: Path, workdir: Path) -> dict[str, dict]:
    """Each method's fastest run of --repeats (the last run's result files with --report-only)."""
    if args.report_only:  # re-render the report from the children's result files of the last run
        return {m: json.loads((workdir / f"result-{m}.json").read_text()) for m in methods}
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for method, spec in methods.items():
            python = args.trl_python if spec["kind"] == "trl" else sys.executable
            record = run_child(python, plan_path, method, workdir)
            timed = sum(record["step_seconds"][args.warmup_steps :])
            if method not in best or timed < sum(best[method]["step_seconds"][args.warmup_steps :]):
                best[method] = record
    return best


def main() -> None:
    args = parse_args()
    if args.child:
        child(*args.child)
        return
    if not Path(args.trl_python).exists():
        sys.exit(f"no TRL venv at {args.trl_python}: run `bash benchmarks/setup_trl_venv.sh` first")
    if not (DATA / "processbench").exists():
        sys.exit(f"shared data not found at {DATA}")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    shape = f"h{args.hidden}-i{args.intermediate}-a{args.heads}-kv{args.kv_heads}-{args.layers}l-s{args.seed}"
    model_dir = workdir / f"qwen2-tokcls-{shape}"
    if not (model_dir / "config.json").exists():
        make_checkpoint(model_dir, args)
    data_path, n_rows, mean_length = write_rows(args, model_dir, workdir)
    methods = methods_of(args, mean_length)
    plan, plan_path = write_plan(args, model_dir, data_path, methods, workdir)
    report(args, plan, run_methods(args, methods, plan_path, workdir), n_rows, mean_length)


def summary_rows(args: argparse.Namespace, records: dict[str, dict]) -> tuple[list[dict], set[str]]:
    """One summary row per method with its ratios to TRL, and the methods trained on TRL's own batches
    (whose loss curves are compared step by step)."""
    trl = records["trl"]
    trl_summary = summarize(trl, args.warmup_steps)
    rows, same_batches = [], set()
    for method, record in records.items():
        row = summarize(record, args.warmup_steps)
        row["same_tokens_as_trl"] = record["token_hash"] == trl["token_hash"]
        if method != "trl":
            row["throughput_x"] = row["tokens_per_s"] / trl_summary["tokens_per_s"]
            row["memory_x"] = row["peak_rss_mb"] / trl_summary["peak_rss_mb"]
            # The same rows every step (padded or packed, the math is the same): the loss curves are comparable.
            if record["real_tokens"] == trl["real_tokens"]:
                same_batches.add(method)
                row["max_abs_loss_diff"] = max(abs(a - b) for a, b in zip(record["losses"], trl["losses"]))
        rows.append(row)
    return rows, same_batches


def print_row(row: dict) -> None:
    """One method's figures on the console, with its ratios to TRL and a warning when its tokens differ."""
    method = row["method"]
    print(
        f"{method:>16}: {row['s_per_step']:7.3f} s/step ({row['cpu_s_per_step']:6.2f} CPU s) "
        f"{row['tokens_per_s']:8.0f} tok/s  "
        f"pad {row['pad_fraction']:5.1%}  peak RSS {row['peak_rss_mb']:6.0f} MB  "
        f"loss {row['first_loss']:.4f} -> {row['last_loss']:.4f}"
        + (
            f"  | x{row['throughput_x']:.2f} throughput, x{row['memory_x']:.2f} memory"
            + (f", max |loss diff| {row['max_abs_loss_diff']:.2e}" if "max_abs_loss_diff" in row else "")
            if method != "trl"
            else ""
        ),
        flush=True,
    )
    if not row["same_tokens_as_trl"]:
        print(f"  WARNING: {method} tokenized the rows differently from TRL", flush=True)


def verdict(args: argparse.Namespace, rows: list[dict], same_batches: set[str], trl_steps: int) -> str:
    """The targets (throughput, memory) met or not by each fastprm method on TRL's batches."""
    return "; ".join(
        f"{r['method']} on TRL's batches ({args.batch_size} rows/step): x{r['throughput_x']:.2f} TRL's tokens/s "
        f"(target >= {TARGET_THROUGHPUT}: {'met' if r['throughput_x'] >= TARGET_THROUGHPUT else 'NOT met'}), "
        f"x{r['memory_x']:.2f} its peak RSS (target <= {TARGET_MEMORY}: "
        f"{'met' if r['memory_x'] <= TARGET_MEMORY else 'NOT met'}), max |loss diff| "
        f"{r['max_abs_loss_diff']:.2e} over {trl_steps} steps"
        for r in rows
        if r["method"] in same_batches
    )


def setup_text(
    args: argparse.Namespace, plan: dict, records: dict[str, dict], n_rows: int, mean_length: float
):
    """The paragraph of the result file that says what was run: model, data, training settings, versions."""
    trl = records["trl"]
    return (
        f"Model: random-weight Qwen2ForTokenClassification, hidden {args.hidden}, intermediate "
        f"{args.intermediate}, {args.heads} heads / {args.kv_heads} KV heads, {args.layers} layers, vocab 151936, "
        f"real Qwen2 tokenizer. Data: {n_rows} rows of {args.data} (mean {mean_length:.0f} tokens, <= "
        f"{args.max_length}), one seeded shuffle, sequential sampling. {args.steps} optimizer steps, batch "
        f"{args.batch_size}, lr {args.lr} ({args.lr_scheduler}), seed {args.seed}, {args.dtype}, optimizer "
        f"{trl['optim']}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
        f"{trl['threads']} threads (TRL's PRMConfig turns gradient checkpointing and bf16 on by default: "
        f"both are set explicitly, the same for both trainers). s/step and tokens/s (non-pad) over steps {args.warmup_steps + 1}-"
        f"{args.steps}; peak RSS = VmHWM of each method's own process. fastprm_budget: token-budget "
        f"batches (batch_tokens={plan['methods'].get('fastprm_budget', {}).get('overrides', {}).get('batch_tokens')}), "
        "other batches than TRL's, so its loss is not compared step by step.\n\n"
        f"Versions: TRL child {trl['versions']}; fastprm child {records['fastprm']['versions']}."
    )


COLUMNS = [
    "method",
    "rows_per_step",
    "s_per_step",
    "cpu_s_per_step",
    "tokens_per_s",
    "pad_fraction",
    "peak_rss_mb",
    "rss_before_train_mb",
    "throughput_x",
    "memory_x",
    "max_abs_loss_diff",
    "same_tokens_as_trl",
]


def report(args: argparse.Namespace, plan: dict, records: dict[str, dict], n_rows: int, mean_length: float):
    """Prints every method's figures and the verdict; writes the loss figure and the result files."""
    from common import markdown_table, write_results

    trl = records["trl"]
    rows, same_batches = summary_rows(args, records)
    for row in rows:
        print_row(row)
    summary = verdict(args, rows, same_batches, len(trl["losses"]))
    print(summary, flush=True)

    png = Path(__file__).parent / "results" / "bench_train_loss.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    plot_losses(records, same_batches, png)
    loss_rows = [
        {"step": i + 1, **{m: r["losses"][i] for m, r in records.items() if i < len(r["losses"])}}
        for i in range(len(trl["losses"]))
    ]
    markdown = (
        f"{setup_text(args, plan, records, n_rows, mean_length)}\n\n{summary}.\n\n{markdown_table(rows, COLUMNS)}\n\n"
        f"Loss per optimizer step ({png.name}):\n\n{markdown_table(loss_rows, ['step', *records])}"
    )
    command = "python benchmarks/bench_train.py " + shlex.join(
        a for a in sys.argv[1:] if a != "--report-only"
    )
    path = write_results(
        "bench_train",
        command.strip(),
        rows,
        markdown,
        {
            "plan": plan,
            "versions": {m: r["versions"] for m, r in records.items()},
            "loss_curves": {m: r["losses"] for m, r in records.items()},
            "step_seconds": {m: r["step_seconds"] for m, r in records.items()},
            "real_tokens": {m: r["real_tokens"] for m, r in records.items()},
        },
    )
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
