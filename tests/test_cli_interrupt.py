"""Ctrl-C in the middle of ``fastprm score`` (a real process sent SIGINT): no output under the final name, the
rows scored so far kept in the partial file the message names (issue 10, defect 2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_cli import score_argv


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_mid_run_leaves_no_output(qwen_prm_dir, tmp_path):
    rows = [
        {"id": i, "problem": f"{i} + 1?", "steps": [f"{i} + 1 = {i + 1}.", "Done."]} for i in range(20000)
    ]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = score_argv(qwen_prm_dir, src, dst, "--chunk-rows", "4", "--dtype", "fp32")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastprm", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # Ctrl-C's default action, whatever this suite inherited: a shell without job control starts
        # background jobs with SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 180
        while not any(p.stat().st_size for p in tmp_path.glob("out.jsonl.*.partial")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no row scored in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    (partial,) = tmp_path.glob("out.jsonl.*.partial")
    assert (
        err.strip()
        == f"fastprm score: interrupted; {dst} was not written; what was written before is in {partial}"
    )
    assert not dst.exists()
    written = [json.loads(line) for line in partial.read_text().splitlines()]
    assert 0 < len(written) < len(rows) and len(written) % 4 == 0  # whole chunks
    assert [r["id"] for r in written] == list(range(len(written)))


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
