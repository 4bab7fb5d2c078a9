"""fastprm.rl: transforms and their length incentive, token placement, step ends through real policy
tokenizers (Qwen2 BPE and Mistral SentencePiece), dense PRM rewards end to end, hybrid rewards, and the TRL,
verl and OpenRLHF adapters."""

import math
import random
from types import SimpleNamespace

import pytest
import torch

import checkpoints
from fastprm import PRM
from fastprm.rl import (
    TRANSFORMS,
    char_to_token,
    hybrid_rewards,
    normalize,
    outcome_rewards,
    prm_token_rewards,
    response_steps,
    step_rewards,
    token_rewards,
    trl_reward_function,
    verl_dense_rewards,
)
from fastprm.rl.text import problem_of, query_rows

SCORES = [0.9, 0.6, 0.95, 0.8]


# -- transforms -------------------------------------------------------------------------------------------


def test_each_transform_is_its_formula():
    p = torch.tensor(SCORES)
    assert torch.allclose(step_rewards(p, "prob"), p)
    assert torch.allclose(step_rewards(p, "centered"), p - 0.5)
    assert torch.allclose(step_rewards(p, "logit"), torch.log(p / (1 - p)))
    assert torch.allclose(step_rewards(p, "log_prob"), torch.log(p))
    assert torch.allclose(step_rewards(p, "delta"), torch.tensor([0.4, -0.3, 0.35, -0.15]))
    T = 0.1
    r = step_rewards(p, "min_form", temperature=T)
    for k in range(len(SCORES)):  # the return from step k is the soft-min of the steps still to come
        soft_min = -T * math.log(sum(math.exp(-s / T) for s in SCORES[k:]))
        assert math.isclose(float(r[k:].sum()), soft_min, rel_tol=1e-5)
    assert float(r.sum()) <= min(SCORES)
    assert math.isclose(float(step_rewards(p, "min_form", temperature=1e-3).sum()), 0.6, abs_tol=1e-3)


def test_nan_scores_count_as_zero_and_edge_sizes():
    for transform in TRANSFORMS:
        r = step_rewards([0.9, float("nan")], transform)
        assert torch.isfinite(r).all(), transform
        assert step_rewards([], transform).shape == (0,)
        assert step_rewards([0.7], transform).shape == (1,)
    with pytest.raises(ValueError, match="transform"):
        step_rewards(SCORES, "sum")
    with pytest.raises(ValueError, match="temperature"):
        step_rewards(SCORES, "min_form", temperature=0)


def split_step(scores, k):
    """The same solution with step k written as two steps of the same score."""
    return scores[: k + 1] + scores[k:]


def test_default_transform_gives_no_reward_for_more_steps():
    """Splitting a correct step into two correct halves never raises the total reward (min_form), for any
    step of random solutions; under prob and centered it does (documented as length-hackable)."""
    rng = random.Random(0)
    for _ in range(200):
        scores = [rng.uniform(0.5, 1.0) for _ in range(rng.randint(1, 8))]
        k = rng.randrange(len(scores))
        split = split_step(scores, k)
        assert float(step_rewards(split).sum()) <= float(step_rewards(scores).sum()) + 1e-6
        assert float(step_rewards(split, "delta").sum()) == pytest.approx(
            float(step_rewards(scores, "delta").sum())
        )
        assert float(step_rewards(split, "log_prob").sum()) <= float(step_rewards(scores, "log_prob").sum())
    assert float(step_rewards(split_step(SCORES, 0), "prob").sum()) > float(
        step_rewards(SCORES, "prob").sum()
    )


def test_normalize_batch_and_group():
    rewards = [torch.tensor([1.0, 2.0]), torch.tensor([3.0]), torch.tensor([]), torch.tensor([5.0, 9.0])]
    batch = torch.cat(normalize(rewards, "batch"))
    assert abs(float(batch.mean())) < 1e-6 and math.isclose(float(batch.std(unbiased=False)), 1, rel_tol=1e-5)
    grouped = normalize(rewards, "group", group_size=2)
    first, second = torch.cat(grouped[:2]), torch.cat(grouped[2:])
    assert abs(float(first.mean())) < 1e-6 and abs(float(second.mean())) < 1e-6
    assert normalize(rewards, None) is rewards
    with pytest.raises(ValueError, match="group_size"):
        normalize(rewards, "group", group_size=3)
    with pytest.raises(ValueError, match="normalize"):
        normalize(rewards, "z")


