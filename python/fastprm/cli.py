"""The ``fastprm`` command line: every command's options (``score``, ``train``, ``eval``, ``report``, ``tune``,
``search``, ``demo``),
checked when parsed, and the ``score`` pipeline.

Building the parser imports neither torch, transformers nor numpy: the choices come from torch-free modules
and each command imports what it needs when it runs (``fastprm --help`` stays fast). Errors a user can cause
(a bad option, a missing file, a bad row, a broken checkpoint) end the command with one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import math
import re
import sys
import time
from pathlib import Path

from .batching import LAYOUTS
from .data.formats import NEUTRAL_POLICIES
from .data.loading import BAD_ROW_POLICIES, FORMAT_COLUMNS
from .io import (
    AtomicOutput,
    BadRow,
    check_folder,
    check_input_file,
    check_output_file,
    json_text,
    one_line,
    read_rows,
)
from .machine import peak_rss_mb
from .metrics import AGGREGATES
from .models.conventions import CONVENTION_NAMES
from .tokenization import TRUNCATION_MODES
from .training.label_modes import LABEL_MODES
from .tuning.plan import GEMM_ROUTES

DEFAULT_SPLIT = r"\n\n"
# --dtype names: fastprm's short ones and torch's own, to the torch dtype's name (None: the model's default).
DTYPES = {
    "auto": None,
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}
TRAIN_DTYPES = ("fp32", "float32", "bf16", "bfloat16")
EXIT_INTERRUPTED = 130  # the shell's code for a command ended by SIGINT


# -- option types: each names what it expects; argparse adds the option's name ---------------------------


def _number(text: str, kind: type, ok, expected: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or (kind is float and not math.isfinite(value)) or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def max_steps(text: str) -> int:
    return _number(text, int, lambda v: v == -1 or v >= 1, "-1 (train for --epochs) or an integer >= 1")


def probability(text: str) -> float:
    return _number(text, float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a finite number > 0")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "a finite number >= 0")


def _compiled(text: str) -> re.Pattern:
    try:
        return re.compile(text)
    except re.error as err:
        raise argparse.ArgumentTypeError(f"invalid regex {text!r}: {err}") from None


def split_regex(text: str) -> str:
    """A regex that splits a solution into steps: valid, and never matching the empty string (which would
    split between every character)."""
    pattern = _compiled(text)
    if pattern.fullmatch(""):
        raise argparse.ArgumentTypeError(f"{text!r} matches the empty string; give the text between steps")
    return text


def group_regex(text: str) -> str:
    """A valid regex with at least one group (the part it picks out)."""
    pattern = _compiled(text)
    if pattern.groups < 1:
        raise argparse.ArgumentTypeError(f"{text!r} has no group: put the part to take in ( )")
    return text


def dtype_name(text: str) -> str | None:
    """A --dtype name -> torch's dtype name (None for auto)."""
    if text not in DTYPES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(DTYPES)}, got {text!r}")
    return DTYPES[text]


def train_dtype_name(text: str) -> str:
    if text not in TRAIN_DTYPES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(TRAIN_DTYPES)}, got {text!r}")
    return DTYPES[text]


def escaped_text(text: str) -> str:
    """Text with backslash escapes (``\\n``) decoded; never empty."""
    try:
        value = text.encode("utf-8").decode("unicode_escape")
    except UnicodeDecodeError as err:
        raise argparse.ArgumentTypeError(f"bad escape in {text!r}: {err.reason}") from None
    if not value:
        raise argparse.ArgumentTypeError("expected a non-empty text")
    return value


