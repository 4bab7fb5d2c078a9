"""``PRM``: a transformers backbone + a PRM head + the step tokenizer of its convention."""

from __future__ import annotations

import importlib.util
import inspect
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..ops import StepScores, score_steps
from . import varlen_attention
from .checkpoint import load_backbone, load_tokenizer, read_tensors, tensor_names
from .conventions import CONVENTIONS, FASTPRM_CONFIG, LINEAR, LM_PAIR, MLP, Convention, get_convention
from .cpu_bf16 import bf16_matmuls, native_bf16
from .heads import build_head
from .step_rows import last_layer_at_rows


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU or a CPU with native bf16 math (AVX512-BF16 / AMX), else fp32."""
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if native_bf16() else torch.float32


def default_attention(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> str | None:
    """fastprm's varlen attention on CPU (packed batches cost sum(L^2), never N^2); on GPUs flash-attention 2
    when it is installed and the dtype is 16-bit (it runs packed varlen batches natively), else transformers'
    own choice."""
    if device.type == "cpu":
        return varlen_attention.register()
    half = dtype in (torch.float16, torch.bfloat16)
    return "flash_attention_2" if half and importlib.util.find_spec("flash_attn") else None


class PRM(nn.Module):
    """A process reward model: backbone hidden states -> head -> per-step probabilities.

    Build with :meth:`from_pretrained`; score with :meth:`score` (see :mod:`fastprm.scoring`).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, convention: Convention, tokenizer=None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.convention = convention
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    # -- loading and saving -------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        convention: str = "auto",
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        *,
        separator: str | None = None,
        good_token: str | None = None,
        bad_token: str | None = None,
        template: str | None = None,
        positive_class: int | None = None,
        system_prompt: str | None = None,
        attn_implementation: str | None = None,
    ) -> PRM:
        """Loads a local Hugging Face-format PRM directory (config.json, safetensors, tokenizer files).

        Args:
            path: checkpoint directory.
            convention: ``auto`` (read from the config), ``qwen2.5-math-prm``, ``math-shepherd``,
                ``token-classification``, ``value-head`` or ``fastprm``.
            dtype: backbone dtype; default bf16 where the device has native bf16, else fp32.
            device: default CPU.
            separator, good_token, bad_token, template, positive_class, system_prompt: override the
                convention's defaults.
            attn_implementation: the backbone's attention; default :func:`default_attention` of the device.
        """
        from transformers import AutoConfig

        path = Path(path)
        conv = get_convention(convention, path).with_overrides(
            separator=separator,
            good_token=good_token,
            bad_token=bad_token,
            template=template,
            positive_class=positive_class,
            system_prompt=system_prompt,
        )
        device = torch.device(device or "cpu")
        dtype = dtype or default_dtype(device)
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        backbone = load_backbone(
            path,
            conv.head_prefix,
            config=config,
            dtype=dtype,
            trust_remote_code=False,
            attn_implementation=attn_implementation or default_attention(device, dtype),
        )
        tokenizer = load_tokenizer(path)
        head = _load_head(path, conv, config.hidden_size, tokenizer)
        model = cls(backbone, head.to(dtype), conv, tokenizer).to(device)
        return model.eval()

    @classmethod
    def from_config(
        cls,
        backbone_config: dict,
        tokenizer,
        convention: str | Convention = "token-classification",
        num_classes: int | None = None,
        dtype: torch.dtype = torch.float32,
        attn_implementation: str | None = None,
    ) -> PRM:
        """A new PRM with random weights (training from scratch).

        Args:
            backbone_config: a transformers config as a dict with its ``model_type`` (e.g. ``qwen2``).
            tokenizer: a tokenizer object or a directory to load one from.
            convention: a built-in convention name or a :class:`Convention`.
            num_classes: head outputs; default 1 for a value head, else 2.
            attn_implementation: the backbone's attention; default :func:`default_attention` of the CPU.
        """
        from transformers import AutoConfig, AutoModel

        conv = CONVENTIONS[convention] if isinstance(convention, str) else convention
        if isinstance(tokenizer, (str, Path)):
            tokenizer = load_tokenizer(tokenizer)
        fields = dict(backbone_config)
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        backbone = AutoModel.from_config(
            config,
            dtype=dtype,
            attn_implementation=attn_implementation or default_attention(torch.device("cpu")),
        )
        if num_classes is None:
            num_classes = 1 if conv.name == "value-head" else 2
        head = build_head(conv, config.hidden_size, num_classes).to(dtype)
        return cls(backbone, head, conv, tokenizer)

    def save_pretrained(self, path: str | Path, format: str = "fastprm") -> None:
        """Writes the model as a checkpoint directory.

        ``format="fastprm"``: backbone (``model.*``) and head (``head.*``) in safetensors, the backbone config,
        the tokenizer and ``fastprm_config.json`` (head kind, separator, template, positive class).
        ``format="original"``: the on-disk layout of the convention's own family (Qwen2.5-Math-PRM
        ``score.0`` / ``score.2``, token-classification ``score``, value-head ``v_head.summary``), loadable
        with ``convention="auto"`` and by the family's own code.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = self.backbone.config
        tensors = {f"model.{k}": v for k, v in self.backbone.state_dict().items()}
        if format == "fastprm":
            tensors.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
            own = {
                "convention": {**self.convention.to_json(), "head_prefix": "head"},
                "num_classes": self.num_classes,
            }
            (path / FASTPRM_CONFIG).write_text(json.dumps(own, indent=2) + "\n")
        elif format == "original":
            prefix, architecture, names = _original_layout(self.convention, self.num_classes)
            tensors.update({f"{prefix}.{names.get(k, k)}": v for k, v in self.head.state_dict().items()})
            config.architectures = [type(self.backbone).__name__.removesuffix("Model") + architecture]
            config.num_labels = self.num_classes
        else:
            raise ValueError(f"format must be 'fastprm' or 'original', got {format!r}")
        config.save_pretrained(path)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            path / "model.safetensors",
            metadata={"format": "pt"},
        )
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)

    @property
    def num_classes(self) -> int:
        return self.head.out.weight.shape[0]

    # -- forward ------------------------------------------------------------------------------------------------

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prefix=None,
        **kwargs,
    ) -> torch.Tensor:
        """Last hidden states of the backbone (no LM head): [B, T, H].

        ``prefix``: a :meth:`prefix_cache` of tokens that come before ``input_ids`` (one unpadded row, B = 1);
        the row attends to them as if they led it, and the cache is left as it was.
        """
        if prefix is not None:
            kwargs[_cache_argument(self.backbone)] = prefix
            prefix_length = prefix.get_seq_length()
        with bf16_matmuls(self.device, self.dtype):
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        if prefix is not None and (appended := prefix.get_seq_length() - prefix_length):
            prefix.crop(-appended)  # drops what this row appended (a negative count in every transformers)
        return out.last_hidden_state

    def prefix_cache(self, prefix_ids: torch.Tensor):
        """Keys and values of a token prefix [1, P] that many rows share (a system prompt, a problem scored
        with many solutions), for :meth:`hidden_states` ``(..., prefix=...)``: it is computed once, and each
        row then runs only its own tokens. A transformers ``Cache``."""
        with bf16_matmuls(self.device, self.dtype):
            out = self.backbone(input_ids=prefix_ids, use_cache=True)
        return out.cache if hasattr(out, "cache") else out.past_key_values

    def step_hidden_states(
        self,
        input_ids: torch.Tensor,
        rows: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Final hidden states [K, H] at ``rows`` [K] (int64 flat positions of the [B * T] tokens), e.g. the
        step rows. Cheaper than :meth:`hidden_states`: the last layer's output projection and MLP run at
        those rows only (:mod:`fastprm.models.step_rows`). ``kwargs`` go to :meth:`hidden_states`."""
        with last_layer_at_rows(self.backbone, rows):
            hidden = self.hidden_states(input_ids, attention_mask, **kwargs)
        return hidden.reshape(-1, hidden.shape[-1])[rows]

    def score_hidden(
        self, hidden: torch.Tensor, step_index: torch.Tensor, cu_steps: torch.Tensor, threshold: float = 0.5
    ) -> StepScores:
        """Fused head + per-sequence reductions over the step rows of [N, H] hidden states."""
        with bf16_matmuls(self.device, self.dtype):
            rows, row_index, weight, bias = self.head.project(hidden, step_index)
        return score_steps(
            rows,
            weight,
            bias,
            step_index=row_index,
            cu_steps=cu_steps,
            positive_class=self.convention.positive_class,
            threshold=threshold,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        step_index: torch.Tensor,
        cu_steps: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward: [B, T] ids -> (step_logits [K, C], step_probs [K]) for the given step rows.

        ``step_index`` holds flat rows of the [B * T] hidden states; no per-token logits are computed. For a
        packed varlen batch pass input_ids [1, N] with ``position_ids`` restarting at 0 for every row and no
        mask (see :func:`fastprm.packing.pack_rows`).
        """
        extra = {} if position_ids is None else {"position_ids": position_ids}
        hidden = self.hidden_states(input_ids, attention_mask, **extra)
        scores = self.score_hidden(hidden.reshape(-1, hidden.shape[-1]), step_index, cu_steps)
        return scores.step_logits, scores.step_probs

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **options):
        """Recomputes backbone activations in backward; what ``Trainer`` calls for
        ``gradient_checkpointing=True``. Non-reentrant by default, so a frozen embedding (LoRA) is fine."""
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        if hasattr(self.backbone, "activation_checkpointing_enable"):  # transformers >= 5.x
            self.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, **options)
        else:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **options):
        """The older transformers name of :meth:`activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **options)

    def score(self, problems: Sequence[str], solutions: Sequence[Sequence[str]], **kwargs):
        """Scores solutions step by step; see :class:`fastprm.scoring.Scorer` for the options."""
        from ..scoring import Scorer

        return Scorer(self, **{k: kwargs.pop(k) for k in list(kwargs) if k in Scorer.OPTIONS}).score(
            problems, solutions, **kwargs
        )


def _cache_argument(backbone: nn.Module) -> str:
    """The backbone forward's KV-cache argument: ``cache`` in recent transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


def _original_layout(convention: Convention, num_classes: int) -> tuple[str, str, dict[str, str]]:
    """(head prefix, architecture suffix, head-parameter renames) of a family's own checkpoints."""
    linear = {"out.weight": "weight", "out.bias": "bias"}
    if convention.head == MLP:
        return (
            "score",
            "ForProcessRewardModel",
            {
                "hidden.weight": "0.weight",
                "hidden.bias": "0.bias",
                "out.weight": "2.weight",
                "out.bias": "2.bias",
            },
        )
    if convention.head == LINEAR and num_classes == 2:
        return "score", "ForTokenClassification", linear
    if convention.head == LINEAR and num_classes == 1:
        return "v_head.summary", "ForPrmModel", linear
    raise ValueError(
        f"the {convention.name} convention has no original layout fastprm can write: its head is two rows of "
        "the LM head; save in the fastprm format instead"
    )


def _load_head(path: Path, conv: Convention, hidden_size: int, tokenizer) -> nn.Module:
    prefix = conv.head_prefix
    own = path / FASTPRM_CONFIG
    if conv.head == LM_PAIR:
        good_id, bad_id = lm_pair_token_ids(tokenizer, conv)
        names = tensor_names(path)
        source = prefix if f"{prefix}.weight" in names else "model.embed_tokens"  # tied embeddings
        weight = read_tensors(path, source)["weight"]
        head = build_head(conv, hidden_size, 2)
        head.out.weight.data.copy_(weight[[good_id, bad_id]])
        return head
    tensors = read_tensors(path, prefix)
    if not tensors:
        raise ValueError(f"{path} has no head weights under '{prefix}.*' for convention {conv.name}")
    if conv.head == MLP:
        num_classes = (
            tensors["2.weight"].shape[0] if "2.weight" in tensors else tensors["out.weight"].shape[0]
        )
        head = build_head(conv, hidden_size, num_classes)
        renamed = {
            "0.weight": "hidden.weight",
            "0.bias": "hidden.bias",
            "2.weight": "out.weight",
            "2.bias": "out.bias",
        }
        head.load_state_dict({renamed.get(k, k): v for k, v in tensors.items()})
        return head
    if conv.head == LINEAR:
        key = "weight" if "weight" in tensors else "out.weight"
        head = build_head(conv, hidden_size, tensors[key].shape[0])
        head.load_state_dict({("out." + k if not k.startswith("out.") else k): v for k, v in tensors.items()})
        return head
    raise ValueError(f"unknown head kind {conv.head!r} in {own if own.exists() else path}")


def lm_pair_token_ids(tokenizer, conv: Convention) -> tuple[int, int]:
    """Vocabulary ids of the good and bad tokens, as the Math-Shepherd card derives them: the ids of
    ``"{good} {bad}"`` without special tokens (so '+' and '-' carry their word-boundary piece)."""
    ids = tokenizer(f"{conv.good_token} {conv.bad_token}", add_special_tokens=False)["input_ids"]
    if len(ids) != 2:
        raise ValueError(
            f"good_token={conv.good_token!r} and bad_token={conv.bad_token!r} should be one token each, got ids {ids}"
        )
    return ids[0], ids[1]
