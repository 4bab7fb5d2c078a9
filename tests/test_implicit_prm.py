"""fastprm.implicit.ImplicitPRM against the direct formula: full logits, log_softmax, gather, summed per step."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from checkpoints import implicit_prm_pair
from fastprm.implicit import ImplicitPRM, ImplicitSolutionScores
from fastprm.scoring import SolutionScores

PROBLEMS = ["What is 2 + 3?", "Compute 7 * 6.", "What is 2 + 3?"]
SOLUTIONS = [
    ["2 + 3 = 5.", "The answer is 5."],
    ["7 * 6 = 42.", "So the product is 42.", "The answer is 42."],
    ["2 + 3 = 6.", "The answer is 6."],
]
BETA = 0.05


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return implicit_prm_pair(tmp_path_factory.mktemp("tok"))


def direct_step_rewards(policy, reference, row) -> list[float]:
    """beta * sum over each step's tokens of log pi - log pi_ref, from the models' full logits."""
    ids = torch.tensor([row.input_ids])
    with torch.no_grad():
        logprobs = [torch.log_softmax(m(ids).logits[0].double(), -1) for m in (policy, reference)]
    targets = ids[0, 1:]
    token = BETA * (
        logprobs[0][:-1].gather(1, targets[:, None]) - logprobs[1][:-1].gather(1, targets[:, None])
    )
    # Token p is predicted at row p - 1; step k covers tokens (previous end, end].
    bounds = [row.prompt_length - 1, *row.step_ends]
    return [float(token[a:b].sum()) for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("batch_tokens", [1, 8192], ids=["one-row-batches", "padded-batch"])
def test_matches_the_direct_formula(models, batch_tokens):
    tok, policy, reference = models
    prm = ImplicitPRM(policy, reference, BETA, tokenizer=tok, chunk_size=1000, batch_tokens=batch_tokens)
    rows = prm.tokenizer(PROBLEMS, SOLUTIONS)
    results = prm.score(PROBLEMS, SOLUTIONS)
    for row, result in zip(rows, results):
        assert isinstance(result, ImplicitSolutionScores) and isinstance(result, SolutionScores)
        expected = direct_step_rewards(policy, reference, row)
        assert result.step_rewards == pytest.approx(expected, abs=1e-5, rel=1e-5)
        probs = [1 / (1 + math.exp(-r)) for r in expected]
        assert result.step_scores == pytest.approx(probs, abs=1e-5)
        assert result.min == pytest.approx(min(probs), abs=1e-5)
        assert result.last == pytest.approx(probs[-1], abs=1e-5)


def test_bf16_models_use_their_bf16_logits(models):
    """bf16 models: log-probabilities from the LM head's bf16 logits upcast to float32 (token_logprobs' default
    16-bit GEMMs), as the direct formula on the models' own bf16 logits has them."""
    tok, *pair = models
    policy, reference = (copy.deepcopy(m).to(torch.bfloat16) for m in pair)
    prm = ImplicitPRM(policy, reference, BETA, tokenizer=tok, chunk_size=1000, batch_tokens=1)
    rows = prm.tokenizer(PROBLEMS, SOLUTIONS)
    for row, result in zip(rows, prm.score(PROBLEMS, SOLUTIONS)):
        assert result.step_rewards == pytest.approx(direct_step_rewards(policy, reference, row), abs=1e-5)


def test_the_same_model_gives_zero_rewards(models):
    tok, policy, _ = models
    (result,) = ImplicitPRM(policy, policy, BETA, tokenizer=tok).score(PROBLEMS[:1], SOLUTIONS[:1])
    assert result.step_rewards == [0.0, 0.0]
    assert result.step_scores == [0.5, 0.5]


def test_bad_beta(models):
    tok, policy, reference = models
    with pytest.raises(ValueError, match="beta"):
        ImplicitPRM(policy, reference, float("nan"), tokenizer=tok)
