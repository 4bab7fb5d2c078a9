"""``fastprm train``: train a PRM from a checkpoint directory or a new-model JSON config.

The options are defined and checked in :mod:`fastprm.cli`. Everything a user can get wrong (a missing file, a
bad row, an unknown format or scheduler, a broken checkpoint or model JSON) ends the command with one line
before training starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .io import check_input_file, one_line


def _fail(message: str) -> SystemExit:
    return SystemExit(f"fastprm train: {message}")


def load_model(spec: str, dtype):
    """A checkpoint directory, or a JSON file {"backbone": {...config...}, "tokenizer": DIR, "convention": NAME,
    "separator": TEXT, "num_classes": N} describing a new model with random weights."""
    from .models import CONVENTIONS, PRM

    path = Path(spec)
    if path.is_dir():
        return PRM.from_pretrained(path, dtype=dtype)
    try:
        spec_json = json.loads(check_input_file(path, "--model").read_bytes().decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors too
        raise ValueError(f"{spec}: not a checkpoint folder or a model JSON file: {err}") from None
    if not isinstance(spec_json, dict) or not {"backbone", "tokenizer"} <= spec_json.keys():
        raise ValueError(f"{spec}: a model JSON needs 'backbone' (a config) and 'tokenizer' (a folder)")
    name = spec_json.get("convention", "token-classification")
    if name not in CONVENTIONS:
        raise ValueError(f"{spec}: unknown convention {name!r}; expected one of {', '.join(CONVENTIONS)}")
    convention = CONVENTIONS[name].with_overrides(separator=spec_json.get("separator"))
    return PRM.from_config(
        spec_json["backbone"], spec_json["tokenizer"], convention, spec_json.get("num_classes"), dtype=dtype
    )


def add_lora(prm, r: int, alpha: int):
    """Wraps the backbone in LoRA adapters (peft); the head stays fully trainable."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise _fail("--lora-r needs peft (pip install 'fastprm[lora]')") from None
    prm.backbone = get_peft_model(
        prm.backbone, LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear")
    )
    return prm


def load_examples(source: str, args: argparse.Namespace) -> list:
    """The step examples of a data file (bad rows and dropped records reported on stderr)."""
    from .data import load_step_examples

    try:
        result = load_step_examples(
            source, format=args.data_format, neutral=args.neutral, on_bad_row=args.on_bad_row
        )
    except ImportError as err:  # a reader's optional package (pyarrow for Parquet)
        raise ValueError(f"{source}: {err}") from err
    for where, reason in result.skipped:
        print(f"fastprm train: skipped {where}: {reason}", file=sys.stderr)
    return result.examples


def check_options(args: argparse.Namespace) -> None:
    """What argparse cannot check alone: the files exist and the scheduler is one transformers knows."""
    from transformers import SchedulerType

    check_input_file(args.data, "--data")
    if args.eval:
        check_input_file(args.eval, "--eval")
    if not Path(args.model).exists():
        raise ValueError(f"--model {args.model}: no such checkpoint folder or model JSON file")
    if args.resume and not Path(args.resume).is_dir():
        raise ValueError(f"--resume {args.resume}: no such checkpoint folder")
    try:
        SchedulerType(args.lr_scheduler)
    except ValueError:
        names = ", ".join(s.value for s in SchedulerType)
        raise ValueError(f"--lr-scheduler {args.lr_scheduler!r}: expected one of {names}") from None


def datasets(args: argparse.Namespace, prm):
    """(training, evaluation or None) StepDatasets, tokenized for the model's convention; rows whose every
    step is too long are skipped and reported."""
    from .tokenization import StepTokenizer
    from .training import StepDataset

    max_length = args.max_length or getattr(prm.backbone.config, "max_position_embeddings", None)
    step_tokenizer = StepTokenizer(
        prm.tokenizer, prm.convention, max_length=max_length, truncation="drop-steps"
    )
    train_data = StepDataset(load_examples(args.data, args), step_tokenizer)
    eval_data = StepDataset(load_examples(args.eval, args), step_tokenizer) if args.eval else None
    for row in train_data.skipped:
        print(f"fastprm train: skipped training row {row.source_row}: {row.reason}", file=sys.stderr)
    if len(train_data) == 0:
        raise ValueError(f"--data {args.data}: no training row fits in max_length={max_length}")
    return train_data, eval_data


def training_arguments(args: argparse.Namespace, has_eval: bool):
    from .training import PRMTrainingArguments

    return PRMTrainingArguments(
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
        eval_strategy="steps" if has_eval else "no",
        eval_steps=args.eval_steps,
        save_steps=args.save_steps,
        logging_steps=args.logging_steps,
        warmup_steps=args.warmup,
        lr_scheduler_type=args.lr_scheduler,
        weight_decay=args.weight_decay,
        seed=args.seed,
        bf16=args.dtype == "bfloat16",
        report_to=[],
        # Length grouping only saves padding; packed batches have none, so they draw rows at random.
        train_sampling_strategy="random" if args.packed else "group_by_length",
    )


def train(args: argparse.Namespace) -> int:
    import torch
    from transformers import set_seed

    from .training import PRMTrainer

    try:
        check_options(args)
        set_seed(args.seed)  # before the model: a new model's random weights come from --seed too
        prm = load_model(args.model, getattr(torch, args.dtype))
        train_data, eval_data = datasets(args, prm)
        training_args = training_arguments(args, eval_data is not None)
    except (ValueError, OSError, RuntimeError) as err:
        # Bad data (file, row, format, a reader's missing package), a broken checkpoint or model JSON.
        raise _fail(one_line(err)) from None
    if args.lora_r:
        prm = add_lora(prm, args.lora_r, args.lora_alpha)
    if args.gradient_checkpointing:
        prm.activation_checkpointing_enable()
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