# -- token placement --------------------------------------------------------------------------------------


def test_token_rewards_places_each_step_at_its_end_token():
    out = token_rewards([[0.9, 0.6], [0.7], []], [[2, 5], [0], []], [7, 3, 4], transform="prob")
    assert out.shape == (3, 7) and out.dtype == torch.float32
    assert out[0].tolist() == pytest.approx([0, 0, 0.9, 0, 0, 0.6, 0])
    assert out[1].tolist() == pytest.approx([0.7, 0, 0, 0, 0, 0, 0])
    assert out[2].abs().sum() == 0
    same_token = token_rewards([[0.9, 0.6]], [[3, 3]], 4, transform="prob")
    assert same_token[0, 3] == pytest.approx(1.5)


def test_token_rewards_errors_name_the_row():
    with pytest.raises(ValueError, match="response 0, step 1"):
        token_rewards([[0.9, 0.6]], [[2, 7]], 7)
    with pytest.raises(ValueError, match="response 1"):
        token_rewards([[0.9], [0.5, 0.4]], [[0], [1]], 4)
    with pytest.raises(ValueError, match="response lengths"):
        token_rewards([[0.9]], [[0]], [4, 5])


RESPONSE = "First, 2 + 3 = 5.\n\nSo the total is 5 apples.\n\nThe answer is \\boxed{5}.  \n\n  "


