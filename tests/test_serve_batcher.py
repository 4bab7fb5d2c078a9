"""The server's dynamic batcher on its own: batches within the token budget, waits at most max_wait, refuses
when full or draining, drops cancelled jobs, isolates a failing job, drains on close, spreads batches over several models and
moves a lost model's batch to the others."""

import threading
import time

import pytest

pytest.importorskip("fastapi")

from fastprm.serve.batcher import Draining, DynamicBatcher, Job, ModelLost, QueueFull


class Recorder:
    """A scoring function that returns each row doubled and records the calls; rows equal to ``poison``
    make the call raise; ``gate`` (an Event) holds every call until set."""

    def __init__(self, poison=None, gate=None):
        self.calls = []
        self.poison = poison
        self.gate = gate

    def __call__(self, rows):
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append(list(rows))
        if self.poison is not None and self.poison in rows:
            raise ValueError("poisoned row")
        return [2 * r for r in rows]


def job(rows, results, name, tokens=None):
    done = threading.Event()

    def deliver(value):
        results[name] = value
        done.set()

    j = Job(rows, len(rows) if tokens is None else tokens, deliver)
    j.finished = done
    return j


def test_jobs_queued_together_share_one_call_and_get_their_own_rows():
    score, results = Recorder(gate=threading.Event()), {}
    batcher = DynamicBatcher([score], max_batch_tokens=100, max_wait_s=0.2, max_queue=10)
    jobs = [job([10 * i + k for k in range(i + 1)], results, i) for i in range(4)]
    for j in jobs:
        batcher.submit(j)
    score.gate.set()
    for j in jobs:
        assert j.finished.wait(10)
    assert len(score.calls) == 1 and len(score.calls[0]) == 10
    for i in range(4):
        assert results[i] == [2 * (10 * i + k) for k in range(i + 1)]
    batcher.close()


def test_token_budget_splits_batches_and_an_oversized_job_still_runs():
    score, results = Recorder(), {}
    batcher = DynamicBatcher([score], max_batch_tokens=5, max_wait_s=0.05, max_queue=10)
    jobs = [job([1, 2, 3], results, "a"), job([4, 5, 6], results, "b"), job(list(range(9)), results, "big")]
    for j in jobs:
        batcher.submit(j)
    for j in jobs:
        assert j.finished.wait(10)
    assert [len(c) for c in score.calls] == [3, 3, 9]
    assert results["big"] == [2 * r for r in range(9)]
    batcher.close()


def test_a_lone_job_waits_at_most_max_wait():
    score, results = Recorder(), {}
    batcher = DynamicBatcher([score], max_batch_tokens=1000, max_wait_s=0.3, max_queue=10)
    start = time.monotonic()
    j = job([1], results, "a")
    batcher.submit(j)
    assert j.finished.wait(10)
    assert 0.25 <= time.monotonic() - start < 5
    batcher.close()


def test_a_full_budget_does_not_wait():
    score, results = Recorder(), {}
    batcher = DynamicBatcher([score], max_batch_tokens=3, max_wait_s=30, max_queue=10)
    j = job([1, 2, 3], results, "a")
    batcher.submit(j)
    assert j.finished.wait(10)  # long before max_wait
    batcher.close()


def test_failing_job_fails_alone():
    score, results = Recorder(poison=666, gate=threading.Event()), {}
    batcher = DynamicBatcher([score], max_batch_tokens=100, max_wait_s=0.2, max_queue=10)
    jobs = [job([1, 2], results, "a"), job([3, 666], results, "bad"), job([5], results, "c")]
    for j in jobs:
        batcher.submit(j)
    score.gate.set()
    for j in jobs:
        assert j.finished.wait(10)
    assert results["a"] == [2, 4] and results["c"] == [10]
    assert isinstance(results["bad"], ValueError)
    batcher.close()


