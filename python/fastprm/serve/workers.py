"""Model worker processes: more copies of the server's model, each scoring its own batches on its share of the
cores (``fastprm serve --model-workers N``).

Why processes on a CPU: one model on every core keeps its threads in lock-step, so whatever else runs (the
HTTP loop, tokenizing, the clients on the same machine) stalls all of them at each synchronisation; and a
batch of a few thousand tokens already fills the GEMMs, so a larger batch buys little. Copies with a core or
two each run side by side, a stall slows only one of them, and each has its own interpreter (no shared GIL).
Each copy holds its own weights: N times the model's memory.

A worker gets tokenized rows over a pipe and sends back per-row scores; it never sees HTTP or text, and it
ignores Ctrl-C (the server drains, then closes its workers).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import signal
from typing import TYPE_CHECKING

from ..io import one_line
from .batcher import ModelLost

if TYPE_CHECKING:
    from ..scoring import Scorer, SolutionScores
    from ..tokenization import TokenizedSolution


def warm_up(scorer: Scorer) -> None:
    """Pays a scorer's first-call costs (kernel selection, allocator, calibration) before it serves."""
    scorer.score(["What is 1 + 1?"], [["1 + 1 = 2.", "The answer is 2."]])


class ModelWorker:
    """A process holding its own copy of the model, loaded from the ``fastprm serve`` options.

    Blocks in the constructor until the model is loaded and warmed up.

    Args:
        args: the parsed ``fastprm serve`` options (the model and Scorer options are read).
        threads: torch threads of the worker.
        index: its number, in names and errors.

    Raises:
        RuntimeError: the worker could not load the model (the reason is in the message).
    """

    def __init__(self, args: argparse.Namespace, threads: int, index: int):
        self.index = index
        context = multiprocessing.get_context("spawn")  # a fork would copy the server's threads and locks
        self._connection, child = context.Pipe()
        # the options without their handler (a closure: it does not pickle)
        options = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "func"})
        self.process = context.Process(
            target=_work, args=(options, threads, child), name=f"fastprm-model-{index}", daemon=True
        )
        self.process.start()
        child.close()
        kind, value = self._receive()
        if kind != "ready":
            self.close()
            raise RuntimeError(f"model worker {index} could not start: {value}")
        self.plan: str = value

    def score_tokenized(self, rows: list[TokenizedSolution]) -> list[SolutionScores]:
        """Per-row scores of ``rows`` (as :meth:`fastprm.scoring.Scorer.score_tokenized`); raises what scoring
        raised in the worker, or :class:`~fastprm.serve.batcher.ModelLost` when the worker is gone."""
        try:
            self._connection.send(rows)
        except OSError:
            raise self._lost() from None
        kind, value = self._receive()
        if kind == "error":
            raise value
        return value

    def close(self, timeout: float = 30) -> None:
        """Ends the worker (after the batch it is scoring, if any)."""
        with contextlib.suppress(OSError):  # already gone
            self._connection.send(None)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._connection.close()

    def _receive(self) -> tuple[str, object]:
        try:
            return self._connection.recv()
        except (EOFError, OSError):
            raise self._lost() from None

    def _lost(self) -> ModelLost:
        self.process.join(5)
        return ModelLost(
            f"model worker {self.index} (pid {self.process.pid}) exited with code {self.process.exitcode}"
        )


def _work(args: argparse.Namespace, threads: int, connection) -> None:
    """The worker process: load, say ready, then score each batch received until ``None`` or the server's end
    of the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from ..cli import load_scorer

    torch.set_num_threads(threads)
    try:
        scorer = load_scorer(args, "serve")
        warm_up(scorer)
    except BaseException as err:  # SystemExit from a bad option too: reported, not raised
        connection.send(("error", one_line(err)))
        return
    connection.send(("ready", scorer.plan.describe()))
    while True:
        try:
            rows = connection.recv()
        except EOFError:  # the server died without closing us
            return
        if rows is None:
            return
        try:
            connection.send(("scores", scorer.score_tokenized(rows)))
        except Exception as err:  # a batch that fails fails its requests, not the worker
            connection.send(("error", RuntimeError(one_line(err))))