@pytest.fixture(scope="module", params=["qwen2", "mistral"])
def policy_tokenizer(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    tok = checkpoints.qwen_tokenizer(out) if request.param == "qwen2" else checkpoints.mistral_tokenizer(out)
    assert tok.is_fast
    return tok


def test_step_ends_map_to_the_token_holding_their_last_character(policy_tokenizer):
    steps = response_steps(RESPONSE)
    assert steps.steps == ["First, 2 + 3 = 5.", "So the total is 5 apples.", "The answer is \\boxed{5}."]
    encoded = policy_tokenizer(RESPONSE, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    for end, token in zip(steps.ends, char_to_token(steps.ends, offsets)):
        start, stop = offsets[token]
        assert start <= end - 1 < stop, (end, offsets[token])


def test_a_step_ending_inside_a_merged_token(tmp_path):
    """Qwen2's BPE merges a step's final '.' with the blank line after it into one token: the step's reward
    goes to that token (it holds the step's last character)."""
    tok = checkpoints.qwen_tokenizer(tmp_path)
    text = "So x = 5.\n\nNext we add."
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    end = response_steps(text).ends[0]
    merged = [j for j, (s, e) in enumerate(offsets) if s <= end - 1 and e > end]
    assert merged, offsets  # the case this test is about
    assert char_to_token([end], offsets) == merged


def test_char_to_token_edges():
    assert char_to_token([7], [(0, 5), (5, 9), (9, 9)]) == [1]
    assert char_to_token([9], [(0, 5), (5, 9), (9, 9)]) == [1]  # a zero-width token is never chosen
    with pytest.raises(ValueError):
        char_to_token([1], [(3, 5)])


def test_truncated_response_leaves_its_unfinished_step_out():
    cut = "Step one is fine.\n\nStep two is cut of"
    assert response_steps(cut, truncated=True).unfinished
    assert not response_steps(cut, truncated=False).unfinished
    assert not response_steps("Step one.\n\nStep two.\n\n", truncated=True).unfinished


def test_problem_of_chat_prompts():
    chatml = "<|im_start|>system\nBe careful.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    llama3 = "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+3?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    assert problem_of(chatml) == problem_of(llama3) == "What is 2+3?"
    assert problem_of("  Question: what?  ") == "Question: what?"
    assert problem_of("Q: what is it? A:", r"Q: (.*?) A:") == "what is it?"


# -- with a PRM -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prm(qwen_prm_dir):
    return PRM.from_pretrained(qwen_prm_dir, dtype=torch.float32)


def test_prm_token_rewards_end_to_end(prm, policy_tokenizer):
    prompts = ["<|im_start|>user\nHow many apples?<|im_end|>\n<|im_start|>assistant\n", "What is 1+1?"]
    responses = [RESPONSE, "1 + 1 = 2.\n\nThe answer is 2.<|im_end|>"]
    out = prm_token_rewards(prm, prompts, responses, policy_tokenizer, transform="prob")
    expected = prm.score(["How many apples?", "What is 1+1?"], [response_steps(r).steps for r in responses])
    for b in range(2):
        assert out.step_scores[b] == pytest.approx(expected[b].step_scores, abs=1e-6)
        nonzero = out.rewards[b].nonzero().flatten().tolist()
        assert nonzero == out.step_end_tokens[b]
        assert out.rewards[b, nonzero].tolist() == pytest.approx(expected[b].step_scores, abs=1e-6)
        assert len(out.response_ids[b]) <= out.rewards.shape[1]
    min_form = prm_token_rewards(prm, prompts, responses, policy_tokenizer)
    for b in range(2):
        assert float(min_form.rewards[b].sum()) <= min(expected[b].step_scores) + 1e-6


def test_prm_token_rewards_truncated_and_empty(prm, policy_tokenizer):
    responses = ["Step one is fine.\n\nStep two is cut of", ""]
    out = prm_token_rewards(prm, ["p", "q"], responses, policy_tokenizer, truncated=[True, False])
    assert len(out.step_scores[0]) == 1 and out.step_scores[1] == []
    assert out.rewards[1].abs().sum() == 0
    kept = prm_token_rewards(
        prm, ["p", "q"], responses, policy_tokenizer, truncated=[True, False], reward_unfinished=True
    )
    assert len(kept.step_scores[0]) == 2
    with pytest.raises(ValueError, match="prompts"):
        prm_token_rewards(prm, ["p"], responses, policy_tokenizer)


def test_rewards_do_not_depend_on_batch_order(prm, policy_tokenizer):
    prompts = [f"Problem {i}: add {i} and 2." for i in range(4)]
    responses = [f"{i} + 2 = {i + 2}.\n\nThe answer is {i + 2}." for i in range(4)]
    forward = prm_token_rewards(prm, prompts, responses, policy_tokenizer)
    backward = prm_token_rewards(prm, prompts[::-1], responses[::-1], policy_tokenizer)
    for b in range(4):
        n = len(forward.response_ids[b])
        assert torch.allclose(forward.rewards[b, :n], backward.rewards[3 - b, :n], atol=1e-6)


# -- hybrid -----------------------------------------------------------------------------------------------


def test_hybrid_rewards_and_gates():
    steps = [[0.9, 0.8], [0.7], []]
    outcomes = [1.0, 0.0, 1.0]
    assert hybrid_rewards(steps, outcomes) == pytest.approx([1.8, 0.7, 1.0])
    assert hybrid_rewards(steps, outcomes, gate="correct") == pytest.approx([1.8, 0.0, 1.0])
    assert hybrid_rewards(steps, outcomes, gate="cap", cap=0.2) == pytest.approx([1.8, 0.2, 1.0])
    assert hybrid_rewards(
        steps, outcomes, outcome_weight=0.5, process_weight=2, aggregate_by="mean"
    ) == pytest.approx([0.5 + 1.7, 1.4, 0.5])
    assert hybrid_rewards([[0.5, float("nan")]], [0.0], empty_process=-1) == [-1]
    with pytest.raises(ValueError, match="gate"):
        hybrid_rewards(steps, outcomes, gate="soft")


def test_outcome_rewards_use_the_answer_checker_or_a_function():
    responses = ["so \\boxed{\\frac{1}{2}}", "The answer is 0.5.", "The answer is 3.", "no answer"]
    assert outcome_rewards(responses, ["0.5", "1/2", "4", None]) == [1.0, 1.0, 0.0, 0.0]
    assert outcome_rewards(["x"], ["y"], check=lambda r, ref: True) == [1.0]


# -- adapters ---------------------------------------------------------------------------------------------


def test_trl_reward_function_formats(prm):
    reward = trl_reward_function(prm)
    assert reward.__name__ == "fastprm_prm"
    problem, completion = "What is 2+3?", "2 + 3 = 5.\n\nThe answer is \\boxed{5}."
    expected = prm.score([problem], [response_steps(completion).steps])[0].min
    standard = reward(prompts=[f"<|im_start|>user\n{problem}<|im_end|>\n"], completions=[completion])
    conversational = reward(
        prompts=[[{"role": "system", "content": "hi"}, {"role": "user", "content": problem}]],
        completions=[[{"role": "assistant", "content": completion}]],
        trainer_state=None,
    )
    assert standard == pytest.approx([expected]) and conversational == pytest.approx([expected])
    hybrid = trl_reward_function(prm, answer_key="answer", gate="correct", name="prm_hybrid")
    got = hybrid(
        prompts=[problem, problem], completions=[completion, "The answer is \\boxed{6}."], answer=["5", "5"]
    )
    assert got[0] == pytest.approx(1 + expected) and got[1] == 0.0
    with pytest.raises(KeyError, match="answer"):
        hybrid(prompts=[problem], completions=[completion])


def test_verl_dense_rewards_on_verl_layout(prm):
    """Hand-built tensors in verl's layout (left-padded prompts, right-padded responses) give the rewards of
    prm_token_rewards on the decoded texts, at the same tokens."""
    tok = prm.tokenizer
    prompts = [
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n",
    ]
    responses = ["2 + 3 = 5.\n\nThe answer is 5.<|im_end|>", "Hello.<|im_end|>"]
    p_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    r_ids = [tok(r, add_special_tokens=False)["input_ids"] for r in responses]
    P, R, pad = max(map(len, p_ids)), max(map(len, r_ids)) + 3, tok.pad_token_id or 0
    prompt_t = torch.tensor([[pad] * (P - len(i)) + i for i in p_ids])
    resp_t = torch.tensor([i + [pad] * (R - len(i)) for i in r_ids])
    mask = torch.tensor(
        [[0] * (P - len(p)) + [1] * len(p) + [1] * len(r) + [0] * (R - len(r)) for p, r in zip(p_ids, r_ids)]
    )
    data = SimpleNamespace(batch={"prompts": prompt_t, "responses": resp_t, "attention_mask": mask})
    got = verl_dense_rewards(data, prm, tok, transform="prob")
    assert got.shape == resp_t.shape and got.dtype == torch.float32
    want = prm_token_rewards(prm, prompts, responses, tok, transform="prob")
    for b in range(2):
        n = len(r_ids[b])
        assert torch.allclose(got[b, :n], want.rewards[b, :n], atol=1e-6)
        assert got[b, n:].abs().sum() == 0
    with pytest.raises(ValueError, match="attention_mask"):
        verl_dense_rewards(SimpleNamespace(batch={**data.batch, "attention_mask": mask[:, 1:]}), prm, tok)


def test_openrlhf_reward_func(prm, qwen_prm_dir, monkeypatch):
    from fastprm.rl import openrlhf_reward_func

    monkeypatch.setenv("FASTPRM_REWARD_MODEL", str(qwen_prm_dir))
    monkeypatch.setenv("FASTPRM_REWARD_DTYPE", "fp32")
    openrlhf_reward_func._scorer.cache_clear()
    prompt = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    queries = [prompt + "2 + 3 = 5.\n\nThe answer is \\boxed{5}.<|im_end|>", prompt + "<|im_end|>"]
    out = openrlhf_reward_func.reward_func(queries, [prompt, prompt], ["5", "5"])
    expected = prm.score(*query_rows(queries[:1], [prompt]))[0].min
    assert out["rewards"].tolist() == pytest.approx([expected, 0.0], abs=1e-6)
    assert out["scores"].shape == (2,) and out["extra_logs"]["prm_steps"].tolist() == [2.0, 0.0]
    monkeypatch.setenv("FASTPRM_REWARD_OUTCOME_WEIGHT", "1")
    hybrid = openrlhf_reward_func.reward_func(queries, [prompt, prompt], ["5", "5"])
    assert hybrid["rewards"].tolist() == pytest.approx([1 + expected, 0.0], abs=1e-6)
    openrlhf_reward_func._scorer.cache_clear()
