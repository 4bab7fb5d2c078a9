"""Dynamic batching: requests queue up, one model thread scores the rows of many requests in one call.

Why one thread: the model is one set of weights on one machine; two threads scoring at once would only split
the same cores. Why batches: a scoring call over many rows forms larger GEMMs and shares each problem's
prompt among all its rows (an RL trainer sends a group of completions per prompt, often split over several
requests), which a request-at-a-time server cannot.

The HTTP side never waits on the model: :meth:`DynamicBatcher.submit` only appends to the queue (or refuses
at once when it is full or the server is draining) and the job's ``done`` callback delivers the result.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("fastprm.serve")


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already."""


class Draining(Exception):
    """The server is shutting down and takes no new work."""


@dataclass(eq=False)
class Job:
    """One request's rows on their way through the model thread.

    Attributes:
        rows: the request's tokenized rows (whatever the scoring function takes).
        tokens: their token count (what the batch budget counts).
        done: called once from the model thread with the list of per-row results, or the exception that
            scoring this job alone raised.
        cancelled: set by the HTTP side when the client went away; a job not yet started is then dropped.
    """

    rows: Sequence[Any]
    tokens: int
    done: Callable[[list | BaseException], None]
    cancelled: bool = False
    queued_at: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """A bounded queue of :class:`Job` and the thread that scores them.

    The thread takes the oldest job, waits until ``max_wait_s`` after it was queued (or until the queued
    jobs hold ``max_batch_tokens``), then scores the rows of every job it can fit within ``max_batch_tokens``
    (always at least one job) in one call of ``score``. A job whose rows make that call fail is found by
    scoring each job of the batch on its own, so only the failing request gets the error.

    Args:
        score: rows -> one result per row, in order (e.g. :meth:`fastprm.scoring.Scorer.score_tokenized`).
        max_batch_tokens: token budget of one call.
        max_wait_s: how long the oldest job waits for others.
        max_queue: jobs waiting (not yet taken into a batch) before :meth:`submit` refuses.
        on_batch: called after each batch with (jobs, rows, tokens, seconds) for metrics.
    """

    def __init__(
        self,
        score: Callable[[list], list],
        max_batch_tokens: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[int, int, int, float], None] | None = None,
    ):
        self.score = score
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: collections.deque[Job] = collections.deque()
        self._queued_tokens = 0
        self._closing = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="fastprm-model", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting to be batched."""
        return len(self._queue)

    @property
    def alive(self) -> bool:
        """Whether the model thread runs and takes new work."""
        return self._thread.is_alive() and not self._closing

    def submit(self, job: Job) -> None:
        """Queues ``job``; raises :class:`QueueFull` or :class:`Draining` instead of waiting."""
        with self._condition:
            if self._closing:
                raise Draining()
            if len(self._queue) >= self.max_queue:
                raise QueueFull()
            self._queue.append(job)
            self._queued_tokens += job.tokens
            self._condition.notify()

    def close(self, timeout: float | None = None) -> None:
        """Stops taking jobs, scores every job already queued, then ends the model thread."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            if batch:
                self._score(batch)

    def _next_batch(self) -> list[Job] | None:
        """The jobs of the next call ([] when every job taken was cancelled), None once closed and empty."""
        with self._condition:
            while not self._queue:
                if self._closing:
                    return None
                self._condition.wait()
            deadline = self._queue[0].queued_at + self.max_wait_s
            while not self._closing and self._queued_tokens < self.max_batch_tokens:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
            batch, tokens = [], 0
            while self._queue and (not batch or tokens + self._queue[0].tokens <= self.max_batch_tokens):
                job = self._queue.popleft()
                self._queued_tokens -= job.tokens
                if not job.cancelled:  # its client has gone: it costs nothing more
                    batch.append(job)
                    tokens += job.tokens
            return batch

    def _score(self, batch: list[Job]) -> None:
        rows = [row for job in batch for row in job.rows]
        start = time.perf_counter()
        try:
            results = self.score(rows)
        except Exception as err:
            if len(batch) == 1:
                logger.warning("scoring a request failed: %s", err)
                _deliver(batch[0], err)
                return
            for job in batch:  # find the job that fails: each alone, the others still get their results
                self._score([job])
            return
        if self.on_batch is not None:
            self.on_batch(
                len(batch), len(rows), sum(job.tokens for job in batch), time.perf_counter() - start
            )
        offset = 0
        for job in batch:
            _deliver(job, results[offset : offset + len(job.rows)])
            offset += len(job.rows)


def _deliver(job: Job, result: list | BaseException) -> None:
    """Hands ``result`` to the job's callback; a callback that fails (its event loop already closed) is
    logged, and the model thread goes on with the other jobs."""
    try:
        job.done(result)
    except Exception:
        logger.exception("could not deliver a result")