def aggregate_list(text: str) -> list[str]:
    names = [a.strip() for a in text.split(",") if a.strip()]
    if not names or set(names) - set(AGGREGATES):
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(AGGREGATES)}, got {text!r}")
    return names


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line (the full usage of a command is its --help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- fastprm score ----------------------------------------------------------------------------------------


def _score(args: argparse.Namespace) -> int:
    """Reads the rows, tokenizes and scores them a chunk at a time, writes them to a temporary file that
    becomes --output only when every row is done. With ``--ray``: :mod:`fastprm.distributed.cli`."""
    if args.ray:
        return on_ray("score", args)
    refuse_ray_options("score", args)
    try:
        check_input_file(args.input, "--input")
        check_output_file(args.output, "--output", [("--input", args.input)])
        check_folder(args.model, "--model")
    except ValueError as err:
        raise SystemExit(f"fastprm score: {err}") from None
    scorer = load_scorer(args)
    try:
        output = AtomicOutput(args.output)
    except OSError as err:
        raise SystemExit(f"fastprm score: --output {args.output}: {one_line(err)}") from None
    try:
        with output as out:
            counts = _score_rows(scorer, read_rows(args.input, args.split_steps), out, args)
    except BadRow as err:
        raise SystemExit(f"fastprm score: {err}; {output.failure_note()}") from None
    except KeyboardInterrupt:
        print(f"fastprm score: interrupted; {output.failure_note()}", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except OSError as err:
        raise SystemExit(f"fastprm score: {one_line(err)}; {output.failure_note()}") from None
    except BaseException:  # a bug: its traceback follows, but first where the rows scored so far are
        print(f"fastprm score: failed; {output.failure_note()}", file=sys.stderr)
        raise
    if not args.quiet:
        print(_score_summary(counts, args.output, scorer.plan.describe()), file=sys.stderr)
    return 0


def on_ray(command: str, args: argparse.Namespace) -> int:
    """Runs ``fastprm <command> --ray`` (:mod:`fastprm.distributed.cli`); without Ray installed, says how
    to get it."""
    try:  # imported when run, as every command's handler is (_lazy): the parser needs no Ray
        ray_cli = importlib.import_module(".distributed.cli", __package__)
    except ModuleNotFoundError as err:
        if err.name != "ray":
            raise
        raise SystemExit(
            f"fastprm {command} --ray: Ray is not installed: pip install 'fastprm[ray]'"
        ) from None
    return getattr(ray_cli, command)(args)


def refuse_ray_options(command: str, args: argparse.Namespace) -> None:
    """Ends ``fastprm <command>`` when an option of ``--ray`` was given without ``--ray`` (it would be
    ignored: a run meant for a cluster would quietly run in one process)."""
    for name, default in args.ray_option_defaults.items():
        if getattr(args, name) != default:
            option = "--" + name.replace("_", "-")
            raise SystemExit(f"fastprm {command}: {option} is an option of --ray: add --ray, or leave it out")


def load_prm(args: argparse.Namespace, command: str):
    """The PRM of ``--model`` (with ``--convention`` where the command has it, ``--dtype``, ``--device``);
    a checkpoint it cannot load ends ``fastprm <command>`` with one line naming it."""
    import torch

    from .models import PRM

    dtype = None if args.dtype is None else getattr(torch, args.dtype)
    convention = getattr(args, "convention", "auto")
    try:
        return PRM.from_pretrained(args.model, convention=convention, dtype=dtype, device=args.device)
    except (ValueError, OSError, RuntimeError) as err:  # checkpoint problems; corners of transformers
        raise SystemExit(f"fastprm {command}: cannot load --model {args.model}: {one_line(err)}") from None


def load_scorer(args: argparse.Namespace, command: str = "score"):
    """The Scorer of the options :func:`add_scorer_options` adds; a bad one ends ``fastprm <command>``."""
    from .scoring import Scorer

    prm = load_prm(args, command)
    try:
        return Scorer(prm, **scorer_options(args))
    except ValueError as err:  # an option the machine cannot run, a bad FASTPRM_TUNE / FASTPRM_TUNE_PIN
        raise SystemExit(f"fastprm {command}: {one_line(err)}") from None


def scorer_options(args: argparse.Namespace) -> dict:
    """The :class:`~fastprm.scoring.Scorer` keyword arguments of the options :func:`add_scorer_options`
    adds."""
    return {
        "batch_tokens": args.batch_tokens,
        "max_length": args.max_length,
        "truncation": args.truncation,
        "threshold": args.threshold,
        "layout": args.layout,
        "compile": args.compile,
        "gemm_route": args.gemm_route,
    }


def _score_rows(scorer, rows, out, args: argparse.Namespace) -> dict[str, int]:
    """Scores ``rows`` a chunk at a time into ``out``; raises the first :class:`BadRow` unless
    ``--skip-bad-rows`` (then its record takes the row's place). Returns the counts of the summary.
    Each chunk is written in one call and flushed, so a partial file left by a later failure holds whole
    chunks."""
    from tqdm import tqdm

    from .row_scoring import score_chunk

    counts = dict.fromkeys(("rows", "tokens", "bad", "unscored"), 0)
    start = time.perf_counter()
    with tqdm(unit=" rows", disable=args.quiet) as bar:
        while chunk := list(itertools.islice(rows, args.chunk_rows)):
            records, chunk_counts = score_chunk(scorer, chunk, skip_bad_rows=args.skip_bad_rows)
            out.write("".join(json_text(record) + "\n" for record in records))
            out.flush()
            for key, n in chunk_counts.items():
                counts[key] += n
            bar.update(len(chunk))
            bar.set_postfix(tokens_per_s=f"{counts['tokens'] / (time.perf_counter() - start):.0f}")
    return counts


def _score_summary(counts: dict[str, int], output: str, plan: str) -> str:
    notes = [plan]
    if (rss := peak_rss_mb()) is not None:
        notes.append(f"peak RSS {rss:.0f} MB")
    if counts["bad"]:
        notes.append(f"{counts['bad']} bad rows recorded")
    if counts["unscored"]:
        notes.append(f"{counts['unscored']} rows with no step scored (all dropped by truncation)")
    return f"scored {counts['rows']} rows ({counts['tokens']} tokens) -> {output}" + "".join(
        f"; {n}" for n in notes
    )


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score every step of the solutions in a JSONL file")
    p.add_argument(
        "--input",
        required=True,
        help="JSONL rows: {problem, steps}, ProcessBench, TRL {prompt, completions}, {problem, solution} with "
        "--split-steps, or pre-tokenized {input_ids} whose separator ids mark the steps (find mode)",
    )
    p.add_argument(
        "--output",
        required=True,
        help="JSONL: each input row plus its 'scores' (written to a temporary file, renamed at the end)",
    )
    p.add_argument(
        "--split-steps",
        nargs="?",
        type=split_regex,
        const=DEFAULT_SPLIT,
        default=None,
        metavar="REGEX",
        help="split 'solution' into steps (default regex: a blank line); the output row gets the 'steps'",
    )
    p.add_argument(
        "--skip-bad-rows", action="store_true", help="record bad rows in the output instead of stopping"
    )
    p.add_argument(
        "--chunk-rows", type=positive_int, default=1024, help="rows read, scored and written at a time"
    )
    add_scorer_options(p)
    add_ray_options(p, rows_per_batch=256)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_score)


def add_ray_options(p: argparse.ArgumentParser, rows_per_batch: int) -> None:
    """``--ray`` and its pool options (``score`` and ``label``): see :mod:`fastprm.distributed`."""
    g = p.add_argument_group("on a Ray cluster (pip install 'fastprm[ray]')")
    g.add_argument(
        "--ray",
        action="store_true",
        help="run on Ray Data: --input a JSONL or Parquet file or a folder of shards, --output a new folder of "
        "shards in input order",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        metavar="auto|ADDRESS",
        help="the cluster to join, as ray.init takes it (default: start a local one on this machine's cores)",
    )
    g.add_argument("--num-workers", type=positive_int, default=1, help="actors, one model each")
    g.add_argument("--cpus-per-worker", type=positive_int, default=1, help="CPUs (torch threads) per actor")
    g.add_argument("--gpus-per-worker", type=non_negative_float, default=0, help="GPUs per actor")
    g.add_argument(
        "--batch-rows",
        type=positive_int,
        default=rows_per_batch,
        help="rows per actor call (default %(default)s)",
    )
    g.add_argument(
        "--output-format",
        choices=("jsonl", "parquet"),
        default=None,
        help="shard format (default: the input's)",
    )
    names = (
        "ray_address",
        "num_workers",
        "cpus_per_worker",
        "gpus_per_worker",
        "batch_rows",
        "output_format",
    )
    p.set_defaults(ray_option_defaults={name: p.get_default(name) for name in names})


def add_scorer_options(p: argparse.ArgumentParser) -> None:
    """The model and Scorer options of ``score`` and ``serve``: --model, --convention, --threshold,
    --batch-tokens, --max-length, --truncation, --dtype, --device, --layout, --gemm-route, --compile."""
    p.add_argument("--model", required=True, help="PRM checkpoint directory (Hugging Face format)")
    p.add_argument("--convention", default="auto", choices=CONVENTION_NAMES)
    p.add_argument("--threshold", type=probability, default=0.5, help="first_error threshold (default 0.5)")
    p.add_argument(
        "--batch-tokens",
        type=positive_int,
        default=None,
        help="token budget of one packed or padded batch (default: measured, see fastprm tune)",
    )
    p.add_argument("--max-length", type=positive_int, default=None)
    p.add_argument("--truncation", default="error", choices=TRUNCATION_MODES)
    p.add_argument("--dtype", type=dtype_name, default=None, metavar="|".join(DTYPES), help="default auto")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--layout",
        default=None,
        choices=LAYOUTS,
        help="backbone batches: one forward per row, packed varlen or padded (default: measured, see "
        "fastprm tune)",
    )
    p.add_argument(
        "--gemm-route",
        default=None,
        choices=GEMM_ROUTES,
        help="how matmuls run: torch's kernels, oneDNN with packed weights, or bf16 through fp32 GEMMs "
        "(default: measured, see fastprm tune)",
    )
    p.add_argument(
        "--compile",
        action="store_const",
        const=True,
        default=None,
        help="torch.compile the backbone's layers (default: only where fastprm tune --compile found it pays)",
    )


