"""TRL's own GRPOTrainer runs with fastprm's PRM reward function: 2 steps on a tiny random policy."""

import math

import pytest
import torch

import checkpoints

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from fastprm import PRM  # noqa: E402
from fastprm.rl import trl_reward_function  # noqa: E402


def test_grpo_trainer_runs_two_steps_with_the_prm_reward(qwen_prm_dir, tmp_path):
    from transformers import Qwen2ForCausalLM

    policy_dir = tmp_path / "policy"
    torch.manual_seed(0)
    tok = checkpoints.qwen_tokenizer(policy_dir)
    Qwen2ForCausalLM(checkpoints.tiny_qwen2_config(len(tok))).save_pretrained(policy_dir)
    prm = PRM.from_pretrained(qwen_prm_dir, dtype=torch.float32)
    calls = []
    reward = trl_reward_function(prm, split=r"\s+", name="prm_min")  # random text: every word a step

    def counted(prompts, completions, **kwargs):
        values = reward(prompts, completions, **kwargs)
        calls.append(values)
        return values

    counted.__name__ = reward.__name__
    data = datasets.Dataset.from_dict(
        {"prompt": [f"What is {i} + {i}?" for i in range(4)], "answer": [str(2 * i) for i in range(4)]}
    )
    config = trl.GRPOConfig(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, num_generations=2,
        max_completion_length=12, learning_rate=1e-4, logging_steps=1, report_to=[], use_cpu=True,
        save_strategy="no", bf16=False, seed=0,
    )  # fmt: skip
    trainer = trl.GRPOTrainer(
        model=str(policy_dir), reward_funcs=[counted], args=config, train_dataset=data, processing_class=tok
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert calls and all(len(v) == 4 and all(math.isfinite(x) for x in v) for v in calls)
    assert any(x > 0 for v in calls for x in v)  # the PRM scored steps
    logged = [h for h in trainer.state.log_history if "rewards/prm_min/mean" in h]
    assert logged and all(math.isfinite(h["rewards/prm_min/mean"]) for h in logged)
