"""Dynamic batching: requests queue up, a model thread scores the rows of many requests in one call.

One model thread per model copy: the server's own model and, with ``--model-workers``, each worker
process's (:mod:`fastprm.serve.workers`); each thread takes the next batch when its model is free. Why
batches: a scoring call over many rows forms larger GEMMs and shares each problem's prompt among all its
rows (an RL trainer sends a group of completions per prompt, often split over several requests), which a
request-at-a-time server cannot.

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


class ModelLost(Exception):
    """Raised by a scoring function whose model is gone for good (its worker process died): the batch goes
    back to the queue for the other models, and this model's thread ends."""


@dataclass(eq=False)
class Job:
    """One request's rows on their way through the model thread.

    Attributes:
        rows: the request's tokenized rows (whatever the scoring function takes).
        tokens: their token count (what the batch budget counts).
        done: called once from the model thread with the list of per-row results, or the exception that
            scoring this job alone raised.
        cancelled: set by the HTTP side when the client went away; a job not yet started is then dropped.
        delivered: set once ``done`` was called (a batch whose model is lost half-way goes back to the queue
            without its delivered jobs).
    """

    rows: Sequence[Any]
    tokens: int
    done: Callable[[list | BaseException], None]
    cancelled: bool = False
    delivered: bool = False
    queued_at: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """A bounded queue of :class:`Job` and the threads that score them, one per scoring function.

    A free thread takes the oldest job, waits until ``max_wait_s`` after it was queued (or until the queued
    jobs hold ``max_batch_tokens``), then scores the rows of every job it can fit within ``max_batch_tokens``
    (always at least one job) in one call of its scoring function. A job whose rows make that call fail is
    found by scoring each job of the batch on its own, so only the failing request gets the error. A function
    that raises :class:`ModelLost` retires its thread and its batch is scored by the others; when none is
    left, every queued job gets that error.

    Args:
        scorers: one or more functions rows -> one result per row, in order (e.g.
            :meth:`fastprm.scoring.Scorer.score_tokenized`), each a model that can run beside the others.
        max_batch_tokens: token budget of one call.
        max_wait_s: how long the oldest job waits for others.
        max_queue: jobs waiting (not yet taken into a batch) before :meth:`submit` refuses.
        on_batch: called after each batch with (model, jobs, rows, tokens, seconds) for metrics, ``model``
            the index of the scoring function in ``scorers``.
    """

    def __init__(
        self,
        scorers: Sequence[Callable[[list], list]],
        max_batch_tokens: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[int, int, int, int, float], None] | None = None,
    ):
        if not scorers:
            raise ValueError("scorers is empty: the batcher needs at least one scoring function")
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: collections.deque[Job] = collections.deque()
        self._queued_tokens = 0
        self._closing = False
        self._condition = threading.Condition()
        self._live = len(scorers)
        self._threads = [
            threading.Thread(target=self._run, args=(i, score), name=f"fastprm-model-{i}", daemon=True)
            for i, score in enumerate(scorers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting to be batched."""
        return len(self._queue)

    @property
    def live_models(self) -> int:
        """Model threads still scoring (a thread ends when its model is lost, or after :meth:`close`)."""
        return sum(thread.is_alive() for thread in self._threads)

    @property
    def alive(self) -> bool:
        """Whether a model thread runs and takes new work."""
        return self.live_models > 0 and not self._closing

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
        """Stops taking jobs, scores every job already queued, then ends the model threads."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _run(self, model: int, score: Callable[[list], list]) -> None:
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            try:
                self._score(model, score, batch)
            except ModelLost as err:
                logger.error("%s; its batch goes to the other models", err)
                self._retire(batch, err)
                return

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

    def _retire(self, batch: list[Job], err: ModelLost) -> None:
        """Puts ``batch`` back at the head of the queue for the other threads; the last thread to go fails it
        and everything queued, and refuses new jobs."""
        batch = [job for job in batch if not job.delivered]
        with self._condition:
            self._live -= 1
            if self._live > 0:
                for job in reversed(batch):
                    self._queue.appendleft(job)
                    self._queued_tokens += job.tokens
                self._condition.notify_all()
                return
            self._closing = True
            failed = batch + list(self._queue)
            self._queue.clear()
            self._queued_tokens = 0
        for job in failed:
            _deliver(job, err)

    def _score(self, model: int, score: Callable[[list], list], batch: list[Job]) -> None:
        rows = [row for job in batch for row in job.rows]
        start = time.perf_counter()
        try:
            results = score(rows)
        except ModelLost:
            raise
        except Exception as err:
            if len(batch) == 1:
                logger.warning("scoring a request failed: %s", err)
                _deliver(batch[0], err)
                return
            for job in batch:  # find the job that fails: each alone, the others still get their results
                self._score(model, score, [job])
            return
        if self.on_batch is not None:
            self.on_batch(
                model, len(batch), len(rows), sum(job.tokens for job in batch), time.perf_counter() - start
            )
        offset = 0
        for job in batch:
            _deliver(job, results[offset : offset + len(job.rows)])
            offset += len(job.rows)


def _deliver(job: Job, result: list | BaseException) -> None:
    """Hands ``result`` to the job's callback; a callback that fails (its event loop already closed) is
    logged, and the model thread goes on with the other jobs."""
    job.delivered = True
    try:
        job.done(result)
    except Exception:
        logger.exception("could not deliver a result")
