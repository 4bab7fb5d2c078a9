"""Incremental step sessions (fastprm.sessions) and problem-shared packed scoring, against batch scoring."""

from __future__ import annotations

import gc
import random
import weakref

import pytest
import torch

import checkpoints as ck
from fastprm.batching import prompt_group_batches
from fastprm.models import PRM

WRITERS = {
    "qwen2.5-math-prm": ck.write_qwen25_math_prm,
    "math-shepherd": ck.write_math_shepherd,
    "token-classification": ck.write_token_classification,
    "value-head": ck.write_value_head,
}
PROBLEM = "Tom has 3 apples and buys 4 more. How many apples? <extra_0> <|im_end|>"
STEPS = ["Tom starts with 3 apples.", "7", "", "He buys 4: 3 + 4 = 7.\n\nSo 7.", "The answer is \\boxed{7}."]


@pytest.fixture(scope="module", params=sorted(WRITERS))
def prm(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    WRITERS[request.param](path)
    return PRM.from_pretrained(path, dtype=torch.float32)


def _batch(prm, problems, solutions, **options):
    return prm.score(problems, solutions, layout="rows", share_prefix=False, **options)


def test_session_equals_batch_scoring(prm):
    session = prm.session(PROBLEM)
    scores = [session.add_step(step) for step in STEPS]
    (want,) = _batch(prm, [PROBLEM], [STEPS])
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(want.step_scores), atol=1e-5, rtol=0)
    assert session.scores == scores
    for aggregate in ("min", "prod", "mean", "last"):
        assert getattr(session, aggregate) == pytest.approx(getattr(want, aggregate), abs=1e-5)
    assert session.first_error == want.first_error
    assert session.cached_tokens == len(session.input_ids)
    c = prm.backbone.config
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    assert session.cached_bytes == session.cached_tokens * per_token


