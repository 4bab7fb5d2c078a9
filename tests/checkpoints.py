"""Tiny random-weight PRM checkpoints written in the exact on-disk format of each checkpoint family.

Tokenizers are the real Qwen2 and Mistral tokenizers from ../shared/data (tests skip when it is absent).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
QWEN_TOKENIZER = DATA / "tokenizers" / "qwen2"
MISTRAL_TOKENIZER = DATA / "tokenizers" / "mistral_v1" / "tokenizer.model.v1"

QWEN_PRM_AUTO_MAP = {
    "AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
    "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel",
}


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return path


def qwen_tokenizer(out: Path, extra_special: tuple[str, ...] = (), bos: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(require(QWEN_TOKENIZER))
    if extra_special:
        tok.add_tokens(list(extra_special), special_tokens=True)
    if bos:
        tok.bos_token = bos
    tok.save_pretrained(out)
    return tok


def mistral_tokenizer(out: Path):
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(require(MISTRAL_TOKENIZER), out / "tokenizer.model")
    config = {
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "legacy": True,
    }  # fmt: skip
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    tok = AutoTokenizer.from_pretrained(out)
    tok.save_pretrained(out)
    return tok


def implicit_prm_pair(out: Path):
    """The real Qwen2 tokenizer (saved in ``out``) and two tiny random Qwen2 causal LMs (seeds 0 and 1): an
    implicit PRM's policy and reference."""
    from transformers import Qwen2ForCausalLM

    tok = qwen_tokenizer(out)
    config = tiny_qwen2_config(len(tok))
    pair = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        pair.append(Qwen2ForCausalLM(config).eval())
    return tok, *pair


def tiny_qwen2_config(vocab_size: int, **overrides):
    from transformers import Qwen2Config

    kw = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    kw.update(overrides)
    return Qwen2Config(**kw)


def _write(
    out: Path, config, backbone, extra: dict[str, torch.Tensor], architectures: list[str], **config_fields
):
    """config.json + model.safetensors with the backbone under ``model.`` plus the head tensors."""
    config.architectures = architectures
    for k, v in config_fields.items():
        setattr(config, k, v)
    config.save_pretrained(out)
    tensors = {f"model.{k}": v for k, v in backbone.state_dict().items()}
    tensors.update(extra)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, out / "model.safetensors", metadata={"format": "pt"}
    )


def write_qwen25_math_prm(out: Path, seed: int = 0):
    """Qwen2.5-Math-PRM layout: Qwen2 backbone, `score.0` Linear(H, H), ReLU, `score.2` Linear(H, 2)."""
    from transformers import Qwen2Model

    torch.manual_seed(seed)
    tok = qwen_tokenizer(out, extra_special=("<extra_0>",))
    config = tiny_qwen2_config(len(tok))
    backbone = Qwen2Model(config)
    H = config.hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(H, H), torch.nn.ReLU(), torch.nn.Linear(H, 2))
    extra = {f"score.{k}": v for k, v in head.state_dict().items()}
    _write(out, config, backbone, extra, ["Qwen2ForProcessRewardModel"], auto_map=QWEN_PRM_AUTO_MAP)
    return backbone.eval(), head.eval(), tok


def write_qwen25_math_prm_head64(out: Path, seed: int = 0):
    """The Qwen2.5-Math-PRM layout with 64-wide heads (vLLM's CPU attention takes no narrower ones) and
    weights drawn in a fixed order from one seeded generator rather than by transformers' initialisers, so
    the same bits come out wherever this torch runs: tests compare fastprm's server against an exchange
    recorded from vLLM's server on this checkpoint (``tests/fixtures/``)."""
    from transformers import Qwen2Model

    tok = qwen_tokenizer(out, extra_special=("<extra_0>",))
    config = tiny_qwen2_config(
        len(tok), hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1
    )
    backbone = Qwen2Model(config)
    H = config.hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(H, H), torch.nn.ReLU(), torch.nn.Linear(H, 2))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (backbone, head):
            for name, param in sorted(module.named_parameters()):
                noise = torch.randn(param.shape, generator=generator)
                param.copy_(1 + 0.1 * noise if name.endswith("norm.weight") else 0.05 * noise)
    extra = {f"score.{k}": v for k, v in head.state_dict().items()}
    _write(out, config, backbone, extra, ["Qwen2ForProcessRewardModel"], auto_map=QWEN_PRM_AUTO_MAP)
    return backbone.eval(), head.eval(), tok


def weights_digest(path: Path) -> str:
    """sha256 over a checkpoint's tensors (names, dtypes, shapes and bytes), in name order."""
    import hashlib

    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(path / "model.safetensors").items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_math_shepherd(out: Path, seed: int = 0):
    """Math-Shepherd layout: a plain MistralForCausalLM saved by transformers."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    tok = mistral_tokenizer(out)
    config = MistralConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
    )  # fmt: skip
    model = MistralForCausalLM(config).eval()
    model.save_pretrained(out)
    return model, tok


def write_token_classification(out: Path, seed: int = 0):
    """TRL PRM layout: Qwen2ForTokenClassification (num_labels=2) saved by transformers."""
    from transformers import Qwen2ForTokenClassification

    torch.manual_seed(seed)
    tok = qwen_tokenizer(out)
    model = Qwen2ForTokenClassification(tiny_qwen2_config(len(tok), num_labels=2)).eval()
    model.save_pretrained(out)
    return model, tok


def write_value_head(out: Path, seed: int = 0):
    """Skywork-o1-Open-PRM layout: Qwen2 backbone + `v_head.summary` Linear(H, 1), tied embeddings."""
    from transformers import Qwen2Model

    torch.manual_seed(seed)
    tok = qwen_tokenizer(out, bos="<|endoftext|>")
    config = tiny_qwen2_config(len(tok), tie_word_embeddings=True, bos_token_id=tok.bos_token_id)
    backbone = Qwen2Model(config)
    v_head = torch.nn.Linear(config.hidden_size, 1)
    extra = {f"v_head.summary.{k}": v for k, v in v_head.state_dict().items()}
    _write(out, config, backbone, extra, ["Qwen2ForPrmModel"])
    return backbone.eval(), v_head.eval(), tok
