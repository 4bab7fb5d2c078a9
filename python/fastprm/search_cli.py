"""``fastprm search``: best-of-N or step-level beam search with a PRM over a JSONL file of problems."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from .cli import EXIT_INTERRUPTED, load_prm
from .io import AtomicOutput, check_input_file, check_output_file, json_text, not_utf8, one_line

BEST_OF_N_CHUNK = 8  # problems per best-of-N call: their candidates are scored together


def read_problems(path: str) -> list[dict]:
    """The rows of a problems file: each a JSON object with a ``problem`` string (``id`` and ``answer``
    optional). A bad line ends the command with its line number."""
    rows = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{path}:{line_no}: not a JSON line ({one_line(err)})") from None
            if not isinstance(record, dict) or not isinstance(record.get("problem"), str):
                raise ValueError(f'{path}:{line_no}: a row needs a "problem" string')
            if bad := not_utf8(record, f"{path}:{line_no}"):
                raise ValueError(bad)
            rows.append(record)
    return rows


def load_generator(args: argparse.Namespace, command: str = "search"):
    """``--generator`` with its options (:func:`fastprm.search.load.load_generator`); one that cannot be
    loaded ends ``fastprm <command>`` with one line."""
    from .search.load import load_generator as load
    from .search.load import options_of

    try:
        return load(**options_of(args))
    except (ValueError, OSError) as err:
        raise SystemExit(
            f"fastprm {command}: cannot load --generator {args.generator}: {one_line(err)}"
        ) from None


def _record(row: dict, method: str, result) -> dict:
    from .metrics.answers import answers_equal

    best = result.best
    out = {key: row[key] for key in ("id", "problem", "answer") if key in row}
    out.update(
        method=method,
        prediction=best.answer if best else None,
        steps=best.steps if best else [],
        step_scores=best.step_scores if best else [],
        score=best.score if best else None,
        candidates=[asdict(c) for c in result.candidates],
        counters=result.counters,
    )
    if "answer" in row:
        out["correct"] = bool(best and answers_equal(best.answer, str(row["answer"])))
    return out


def search(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .search import beam_search, best_of_n

    try:
        check_input_file(args.input, "--input")
        check_output_file(args.output, "--output", [("--input", args.input)])
        rows = read_problems(args.input)
    except ValueError as err:
        raise SystemExit(f"fastprm search: {err}") from None
    prm = load_prm(args, "search")
    generator = load_generator(args)
    stop = args.stop or generator.stop
    output = AtomicOutput(args.output)
    correct = done = 0
    try:
        with output as out, tqdm(total=len(rows), unit=" problems", disable=args.quiet) as bar:
            step = BEST_OF_N_CHUNK if args.method == "best-of-n" else 1
            for start in range(0, len(rows), step):
                chunk = rows[start : start + step]
                if args.method == "best-of-n":
                    results = best_of_n(
                        prm, generator, [r["problem"] for r in chunk], args.n, aggregate=args.aggregate or "min",
                        vote=args.vote,
                    )  # fmt: skip
                else:
                    results = [
                        beam_search(
                            prm, generator, chunk[0]["problem"], beam_width=args.beam_width,
                            expansions=args.expansions, max_steps=args.max_steps,
                            aggregate=args.aggregate or "last", prune_below=args.prune_below, stop=stop,
                            max_new_tokens=args.max_new_tokens,
                        )
                    ]  # fmt: skip
                for row, result in zip(chunk, results):
                    record = _record(row, args.method, result)
                    correct += record.get("correct", False)
                    out.write(json_text(record) + "\n")
                done += len(chunk)
                bar.update(len(chunk))
    except KeyboardInterrupt:
        print(f"fastprm search: interrupted; {output.failure_note()}", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except ValueError as err:
        raise SystemExit(f"fastprm search: {one_line(err)}; {output.failure_note()}") from None
    if not args.quiet:
        with_answers = sum("answer" in r for r in rows)
        accuracy = f", {correct}/{with_answers} correct" if with_answers else ""
        print(f"fastprm search: {done} problems{accuracy}; wrote {args.output}", file=sys.stderr)
    return 0