def test_full_queue_refuses_and_cancelled_jobs_cost_nothing():
    gate = threading.Event()
    score, results = Recorder(gate=gate), {}
    batcher = DynamicBatcher([score], max_batch_tokens=1, max_wait_s=0, max_queue=2)
    first = job([1], results, "first")
    batcher.submit(first)
    while batcher.depth:  # the model thread has taken it and waits at the gate
        time.sleep(0.01)
    queued = [job([2], results, "gone"), job([3], results, "kept")]
    for j in queued:
        batcher.submit(j)
    with pytest.raises(QueueFull):
        batcher.submit(job([4], results, "refused"))
    queued[0].cancelled = True
    gate.set()
    assert first.finished.wait(10) and queued[1].finished.wait(10)
    assert "gone" not in results
    assert [c for call in score.calls for c in call] == [1, 3]
    batcher.close()


def test_close_scores_what_is_queued_then_refuses():
    score, results = Recorder(), {}
    batcher = DynamicBatcher([score], max_batch_tokens=100, max_wait_s=30, max_queue=10)
    jobs = [job([i], results, i) for i in range(3)]
    for j in jobs:
        batcher.submit(j)
    batcher.close(timeout=10)  # does not wait out max_wait
    assert results == {0: [0], 1: [2], 2: [4]}
    assert not batcher.alive
    with pytest.raises(Draining):
        batcher.submit(job([9], results, 9))


class Lost:
    """A model that is gone: every call raises ModelLost (after ``gate``, when given)."""

    def __init__(self, gate=None):
        self.calls = 0
        self.gate = gate

    def __call__(self, rows):
        if self.gate is not None:
            self.gate.wait(10)
        self.calls += 1
        raise ModelLost("model worker 1 exited")


def test_two_models_score_batches_side_by_side():
    both_busy, release = threading.Barrier(2, timeout=10), threading.Event()

    class Held(Recorder):
        def __call__(self, rows):
            both_busy.wait()  # fails (BrokenBarrierError) unless the two models run at once
            release.wait(10)
            return super().__call__(rows)

    first, second, results = Held(), Held(), {}
    batcher = DynamicBatcher([first, second], max_batch_tokens=1, max_wait_s=0, max_queue=10)
    jobs = [job([i], results, i) for i in range(4)]
    for j in jobs:
        batcher.submit(j)
    release.set()
    for j in jobs:
        assert j.finished.wait(10)
    assert results == {i: [2 * i] for i in range(4)}
    assert first.calls and second.calls
    assert sorted(c for call in first.calls + second.calls for c in call) == [0, 1, 2, 3]
    assert batcher.live_models == 2
    batcher.close()


def test_a_lost_models_batch_goes_to_the_others_and_the_last_loss_fails_what_is_queued():
    gate = threading.Event()
    lost, kept, results = Lost(gate=gate), Recorder(gate=gate), {}
    batcher = DynamicBatcher([lost, kept], max_batch_tokens=1, max_wait_s=0, max_queue=10)
    jobs = [job([i], results, i) for i in range(3)]
    for j in jobs:
        batcher.submit(j)
    while batcher.depth > 1:  # each model has taken a job and waits at the gate
        time.sleep(0.01)
    gate.set()
    for j in jobs:
        assert j.finished.wait(10)
    assert lost.calls == 1  # it took a batch, which the other model scored
    assert results == {i: [2 * i] for i in range(3)}  # every job once, none lost with the lost model
    deadline = time.monotonic() + 10
    while batcher.live_models != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher.live_models == 1 and batcher.alive
    batcher.close()

    only = Lost()
    batcher = DynamicBatcher([only], max_batch_tokens=1, max_wait_s=0, max_queue=10)
    jobs = [job([i], results, f"x{i}") for i in range(3)]
    for j in jobs:
        batcher.submit(j)
    for j in jobs:
        assert j.finished.wait(10)
    assert all(isinstance(results[f"x{i}"], ModelLost) for i in range(3))
    assert not batcher.alive
    with pytest.raises(Draining):
        batcher.submit(job([9], results, 9))
