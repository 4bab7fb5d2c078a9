"""Reading and writing the tensors of Hugging Face-format checkpoint directories (safetensors)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint directory fastprm cannot load; the one-line message names the directory."""


@contextlib.contextmanager
def checkpoint_errors(path: Path) -> Iterator[None]:
    """Turns whatever loading ``path`` raises (transformers, safetensors and tokenizer errors included) into
    a :class:`CheckpointError` whose message is one line naming the directory; the original is chained."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as err:  # every library raises its own kinds; each becomes one readable line
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = lines[0] if lines else type(err).__name__
        message = reason if reason.startswith(str(path)) else f"{path}: {reason}"
        raise CheckpointError(message) from err


def load_config(path: Path):
    """The backbone's transformers config (config.json; no remote code)."""
    from transformers import AutoConfig

    if not (path / "config.json").exists():
        raise CheckpointError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    return AutoConfig.from_pretrained(path, trust_remote_code=False)


def _files_by_tensor(path: Path) -> dict[str, Path]:
    index = path / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    single = path / SINGLE_FILE
    if not single.exists():
        raise ValueError(f"{path} has neither {SINGLE_FILE} nor {INDEX_FILE}")
    with safe_open(single, framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


def read_tensors(path: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor whose name starts with ``prefix + "."``, keyed by the rest of its name."""
    path = Path(path)
    wanted = {name: file for name, file in _files_by_tensor(path).items() if name.startswith(prefix + ".")}
    out: dict[str, torch.Tensor] = {}
    for file in sorted(set(wanted.values())):
        with safe_open(file, framework="pt") as f:
            for name in (n for n, fl in wanted.items() if fl == file):
                out[name[len(prefix) + 1 :]] = f.get_tensor(name)
    return out


def tensor_names(path: str | Path) -> set[str]:
    return set(_files_by_tensor(Path(path)))


# Tokenizer classes that mean "exactly what tokenizer.json says" rather than a model family's tokenizer.
_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(path: str | Path):
    """The tokenizer saved in ``path``, exactly as saved.

    ``AutoTokenizer`` lets a directory's config.json pick the tokenizer class: a generic tokenizer (e.g. a
    word-level one trained for a new model) saved next to a Qwen2 config would be rebuilt as a Qwen2 BPE
    tokenizer and silently drop words. Generic tokenizers are therefore loaded from tokenizer.json as is.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(path) / "tokenizer_config.json"
    declared = json.loads(config.read_text()).get("tokenizer_class") if config.exists() else None
    files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((Path(path) / f).exists() for f in files):
        raise CheckpointError(f"{path} has no tokenizer files (none of {', '.join(files)})")
    if declared in _GENERIC_TOKENIZERS:
        return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def load_backbone(path: str | Path, head_prefix: str, **kwargs) -> torch.nn.Module:
    """``AutoModel.from_pretrained(path, **kwargs)`` with fastprm's own load check instead of transformers'
    load report, which lists every head tensor as UNEXPECTED on every PRM load.

    Raises when backbone weights are missing (they would be random: silent garbage scores); warns about
    unexpected tensors other than the head's (``head_prefix``) and a causal LM's ``lm_head``.
    """
    import logging
    import warnings

    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    # The load report and a tensor-parallel note that lists unsharded norms on every single-device load.
    quiet = [
        logging.getLogger(n)
        for n in ("transformers.modeling_utils", "transformers.distributed.tensor_parallel")
    ]
    levels = [logger.level for logger in quiet]
    bar = hf_logging.is_progress_bar_enabled()
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()  # a bar per load of a few tensors is noise in a scoring run
    try:
        backbone, info = AutoModel.from_pretrained(
            path, output_loading_info=True, trust_remote_code=False, **kwargs
        )
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
        if bar:
            hf_logging.enable_progress_bar()
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise CheckpointError(
            f"{path}: the checkpoint lacks {len(missing)} backbone tensors, e.g. {missing[:3]}"
        )
    ours = (head_prefix + ".", "lm_head.")
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.startswith(ours))
    if unexpected:
        warnings.warn(
            f"{path}: tensors neither backbone nor head were ignored: {unexpected[:5]}", stacklevel=2
        )
    return backbone