# -- fastprm train ----------------------------------------------------------------------------------------


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a PRM on step-labelled data")
    p.add_argument(
        "--model", required=True, help="checkpoint directory, or a JSON file describing a new model"
    )
    p.add_argument(
        "--data",
        required=True,
        help="training rows: TRL stepwise, ProcessBench, PRM800K or Math-Shepherd (jsonl/json/parquet)",
    )
    p.add_argument("--eval", default=None, help="evaluation rows (same formats)")
    p.add_argument("--output", required=True)
    p.add_argument("--data-format", default="auto", choices=["auto", *FORMAT_COLUMNS])
    p.add_argument(
        "--neutral", default="positive", choices=NEUTRAL_POLICIES, help="PRM800K neutral (0) ratings"
    )
    p.add_argument("--on-bad-row", default="error", choices=BAD_ROW_POLICIES)
    p.add_argument("--epochs", type=positive_float, default=1.0)
    p.add_argument("--max-steps", type=max_steps, default=-1)
    p.add_argument("--lr", type=positive_float, default=1e-5)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument(
        "--batch-tokens",
        type=positive_int,
        default=None,
        help="token budget per batch instead of a fixed batch size",
    )
    p.add_argument(
        "--packed",
        action="store_true",
        help="pack each batch into one varlen sequence (no padding tokens; rows drawn at random, not grouped by length)",
    )
    p.add_argument("--label-mode", default="all", choices=LABEL_MODES)
    p.add_argument("--pos-weight", type=positive_float, default=None)
    p.add_argument("--max-length", type=positive_int, default=None)
    p.add_argument("--eval-steps", type=positive_int, default=100)
    p.add_argument("--save-steps", type=positive_int, default=500)
    p.add_argument("--logging-steps", type=positive_int, default=10)
    p.add_argument(
        "--warmup",
        type=non_negative_float,
        default=0.0,
        help="warmup steps, or a fraction of all steps if < 1",
    )
    p.add_argument("--weight-decay", type=non_negative_float, default=0.0)
    p.add_argument(
        "--lr-scheduler",
        default="linear",
        help="transformers scheduler name (linear, cosine, constant_with_warmup, ...)",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--dtype",
        type=train_dtype_name,
        default="float32",
        metavar="|".join(TRAIN_DTYPES),
        help="default fp32",
    )
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--lora-r", type=non_negative_int, default=0, help="train LoRA adapters of this rank (needs peft)"
    )
    p.add_argument("--lora-alpha", type=positive_int, default=16)
    p.add_argument("--save-format", default="fastprm", choices=["fastprm", "original"])
    p.add_argument("--resume", default=None, help="checkpoint directory to resume from")
    p.set_defaults(func=_lazy(".train_cli", "train"))


