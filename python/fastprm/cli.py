"""``fastprm`` command line: ``fastprm score ...``."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

from .demo import add_demo_command
from .eval_cli import add_eval_commands
from .train_cli import add_train_command

DEFAULT_SPLIT = r"\n\n"


def _score(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from .io import BadRow, read_rows
    from .models import PRM
    from .scoring import Scorer

    dtype = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    prm = PRM.from_pretrained(args.model, convention=args.convention, dtype=dtype, device=args.device)
    scorer = Scorer(
        prm,
        batch_tokens=args.batch_tokens,
        max_length=args.max_length,
        truncation=args.truncation,
        threshold=args.threshold,
        layout=args.layout,
        compile=args.compile,
    )
    rows = read_rows(args.input, split_steps=args.split_steps)
    n_rows = n_tokens = n_bad = 0
    start = time.perf_counter()
    with open(args.output, "w", encoding="utf-8") as out, tqdm(unit=" rows", disable=args.quiet) as bar:
        while chunk := list(itertools.islice(rows, args.chunk_rows)):
            chunk = _tokenize_chunk(scorer, chunk, args.input)
            bad = [r for r in chunk if isinstance(r, BadRow)]
            if bad and not args.skip_bad_rows:
                raise SystemExit(f"fastprm score: {bad[0]}")
            good = [r for r in chunk if not isinstance(r, BadRow)]
            tokenized = [t for _, t in good]
            scores = iter(scorer.score_tokenized(tokenized))
            for r in chunk:
                if isinstance(r, BadRow):
                    n_bad += 1
                    out.write(json.dumps({"error": str(r)}, ensure_ascii=False) + "\n")
                    continue
                out.write(
                    json.dumps({**r[0].record, "scores": next(scores).to_dict()}, ensure_ascii=False) + "\n"
                )
            n_rows += len(good)
            n_tokens += sum(len(t.input_ids) for t in tokenized)
            bar.update(len(chunk))
            bar.set_postfix(tokens_per_s=f"{n_tokens / (time.perf_counter() - start):.0f}")
    if not args.quiet:
        print(
            f"scored {n_rows} rows ({n_tokens} tokens) -> {args.output}"
            + (f"; {n_bad} bad rows recorded" if n_bad else ""),
            file=sys.stderr,
        )
    return 0


def _tokenize_chunk(scorer, chunk: list, path: str) -> list:
    """Each row as (row, tokenized), or a BadRow naming its line (e.g. too long for max_length).

    Text rows are tokenized in one batch; only when that fails are they retried one by one to find the bad
    ones. Pre-tokenized rows go through find mode (:meth:`~fastprm.tokenization.StepTokenizer.from_ids`).
    """
    from .io import BadRow

    def one(r) -> tuple | BadRow:
        try:
            if r.input_ids is not None:
                return r, scorer.tokenizer.from_ids(r.input_ids, r.line)
            return r, scorer.tokenizer([r.problem], [r.steps], first_row=r.line)[0]
        except ValueError as err:
            return BadRow(f"{path}:{r.line}: {err}")

    text = [r for r in chunk if not isinstance(r, BadRow) and r.input_ids is None]
    try:
        batched = iter(scorer.tokenizer([r.problem for r in text], [r.steps for r in text]))
    except ValueError:
        batched = None
    out = []
    for r in chunk:
        if isinstance(r, BadRow):
            out.append(r)
        elif r.input_ids is None and batched is not None:
            out.append((r, next(batched)))
        else:
            out.append(one(r))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastprm", description="Fast process reward models.")
    sub = parser.add_subparsers(dest="command", required=True)

    score = sub.add_parser("score", help="score every step of the solutions in a JSONL file")
    score.add_argument("--model", required=True, help="PRM checkpoint directory (Hugging Face format)")
    score.add_argument(
        "--input",
        required=True,
        help="JSONL rows: {problem, steps}, ProcessBench, TRL {prompt, completions}, {problem, solution} with "
        "--split-steps, or pre-tokenized {input_ids} whose separator ids mark the steps (find mode)",
    )
    score.add_argument("--output", required=True, help="JSONL: each input row plus its 'scores'")
    score.add_argument(
        "--convention",
        default="auto",
        help="auto, qwen2.5-math-prm, math-shepherd, token-classification, value-head, fastprm",
    )
    score.add_argument("--threshold", type=float, default=0.5, help="first_error threshold (default 0.5)")
    score.add_argument(
        "--split-steps",
        nargs="?",
        const=DEFAULT_SPLIT,
        default=None,
        metavar="REGEX",
        help="split 'solution' into steps (default regex: a blank line)",
    )
    score.add_argument(
        "--skip-bad-rows", action="store_true", help="record bad rows in the output instead of stopping"
    )
    score.add_argument("--batch-tokens", type=int, default=16384, help="token budget of one backbone batch")
    score.add_argument("--chunk-rows", type=int, default=1024, help="rows read, scored and written at a time")
    score.add_argument("--max-length", type=int, default=None)
    score.add_argument(
        "--truncation", default="error", choices=["error", "left-truncate-prompt", "drop-steps"]
    )
    score.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32", "fp16"])
    score.add_argument("--device", default=None)
    score.add_argument(
        "--layout",
        default=None,
        choices=["rows", "packed", "padded"],
        help="backbone batches: one forward per row (CPU default), packed varlen (default with "
        "flash-attention 2) or padded",
    )
    score.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the backbone's layers (no faster than eager on AVX2 CPUs: GEMM-bound)",
    )
    score.add_argument("--quiet", action="store_true")
    score.set_defaults(func=_score)
    add_train_command(sub)
    add_eval_commands(sub)
    add_demo_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
