"""fastprm.search: the scripted generator of the demo task, the transformers generator, best-of-N and beam
search over sessions, and the fastprm search / eval search commands."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

import checkpoints as ck
from fastprm.cli import main
from fastprm.models import PRM
from fastprm.search import Generator, TransformersGenerator, beam_search, best_of_n, prefix_text
from fastprm.synthetic import ScriptedStepGenerator, make_problem, true_answer

STEP = re.compile(r"(wait , )?(-?\d+) \+ (\d+) = (-?\d+) \.")


def _problems(n, seed=0):
    rng = random.Random(seed)
    return [make_problem(rng, p, 1)[0]["problem"] for p in range(n)]


@pytest.fixture(scope="module")
def prm(qwen_prm_dir):
    return PRM.from_pretrained(qwen_prm_dir, dtype=torch.float32)


def test_scripted_generator_is_a_generator_and_solves_without_errors():
    perfect = ScriptedStepGenerator(error_rate=0.0)
    assert isinstance(perfect, Generator)
    problems = _problems(20)
    for problem, solutions in zip(problems, perfect.generate_solutions(problems, 3)):
        for steps in solutions:
            assert steps[-1] == f"the answer is {true_answer(problem)} ."
            assert all(STEP.fullmatch(s) for s in steps[:-1])


def test_scripted_generator_makes_and_corrects_errors_deterministically():
    noisy = ScriptedStepGenerator(error_rate=0.4, correct_rate=0.5, seed=3)
    problems = _problems(60)
    solutions = noisy.generate_solutions(problems, 8)
    assert solutions == ScriptedStepGenerator(error_rate=0.4, correct_rate=0.5, seed=3).generate_solutions(
        problems, 8
    )
    flat = [(p, s) for p, sols in zip(problems, solutions) for s in sols]
    right = sum(s[-1] == f"the answer is {true_answer(p)} ." for p, s in flat) / len(flat)
    assert 0.1 < right < 0.7
    assert any(step.startswith("wait") for _, s in flat for step in s)
    assert noisy.generated_steps == sum(len(s) for _, s in flat)


def test_scripted_steps_continue_from_the_stated_value():
    gen = ScriptedStepGenerator(error_rate=0.0)
    problem = "tom has 3 apples . tom gets 2 , then finds 1 . how many apples now ?"
    (steps,) = gen.generate_steps([prefix_text(gen, problem, ["3 + 2 = 6 ."], gen.stop)], 4, stop=gen.stop)
    assert set(steps) <= {"6 + 1 = 7 .", "wait , 3 + 2 = 5 ."}


def test_best_of_n_scores_every_candidate_and_picks_the_best(prm):
    gen = ScriptedStepGenerator(error_rate=0.4, seed=1)
    problems = _problems(3)
    results = best_of_n(prm, gen, problems, 6, aggregate="min")
    for problem, result in zip(problems, results):
        assert len(result.candidates) == 6 and result.counters["generated_steps"] >= 6 * 2
        want = prm.score([problem] * 6, [c.steps for c in result.candidates], layout="rows")
        for c, w in zip(result.candidates, want):
            assert c.score == pytest.approx(w.min, abs=1e-5)
        assert result.best.score == max(c.score for c in result.candidates)
    voted = best_of_n(prm, ScriptedStepGenerator(error_rate=0.4, seed=1), problems, 6, vote=True)
    for result in voted:
        weight = {}
        for c in result.candidates:
            weight[c.answer] = weight.get(c.answer, 0) + c.score
        assert weight[result.best.answer] == max(weight.values())


def test_beam_search_scores_new_steps_only_and_matches_batch_scoring(prm):
    gen = ScriptedStepGenerator(error_rate=0.3, seed=2)
    problem = _problems(1)[0]
    result = beam_search(
        prm, gen, problem, beam_width=2, expansions=3, max_steps=8, aggregate="min", stop=gen.stop
    )
    assert 1 <= len(result.candidates) <= 2
    for c in result.candidates:
        (want,) = prm.score([problem], [c.steps], layout="rows")
        torch.testing.assert_close(
            torch.tensor(c.step_scores), torch.tensor(want.step_scores), atol=1e-5, rtol=0
        )
    counters = result.counters
    assert counters["depth"] >= 3 and counters["generated_steps"] >= 3 * 3
    assert counters["prm_tokens"] < counters["prm_tokens_full_rescore"] / 2
    assert result.best.finished and result.best.steps[-1].startswith("the answer is")
    again = beam_search(
        prm, ScriptedStepGenerator(error_rate=0.3, seed=2), problem, beam_width=2, expansions=3, max_steps=8,
        aggregate="min", stop=gen.stop, rescore=True,
    )  # fmt: skip
    assert [c.steps for c in again.candidates] == [c.steps for c in result.candidates]
    for a, b in zip(again.candidates, result.candidates):
        torch.testing.assert_close(
            torch.tensor(a.step_scores), torch.tensor(b.step_scores), atol=1e-5, rtol=0
        )
    assert again.counters["prm_tokens"] == again.counters["prm_tokens_full_rescore"]


def test_beam_search_pruning_and_bad_arguments(prm):
    gen = ScriptedStepGenerator(seed=0)
    problem = _problems(1)[0]
    pruned = beam_search(prm, gen, problem, prune_below=1.0, stop=gen.stop)
    assert pruned.best is None and pruned.candidates == []
    with pytest.raises(ValueError, match="beam_width must be a positive integer"):
        beam_search(prm, gen, problem, beam_width=0)
    with pytest.raises(ValueError, match="aggregate"):
        beam_search(prm, gen, problem, aggregate="median")
    with pytest.raises(ValueError, match="n must be at least 1"):
        best_of_n(prm, gen, [problem], 0)


def test_transformers_generator(tmp_path):
    from transformers import Qwen2ForCausalLM

    tok = ck.qwen_tokenizer(tmp_path)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(ck.tiny_qwen2_config(len(tok)))
    gen = TransformersGenerator(model, tok, seed=5, max_new_tokens=12, batch_size=3)
    assert isinstance(gen, Generator)
    prefixes = [gen.prompt("What is 2 + 3?"), gen.prompt("Name a prime.") + "Two.\n\n"]
    steps = gen.generate_steps(prefixes, 2, max_new_tokens=8)
    assert [len(s) for s in steps] == [2, 2] and all(
        isinstance(t, str) and "\n\n" not in t for s in steps for t in s
    )
    assert steps == gen.generate_steps(prefixes, 2, max_new_tokens=8)  # seeded
    solutions = gen.generate_solutions(["What is 2 + 3?"], 2)
    assert len(solutions) == 1 and len(solutions[0]) == 2
    assert gen.generated_tokens > 0


def test_search_and_eval_commands(tmp_path, qwen_prm_dir, capsys):
    problems = tmp_path / "problems.jsonl"
    rows = [{"id": i, "problem": p, "answer": str(true_answer(p))} for i, p in enumerate(_problems(3))]
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [
        "search",
        "--model",
        str(qwen_prm_dir),
        "--generator",
        "synthetic",
        "--input",
        str(problems),
        "--quiet",
    ]
    assert main([*common, "--output", str(tmp_path / "bon.jsonl"), "--n", "4"]) == 0
    assert (
        main([*common, "--output", str(tmp_path / "beam.jsonl"), "--method", "beam", "--beam-width", "2"])
        == 0
    )
    bon = [json.loads(line) for line in (tmp_path / "bon.jsonl").read_text().splitlines()]
    beam = [json.loads(line) for line in (tmp_path / "beam.jsonl").read_text().splitlines()]
    assert [r["id"] for r in bon] == [0, 1, 2] and all(len(r["candidates"]) == 4 for r in bon)
    assert all(isinstance(r["correct"], bool) and r["counters"]["prm_tokens"] > 0 for r in beam)
    out = tmp_path / "search.json"
    argv = [
        "eval",
        "search",
        "--best-of-n",
        str(tmp_path / "bon.jsonl"),
        "--beam",
        str(tmp_path / "beam.jsonl"),
    ]
    assert main([*argv, "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["kind"] == "search" and {"one sample", "beam search"} <= set(metrics["methods"])
    assert "Search (3 problems)" in capsys.readouterr().out

    problems.write_text('{"problem": "ok"}\n{"id": 2}\n')
    with pytest.raises(SystemExit, match=r"problems.jsonl:2: a row needs a \"problem\" string"):
        main([*common, "--output", str(tmp_path / "x.jsonl")])
