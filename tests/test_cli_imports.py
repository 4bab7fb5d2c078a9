"""``import fastprm`` and ``fastprm --help`` stay light (no torch, transformers or numpy), and the demo does
not import the CLI (issue 10: the cli <-> demo cycle)."""

from __future__ import annotations

import argparse
import subprocess
import sys

HEAVY = ("torch", "transformers", "numpy")


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_and_parser_load_no_heavy_module():
    code = f"""
import sys
import fastprm
import fastprm.cli
from fastprm.cli import build_parser
parser = build_parser()
for argv in (["score", "--help"], ["train", "--help"], ["eval", "bon", "--help"], ["demo", "--help"]):
    try:
        parser.parse_args(argv)
    except SystemExit:
        pass
heavy = [m for m in {HEAVY!r} if m in sys.modules]
assert not heavy, heavy
"""
    proc = python(code)
    assert proc.returncode == 0, proc.stderr


def test_fastprm_help_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "fastprm", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "score" in proc.stdout and "train" in proc.stdout, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "fastprm", "score", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "--truncation {error,left-truncate-prompt,drop-steps}" in proc.stdout


def test_cli_choices_are_the_library_constants():
    from fastprm.batching import LAYOUTS
    from fastprm.cli import build_parser
    from fastprm.data.formats import NEUTRAL_POLICIES
    from fastprm.metrics import AGGREGATES
    from fastprm.models.conventions import CONVENTIONS
    from fastprm.tokenization import TRUNCATION_MODES
    from fastprm.training.label_modes import LABEL_MODES

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]

    def choices(command: str) -> dict:
        return {a.dest: tuple(a.choices) for a in commands.choices[command]._actions if a.choices is not None}

    score, train = choices("score"), choices("train")
    assert score["truncation"] == TRUNCATION_MODES and score["layout"] == LAYOUTS
    assert score["convention"] == ("auto", "fastprm", *CONVENTIONS)
    assert train["label_mode"] == LABEL_MODES and train["neutral"] == NEUTRAL_POLICIES
    bon = ["eval", "bon", "--scores", "s.jsonl", "--aggregates"]
    assert parser.parse_args([*bon, ",".join(AGGREGATES)]).aggregates == list(AGGREGATES)


def test_demo_does_not_import_the_cli():
    proc = python("import sys, fastprm.demo; assert 'fastprm.cli' not in sys.modules")
    assert proc.returncode == 0, proc.stderr