# -- fastprm eval / report --------------------------------------------------------------------------------


def _add_eval_outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", help="write the metrics JSON here (input of fastprm report)")
    parser.add_argument("--plots", metavar="DIR", help="write the PNG figures into this directory")


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="metrics of rows scored by fastprm score")
    kinds = ev.add_subparsers(dest="eval_command", required=True)

    pb = kinds.add_parser(
        "processbench", help="first-error F1 (ProcessBench), threshold sweep, step calibration"
    )
    pb.add_argument("--scores", required=True, help="JSONL written by fastprm score from ProcessBench rows")
    pb.add_argument(
        "--threshold",
        type=probability,
        default=0.5,
        help="a step below it (or with no score) is an error (default 0.5)",
    )
    pb.add_argument(
        "--subset", default=None, help="subset of every row (default: the id prefix, gsm8k of gsm8k-12)"
    )
    pb.add_argument(
        "--examples", type=non_negative_int, default=4, help="solutions drawn as step-score bars (default 4)"
    )
    _add_eval_outputs(pb)
    pb.set_defaults(func=_lazy(".eval_cli", "eval_processbench"))

    bon = kinds.add_parser(
        "bon", help="best-of-N accuracy of PRM selection, weighted and plain majority votes"
    )
    bon.add_argument(
        "--scores", required=True, help="JSONL written by fastprm score, several rows per problem"
    )
    bon.add_argument(
        "--group-key", default="problem", help="rows with equal values are one problem's candidates"
    )
    bon.add_argument(
        "--answer-key", default="answer", help="gold answer field (a bare answer or a solution stating one)"
    )
    bon.add_argument(
        "--correct-key", default=None, help="boolean field of recorded correctness, instead of gold"
    )
    bon.add_argument(
        "--aggregates", type=aggregate_list, default=list(AGGREGATES), help="e.g. min,prod (default all)"
    )
    bon.add_argument(
        "--orders",
        type=positive_int,
        default=4,
        help="seeded candidate orders per problem, each in all its cyclic shifts (default 4)",
    )
    bon.add_argument("--seed", type=int, default=0)
    _add_eval_outputs(bon)
    bon.set_defaults(func=_lazy(".eval_cli", "eval_bon"))

    search = kinds.add_parser("search", help="accuracy and generation budget of fastprm search outputs")
    search.add_argument("--best-of-n", default=None, help="a best-of-n fastprm search output (gold 'answer')")
    search.add_argument("--beam", default=None, help="a beam fastprm search output (gold 'answer')")
    search.add_argument(
        "--aggregate",
        choices=AGGREGATES,
        default="min",
        help="what the best-of-n search ranked by (default min)",
    )
    _add_eval_outputs(search)
    search.set_defaults(func=_lazy(".eval_cli", "eval_search"))

    report = sub.add_parser("report", help="HTML report (tables and figures) of fastprm eval outputs")
    report.add_argument(
        "--metrics", nargs="+", required=True, help="metrics JSON files or directories of them"
    )
    report.add_argument("--output", required=True, help="the HTML file to write")
    report.add_argument("--title", default="fastprm evaluation")
    report.set_defaults(func=_lazy(".eval_cli", "report"))


