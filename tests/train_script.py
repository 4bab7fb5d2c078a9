"""Trains a tiny PRM for a few steps and saves its parameters: run alone or under torchrun (gloo)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent))

from fastprm.data.formats import StepExample
from fastprm.models import PRM
from fastprm.tokenization import StepTokenizer
from fastprm.training import PRMTrainer, PRMTrainingArguments, StepDataset


def examples(n: int) -> list[StepExample]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        a, b = (int(x) for x in torch.randint(1, 50, (2,), generator=gen))
        wrong = i % 3 == 0
        steps = [
            f"{a} + {b} = {a + b + (1 if wrong else 0)}.",
            f"The answer is {a + b + (1 if wrong else 0)}.",
        ]
        out.append(StepExample(f"What is {a} + {b}?", steps, [0.0 if wrong else 1.0] * 2, i))
    return out


class StepCounter(TrainerCallback):
    """Counts the optimizer steps this process ran (a resumed run must not redo the first ones)."""

    steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        StepCounter.steps += 1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--per-device-batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--save-steps", type=int, default=0)
    p.add_argument("--resume", default=None)
    p.add_argument("--batch-tokens", type=int, default=None)
    p.add_argument("--packed", action="store_true")
    p.add_argument("--optim", default="adamw_torch")
    p.add_argument("--gradient-checkpointing", action="store_true")
    a = p.parse_args()
    prm = PRM.from_pretrained(a.model, dtype=torch.float32)
    data = StepDataset(examples(32), StepTokenizer(prm.tokenizer, prm.convention))
    args = PRMTrainingArguments(
        output_dir=a.out, per_device_train_batch_size=a.per_device_batch, max_steps=a.steps, learning_rate=1e-3,
        train_sampling_strategy="sequential", save_strategy="steps" if a.save_steps else "no",
        save_steps=a.save_steps or 500, report_to=[], logging_steps=1, seed=0, use_cpu=True,
        batch_tokens=a.batch_tokens, packed=a.packed, optim=a.optim, gradient_checkpointing=a.gradient_checkpointing,
        disable_tqdm=True, ddp_backend="gloo" if "RANK" in os.environ else None,
    )  # fmt: skip
    trainer = PRMTrainer(prm, args, train_dataset=data, callbacks=[StepCounter()])
    trainer.train(resume_from_checkpoint=a.resume)
    trainer.save_model()
    if trainer.args.should_save:
        torch.save({k: v.detach().clone() for k, v in prm.state_dict().items()}, Path(a.out) / "params.pt")
        torch.save([h["loss"] for h in trainer.state.log_history if "loss" in h], Path(a.out) / "losses.pt")
        (Path(a.out) / "steps_run.txt").write_text(str(StepCounter.steps))


if __name__ == "__main__":
    main()