def test_forks_and_batched_steps(prm):
    root = prm.session(PROBLEM)
    root.add_step(STEPS[0])
    forks = [root.fork() for _ in range(3)]
    texts = ["3 + 4 = 7.", "3 + 4 = 8.", "x"]
    got = prm.add_steps(forks, texts)
    more = prm.add_steps(forks[:2], ["The answer is 7.", "The answer is 8."])
    del forks[2]
    gc.collect()
    last = forks[0].add_step("Done.")
    want = _batch(
        prm,
        [PROBLEM] * 3,
        [
            [STEPS[0], texts[0], "The answer is 7.", "Done."],
            [STEPS[0], texts[1], "The answer is 8."],
            [STEPS[0], "x"],
        ],
    )
    torch.testing.assert_close(
        torch.tensor(got), torch.tensor([w.step_scores[1] for w in want]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        torch.tensor(more), torch.tensor([w.step_scores[2] for w in want[:2]]), atol=1e-5, rtol=0
    )
    assert last == pytest.approx(want[0].step_scores[3], abs=1e-5)
    assert len(root.scores) == 1 and root.cached_tokens < forks[0].cached_tokens  # the root did not change


def test_a_fork_shares_and_dropping_frees(prm):
    root = prm.session(PROBLEM)
    root.add_step(STEPS[0])
    fork = root.fork()
    assert fork.chunks[0][1][0][0] is root.chunks[0][1][0][0]  # the same tensors, not copies
    fork.add_step(STEPS[1])
    probe = weakref.ref(fork.chunks[-1][1][0][0])
    del fork
    gc.collect()
    assert probe() is None


def test_a_session_longer_than_the_model_raises(prm):
    session = prm.session("short problem", max_length=40)
    with pytest.raises(ValueError, match="maximum length of 40 tokens"):
        for _ in range(40):
            session.add_step("one more step of text")


def test_bad_calls(prm):
    a, b = prm.session(PROBLEM), prm.session(PROBLEM)
    with pytest.raises(ValueError, match="2 sessions but 1 texts"):
        prm.add_steps([a, b], ["x"])
    with pytest.raises(ValueError, match="not a string"):
        prm.add_steps([a], "x")
    with pytest.raises(ValueError, match="appears twice"):
        prm.add_steps([a, a], ["x", "y"])
    with pytest.raises(ValueError, match=r"texts\[1\]: the step must be a string"):
        prm.add_steps([a, b], ["x", 3])
    assert prm.add_steps([], []) == []
    assert a.scores == [] and a.first_error is None


def _rows(seed=0, n=24):
    rng = random.Random(seed)
    problems = [f"Problem {k}: add {k} and {k + 1}." + " more words" * k for k in range(4)]
    rows = []
    for i in range(n):
        p = rng.choice(problems)
        rows.append((p, [f"step {j} of {i}" + " x" * rng.randint(0, 9) for j in range(rng.randint(1, 4))]))
    return rows


@pytest.mark.parametrize("batch_tokens", [64, 400, 100_000])
def test_problem_shared_packed_scoring_equals_ungrouped(prm, batch_tokens):
    rows = _rows()
    problems, solutions = [p for p, _ in rows], [s for _, s in rows]
    want = prm.score(problems, solutions, layout="packed", share_prefix=False, batch_tokens=4096)
    got = prm.score(problems, solutions, layout="packed", share_prefix=True, batch_tokens=batch_tokens)
    order = list(range(len(rows)))
    random.Random(1).shuffle(order)
    shuffled = prm.score(
        [problems[i] for i in order],
        [solutions[i] for i in order],
        layout="packed",
        batch_tokens=batch_tokens,
    )
    for w, g in zip(want, got):
        torch.testing.assert_close(
            torch.tensor(g.step_scores), torch.tensor(w.step_scores), atol=1e-5, rtol=0
        )
    for i, s in zip(order, shuffled):
        torch.testing.assert_close(
            torch.tensor(s.step_scores), torch.tensor(want[i].step_scores), atol=1e-5, rtol=0
        )


def test_problem_shared_scoring_keeps_truncation_marks(prm):
    long_steps = ["word " * 30] * 6
    got = prm.score(
        [PROBLEM] * 2, [long_steps, ["ok"]], layout="packed", truncation="drop-steps", max_length=100
    )
    want = prm.score(
        [PROBLEM] * 2, [long_steps, ["ok"]], layout="rows", truncation="drop-steps", max_length=100
    )
    assert [g.steps_dropped for g in got] == [w.steps_dropped for w in want]
    torch.testing.assert_close(
        torch.tensor(got[1].step_scores), torch.tensor(want[1].step_scores), atol=1e-5, rtol=0
    )


def test_prompt_group_batches():
    prompts = [(1, 2), (3,), (1, 2), (), (3,), (1, 2)]
    lengths = [5, 4, 6, 3, 2, 4]
    entries = prompt_group_batches(prompts, lengths, batch_tokens=10)
    # (1, 2): 2 + 3 + 4 + 2 = 11 tokens does not fit: an entry of its own, rows in sub-batches of <= 10 own tokens.
    assert entries == [([(1, 2)], [[0, 2, 5]]), ([(3,), ()], [[1, 4, 3]])]
    assert prompt_group_batches(prompts, lengths, batch_tokens=3)[0] == ([(1, 2)], [[0], [2], [5]])
    flat = sorted(i for _, subs in prompt_group_batches(prompts, lengths, 7) for sub in subs for i in sub)
    assert flat == list(range(6))


def test_sessions_need_fastprm_attention(qwen_prm_dir):
    prm = PRM.from_pretrained(qwen_prm_dir, dtype=torch.float32, attn_implementation="sdpa")
    with pytest.raises(ValueError, match="need fastprm's varlen attention"):
        prm.session(PROBLEM)
    # The Scorer's packed layout falls back to ungrouped batches there.
    (got,) = prm.score([PROBLEM], [STEPS[:2]], layout="packed")
    (want,) = _batch(prm, [PROBLEM], [STEPS[:2]])
    torch.testing.assert_close(
        torch.tensor(got.step_scores), torch.tensor(want.step_scores), atol=1e-5, rtol=0
    )