# -- fastprm demo -----------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    """Writes the demo's data and model config, then runs its pipeline of fastprm commands through
    :func:`main` (:func:`fastprm.demo.pipeline`)."""
    from . import demo

    workdir = Path(args.workdir)
    demo.prepare(workdir, args.train_problems, args.test_problems, seed=args.seed, labels=args.labels)
    for title, argv in demo.pipeline(workdir, max_steps=args.max_steps, seed=args.seed, labels=args.labels):
        if title:
            print(title, flush=True)
        code = main(argv)
        if code:
            return code
    print(demo.summary(workdir))
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="offline end-to-end demo: synthetic data, train a PRM from scratch, evaluate, report"
    )
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--max-steps", type=positive_int, default=1500)
    p.add_argument("--train-problems", type=positive_int, default=12000, help="problems to train on")
    p.add_argument(
        "--test-problems", type=positive_int, default=150, help="held-out problems (8 solutions each)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--labels",
        choices=("true", "mc"),
        default="true",
        help="train on the task's true step labels, or on Monte Carlo labels (fastprm label) of the same rows",
    )
    p.set_defaults(func=_demo)


# -- fastprm tune -----------------------------------------------------------------------------------------


def _add_tune(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="measure how a model scores fastest on the machine it runs on; print the table; cache the choice",
    )
    p.add_argument("--model", required=True, help="PRM checkpoint directory")
    p.add_argument("--dtype", type=dtype_name, default=None, metavar="|".join(DTYPES), help="default auto")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--compile", action="store_true", help="also measure torch.compile (takes minutes on a large model)"
    )
    p.add_argument("--json", action="store_true", help="print the calibration record as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_lazy(".tune_cli", "tune"))


# -- fastprm search ---------------------------------------------------------------------------------------


def _add_search(sub) -> None:
    p = sub.add_parser(
        "search", help="best-of-N or step-level beam search with a PRM over a file of problems"
    )
    p.add_argument("--model", required=True, help="PRM checkpoint directory")
    p.add_argument(
        "--generator",
        required=True,
        help="a causal LM directory, or 'synthetic' (the demo task's scripted solver)",
    )
    p.add_argument("--input", required=True, help="JSONL rows with a 'problem' (and optional 'id', 'answer')")
    p.add_argument("--output", required=True, help="JSONL: the chosen solution, every candidate, counters")
    p.add_argument("--method", choices=("best-of-n", "beam"), default="best-of-n")
    p.add_argument("--n", type=positive_int, default=8, help="best-of-n: solutions per problem")
    p.add_argument("--vote", action="store_true", help="best-of-n: PRM-weighted majority vote")
    p.add_argument(
        "--aggregate", choices=AGGREGATES, default=None, help="how step scores rank (default min; beam: last)"
    )
    p.add_argument("--beam-width", type=positive_int, default=4)
    p.add_argument("--expansions", type=positive_int, default=4, help="beam: next steps sampled per beam")
    p.add_argument("--max-steps", type=positive_int, default=10, help="beam: deepest step")
    p.add_argument(
        "--prune-below", type=probability, default=None, help="beam: drop a step scored below this"
    )
    p.add_argument(
        "--stop",
        type=escaped_text,
        default=None,
        help="text between steps, escapes allowed (default: the generator's)",
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=512)
    p.add_argument("--temperature", type=positive_float, default=0.7)
    p.add_argument("--error-rate", type=probability, default=0.3, help="synthetic generator: error rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", type=dtype_name, default=None, metavar="|".join(DTYPES), help="default auto")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_lazy(".search_cli", "search"))


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP scoring server: /v1/score, OpenRLHF's /get_reward, vLLM's /pooling, /health, /metrics",
    )
    add_scorer_options(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default loopback only; 0.0.0.0: every one)"
    )
    p.add_argument(
        "--port", type=non_negative_int, default=8000, help="0: any free port (printed when ready)"
    )
    key = p.add_mutually_exclusive_group()
    key.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (all but /health)")
    key.add_argument("--api-key-file", default=None, help="the API key read from a file (not shown by ps)")
    p.add_argument(
        "--served-model-name", default=None, help="the model name responses carry (default: folder)"
    )
    p.add_argument(
        "--max-batch-tokens", type=positive_int, default=16384, help="tokens gathered into one scoring call"
    )
    p.add_argument(
        "--max-wait-ms", type=non_negative_float, default=10.0, help="longest a request waits for a batch"
    )
    p.add_argument("--max-queue", type=positive_int, default=256, help="queued requests before 503")
    p.add_argument(
        "--model-workers",
        type=positive_int,
        default=1,
        help="copies of the model scoring batches side by side, the cores split among them (the server's own "
        "+ N-1 worker processes; each holds the weights): pays under concurrent load on CPUs",
    )
    p.add_argument("--max-request-bytes", type=positive_int, default=16 * 2**20, help="413 beyond")
    p.add_argument("--max-rows", type=positive_int, default=1024, help="rows per request; 413 beyond")
    p.add_argument(
        "--max-request-tokens", type=positive_int, default=262144, help="tokens per request; 413 beyond"
    )
    p.add_argument(
        "--split-steps",
        type=split_regex,
        default=DEFAULT_SPLIT,
        metavar="REGEX",
        help="/get_reward: splits each response into steps (default: a blank line)",
    )
    p.add_argument(
        "--problem-regex",
        type=group_regex,
        default=None,
        metavar="REGEX",
        help="/get_reward: the problem in a prompt is this regex's first group (default: the last ChatML or "
        "Llama 3 user turn, else the whole prompt)",
    )
    p.add_argument(
        "--aggregate", choices=AGGREGATES, default="min", help="/get_reward: the reward (default min)"
    )
    p.add_argument(
        "--empty-reward",
        type=float,
        default=0.0,
        help="/get_reward: reward of a response with no step scored",
    )
    p.add_argument(
        "--return-step-scores", action="store_true", help="/get_reward: also return each query's step scores"
    )
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    p.set_defaults(func=_lazy(".serve_cli", "serve"))


def hard_label_rule(text: str) -> str:
    """``any``, ``majority`` or a number in (0, 1]."""
    if text in ("any", "majority"):
        return text
    probability(text)
    if float(text) == 0:
        raise argparse.ArgumentTypeError("a threshold must be above 0")
    return text


def _add_label(sub) -> None:
    p = sub.add_parser("label", help="Monte Carlo step labels (Math-Shepherd / OmegaPRM) for training data")
    p.add_argument(
        "--generator",
        required=True,
        help="a causal LM directory, or 'synthetic' (the demo task's scripted solver)",
    )
    p.add_argument(
        "--input",
        required=True,
        help="JSONL rows: {problem, steps, answer} (or 'solution' with --split-steps)",
    )
    p.add_argument("--output", required=True, help="JSONL: TRL stepwise rows with soft and hard labels")
    p.add_argument("--rollouts", type=positive_int, default=8, help="completions per step prefix")
    p.add_argument("--method", choices=("linear", "binary"), default="linear")
    p.add_argument(
        "--hard",
        type=hard_label_rule,
        default="any",
        help="hard label: any, majority, or a threshold in (0, 1]",
    )
    p.add_argument("--labels", choices=("soft", "hard"), default="soft", help="what the 'labels' field holds")
    p.add_argument(
        "--split-steps", nargs="?", type=split_regex, const=DEFAULT_SPLIT, default=None, metavar="REGEX",
        help="split 'solution' into steps (default regex: a blank line)",
    )  # fmt: skip
    p.add_argument("--chunk-rows", type=positive_int, default=64, help="rows labelled and written at a time")
    p.add_argument("--resume", action="store_true", help="continue an interrupted --output")
    p.add_argument("--skip-bad-rows", action="store_true", help="record bad rows instead of stopping")
    p.add_argument("--max-new-tokens", type=positive_int, default=512)
    p.add_argument("--temperature", type=positive_float, default=0.7)
    p.add_argument("--error-rate", type=probability, default=0.3, help="synthetic generator: error rate")
    p.add_argument(
        "--stop", type=escaped_text, default=None, help="text between steps (default: the generator's)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    add_ray_options(p, rows_per_batch=16)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_lazy(".label_cli", "label"))


# -- the parser -------------------------------------------------------------------------------------------


def _lazy(module: str, name: str):
    """A command handler imported when the command runs (so the parser needs neither torch nor numpy)."""

    def handler(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module, __package__), name)(args)

    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastprm", description="Fast process reward models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_score, _add_train, _add_eval, _add_tune, _add_search, _add_serve, _add_label, _add_demo):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
