"""Implicit PRM sessions (fastprm.implicit_sessions): steps added one at a time over both models' cached keys
and values give the rewards and scores of scoring the whole row, alone or many sessions per call, forked or
not, and leave the models' attention as it was."""

from __future__ import annotations

import pytest

from checkpoints import implicit_prm_pair
from fastprm.implicit import ImplicitPRM
from fastprm.implicit_sessions import add_implicit_steps

PROBLEMS = ["What is 2 + 3?", "Compute 7 * 6."]
SOLUTIONS = [
    ["2 + 3 = 5.", "The answer is 5."],
    ["7 * 6 = 42.", "So the product is 42.", "The answer is 42."],
]
BETA = 0.05


@pytest.fixture(scope="module")
def prm(tmp_path_factory):
    tok, policy, reference = implicit_prm_pair(tmp_path_factory.mktemp("tok"))
    return ImplicitPRM(policy, reference, BETA, tokenizer=tok, chunk_size=1000)


def test_steps_one_at_a_time_equal_scoring_the_row(prm):
    expected = prm.score(PROBLEMS, SOLUTIONS)
    for problem, steps, want in zip(PROBLEMS, SOLUTIONS, expected):
        session = prm.session(problem)
        scores = [session.add_step(step) for step in steps]
        assert session.step_rewards == pytest.approx(want.step_rewards, abs=1e-5)
        assert scores == pytest.approx(want.step_scores, abs=1e-6)
        got = session.result()
        assert got.step_rewards == session.step_rewards
        for field in ("min", "prod", "mean", "last"):
            assert getattr(got, field) == pytest.approx(getattr(want, field), abs=1e-6)
        assert got.first_error == want.first_error
        assert (
            session.cached_tokens == prm.tokenizer([problem], [steps])[0].step_ends[-1] + 1
        )  # no template tail


def test_many_sessions_per_call_and_forks_are_independent(prm):
    expected = prm.score(
        [PROBLEMS[0], PROBLEMS[1], PROBLEMS[0]], [SOLUTIONS[0], SOLUTIONS[1], ["2 + 3 = 6.", "6."]]
    )
    a, b = prm.session(PROBLEMS[0]), prm.session(PROBLEMS[1])
    add_implicit_steps([a, b], [SOLUTIONS[0][0], SOLUTIONS[1][0]])
    c = prm.session(PROBLEMS[0])
    add_implicit_steps([a, b, c], [SOLUTIONS[0][1], SOLUTIONS[1][1], "2 + 3 = 6."])
    fork = b.fork()
    add_implicit_steps([b, c], [SOLUTIONS[1][2], "6."])
    assert a.step_rewards == pytest.approx(expected[0].step_rewards, abs=1e-5)
    assert b.step_rewards == pytest.approx(expected[1].step_rewards, abs=1e-5)
    assert c.step_rewards == pytest.approx(expected[2].step_rewards, abs=1e-5)
    assert len(fork.step_rewards) == 2  # the fork did not see b's third step
    assert fork.add_step(SOLUTIONS[1][2]) == pytest.approx(b.scores[2], abs=1e-6)


def test_the_models_keep_their_attention(prm):
    before = prm.policy.config._attn_implementation
    prm.session(PROBLEMS[0]).add_step("1.")
    assert prm.policy.config._attn_implementation == before


def test_bad_calls_raise_clear_errors(prm):
    s = prm.session(PROBLEMS[0])
    with pytest.raises(ValueError, match="not a string"):
        add_implicit_steps([s], "a step")
    with pytest.raises(ValueError, match="got 1 sessions but 2 texts"):
        add_implicit_steps([s], ["a", "b"])
    with pytest.raises(ValueError, match="appears twice"):
        add_implicit_steps([s, s], ["a", "b"])
    with pytest.raises(ValueError, match=r"texts\[0\]: the step must be a string"):
        s.add_step(None)
    assert add_implicit_steps([], []) == []
