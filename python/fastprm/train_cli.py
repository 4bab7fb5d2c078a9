"""``fastprm train``: train a PRM from a checkpoint directory or a new-model JSON config."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_model(spec: str, dtype):
    """A checkpoint directory, or a JSON file {"backbone": {...config...}, "tokenizer": DIR, "convention": NAME,
    "separator": TEXT, "num_classes": N} describing a new model with random weights."""
    from .models import CONVENTIONS, PRM

    path = Path(spec)
    if path.is_dir():
        return PRM.from_pretrained(path, dtype=dtype)
    spec_json = json.loads(path.read_text())
    convention = CONVENTIONS[spec_json.get("convention", "token-classification")].with_overrides(
        separator=spec_json.get("separator")
    )
    return PRM.from_config(
        spec_json["backbone"], spec_json["tokenizer"], convention, spec_json.get("num_classes"), dtype=dtype
    )


def add_lora(prm, r: int, alpha: int):
    """Wraps the backbone in LoRA adapters (peft); the head stays fully trainable."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise SystemExit("fastprm train: --lora-r needs peft (pip install 'fastprm[lora]')") from None
    prm.backbone = get_peft_model(
        prm.backbone, LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear")
    )
    return prm


def load_examples(source: str, args):
    from .data import load_step_examples

    result = load_step_examples(
        source, format=args.data_format, neutral=args.neutral, on_bad_row=args.on_bad_row
    )
    for where, reason in result.skipped:
        print(f"fastprm train: skipped {where}: {reason}", file=sys.stderr)
    return result.examples


def train(args: argparse.Namespace) -> int:
    import torch

    from .tokenization import StepTokenizer
    from .training import PRMTrainer, PRMTrainingArguments, StepDataset

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    prm = load_model(args.model, dtype)
    if args.lora_r:
        prm = add_lora(prm, args.lora_r, args.lora_alpha)
    if args.gradient_checkpointing:
        prm.activation_checkpointing_enable()
    max_length = args.max_length or getattr(prm.backbone.config, "max_position_embeddings", None)
    step_tokenizer = StepTokenizer(
        prm.tokenizer, prm.convention, max_length=max_length, truncation="drop-steps"
    )
    train_data = StepDataset(load_examples(args.data, args), step_tokenizer)
    eval_data = StepDataset(load_examples(args.eval, args), step_tokenizer) if args.eval else None
    for row in train_data.skipped:
        print(f"fastprm train: skipped training row {row.source_row}: {row.reason}", file=sys.stderr)
    training_args = PRMTrainingArguments(
        output_dir=args.output,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        batch_tokens=args.batch_tokens,
        packed=args.packed,
        label_mode=args.label_mode,
        pos_weight=args.pos_weight,
        eval_strategy="steps" if eval_data is not None else "no",
        eval_steps=args.eval_steps,
        save_steps=args.save_steps,
        logging_steps=args.logging_steps,
        warmup_steps=args.warmup,
        lr_scheduler_type=args.lr_scheduler,
        weight_decay=args.weight_decay,
        seed=args.seed,
        bf16=dtype == torch.bfloat16,
        report_to=[],
        # Length grouping only saves padding; packed batches have none, so they draw rows at random.
        train_sampling_strategy="random" if args.packed else "group_by_length",
    )
    trainer = PRMTrainer(prm, training_args, train_dataset=train_data, eval_dataset=eval_data)
    trainer.train(resume_from_checkpoint=args.resume)
    if args.lora_r:
        prm.backbone = prm.backbone.merge_and_unload()
    if args.save_format == "original":
        prm.save_pretrained(args.output, format="original")
    else:
        trainer.save_model(args.output)
    print(f"fastprm train: saved the trained PRM to {args.output}", file=sys.stderr)
    return 0


def add_train_command(sub) -> None:
    p = sub.add_parser("train", help="train a PRM on step-labelled data")
    p.add_argument(
        "--model", required=True, help="checkpoint directory, or a JSON file describing a new model"
    )
    p.add_argument(
        "--data",
        required=True,
        help="training rows: TRL stepwise, ProcessBench, PRM800K or Math-Shepherd (jsonl/json/parquet)",
    )
    p.add_argument("--eval", default=None, help="evaluation rows (same formats)")
    p.add_argument("--output", required=True)
    p.add_argument("--data-format", default="auto")
    p.add_argument(
        "--neutral", default="positive", help="PRM800K neutral (0) ratings: positive, negative or skip"
    )
    p.add_argument("--on-bad-row", default="error", choices=["error", "skip"])
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--batch-tokens", type=int, default=None, help="token budget per batch instead of a fixed batch size"
    )
    p.add_argument(
        "--packed",
        action="store_true",
        help="pack each batch into one varlen sequence (no padding tokens; rows drawn at random, not grouped by length)",
    )
    p.add_argument("--label-mode", default="all", choices=["all", "last", "first_error"])
    p.add_argument("--pos-weight", type=float, default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--eval-steps", type=int, default=100)
    p.add_argument("--save-steps", type=int, default=500)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument(
        "--warmup", type=float, default=0.0, help="warmup steps, or a fraction of all steps if < 1"
    )
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument(
        "--lr-scheduler",
        default="linear",
        help="transformers scheduler name (linear, cosine, constant_with_warmup, ...)",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--lora-r", type=int, default=0, help="train LoRA adapters of this rank (needs peft)")
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--save-format", default="fastprm", choices=["fastprm", "original"])
    p.add_argument("--resume", default=None, help="checkpoint directory to resume from")
    p.set_defaults(func=train)
