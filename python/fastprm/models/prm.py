"""``PRM``: a transformers backbone + a PRM head + the step tokenizer of its convention."""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import inspect
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import nn

from ..ops import StepScores, score_steps
from ..tokenization import StepTokenizer
from . import varlen_attention
from .checkpoint import checkpoint_errors, load_backbone, load_config, load_tokenizer
from .conventions import CONVENTIONS, FASTPRM_CONFIG, Convention, get_convention, saved_by_fastprm
from .cpu_bf16 import native_bf16
from .fused_layers import fused_layers
from .gemm_routes import default_gemm_route, route_gemms
from .heads import Head, build_head, head_class
from .step_rows import last_layer_at_rows

if TYPE_CHECKING:
    from ..scoring import SolutionScores
    from ..sessions import StepSession

# fastprm's own format keeps the head under this prefix, with fastprm's parameter names.
FASTPRM_HEAD_PREFIX = "head"


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


_THREAD_CHECK = threading.Lock()  # guards PRM._one_thread's owner check and update


class PRM(nn.Module):
    """A process reward model: backbone hidden states at the step rows -> head -> per-step probabilities.

    Build with :meth:`from_pretrained` (a checkpoint directory) or :meth:`from_config` (random weights);
    score with :meth:`score` (see :class:`fastprm.scoring.Scorer`); train with
    :class:`fastprm.training.PRMTrainer`, which calls :meth:`forward`.
    """

    def __init__(self, backbone: nn.Module, head: Head, convention: Convention, tokenizer=None):
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

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

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
                ``token-classification``, ``value-head`` or ``fastprm`` (fastprm's own format only).
            dtype: backbone dtype; default bf16 where the device has native bf16, else fp32.
            device: default CPU.
            separator, good_token, bad_token, template, positive_class, system_prompt: override the
                convention's defaults.
            attn_implementation: the backbone's attention; default :func:`default_attention` of the device.

        Raises:
            fastprm.models.checkpoint.CheckpointError: a ValueError with a one-line message naming the directory, for any checkpoint
                problem (no config, unknown architecture, missing, half or corrupt weights, no tokenizer, a
                tokenizer without the convention's special separator, an LM head neither stored nor tied).
        """
        path = Path(path)
        with checkpoint_errors(path):
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
            config = load_config(path)
            own_format = saved_by_fastprm(path)
            head_prefix = FASTPRM_HEAD_PREFIX if own_format else conv.head_prefix
            backbone = load_backbone(
                path,
                head_prefix,
                config=config,
                dtype=dtype,
                attn_implementation=attn_implementation or default_attention(device, dtype),
            )
            tokenizer = load_tokenizer(path)
            StepTokenizer(tokenizer, conv)  # refuses a tokenizer that cannot spell the convention's steps
            head = head_class(conv).from_checkpoint(path, head_prefix, conv, config, tokenizer)
        return cls(backbone, head.to(dtype), conv, tokenizer).to(device).eval()

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
        the tokenizer and ``fastprm_config.json`` (the convention: head kind, separator, template, positive
        class). ``format="original"``: the on-disk layout of the convention's own family (Qwen2.5-Math-PRM
        ``score.0`` / ``score.2``, token-classification ``score``, value-head ``v_head.summary``), loadable
        with ``convention="auto"`` and by the family's own code; an LM-pair head has none.
        """
        path = Path(path)
        config = self.backbone.config
        tensors = {f"model.{k}": v for k, v in self.backbone.state_dict().items()}
        files: dict[str, str] = {}  # more files of the format: name -> text
        if format == "fastprm":
            tensors.update({f"{FASTPRM_HEAD_PREFIX}.{k}": v for k, v in self.head.state_dict().items()})
            own = {"convention": self.convention.to_json(), "num_classes": self.num_classes}
            files[FASTPRM_CONFIG] = json.dumps(own, indent=2) + "\n"
        elif format == "original":
            family = CONVENTIONS.get(self.convention.name)
            if family is None:
                raise ValueError(
                    f"the {self.convention.name} convention has no original layout; use format='fastprm'"
                )
            tensors.update({f"{family.head_prefix}.{k}": v for k, v in self.head.original_tensors().items()})
            config.architectures = [
                type(self.backbone).__name__.removesuffix("Model") + family.architectures[0]
            ]
            config.num_labels = self.num_classes
        else:
            raise ValueError(f"format must be 'fastprm' or 'original', got {format!r}")
        path.mkdir(parents=True, exist_ok=True)  # only once the format's layout is known to exist
        for name, text in files.items():
            (path / name).write_text(text)
        config.save_pretrained(path)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            path / "model.safetensors",
            metadata={"format": "pt"},
        )
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)

    # -- forward ------------------------------------------------------------------------------------------------

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prefix=None,
        gemm_route: str | None = None,
        fused: bool = False,
        **kwargs,
    ) -> torch.Tensor:
        """Last hidden states of the backbone (no LM head): [B, T, H] (or [1, K, H] within
        :func:`~fastprm.models.step_rows.last_layer_at_rows`).

        ``prefix``: a :meth:`prefix_cache` of tokens that come before ``input_ids`` (one unpadded row, B = 1);
        the row attends to them as if they led it, and the cache is left as it was. ``gemm_route``: how the
        matmuls run (:mod:`fastprm.models.gemm_routes`); default :func:`default_gemm_route`. ``fused``: run the
        decoder layers hand-fused (:mod:`fastprm.models.fused_layers`; where they apply).
        """
        if prefix is not None:
            kwargs[_cache_argument(type(self.backbone))] = prefix
            prefix_length = prefix.get_seq_length()
        with self._one_thread(), self._gemm_route(gemm_route, fused):
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        if prefix is not None and (appended := prefix.get_seq_length() - prefix_length):
            prefix.crop(-appended)  # drops what this row appended (a negative count in every transformers)
        return out.last_hidden_state

    def prefix_cache(
        self, prefix_ids: torch.Tensor, after=None, gemm_route: str | None = None, fused: bool = False
    ):
        """Keys and values of a token prefix [1, P] that many rows share (a problem scored with many
        solutions), for :meth:`hidden_states` / :meth:`step_hidden_states` ``(..., prefix=...)``: it is
        computed once, and each row then runs only its own tokens. A transformers ``Cache``. ``after``: the
        cache of tokens that come before the prefix (a chat header cached once); the result holds both, and
        ``after`` is copied, never changed. Nothing reads the prefix's own outputs, so its last layer stops
        after attention (zero step rows)."""
        no_rows = torch.empty(0, dtype=torch.long, device=prefix_ids.device)
        earlier = {} if after is None else {_cache_argument(type(self.backbone)): copy.deepcopy(after)}
        # No gradients: a cache serves scoring, and its tensors must be copyable (``after``).
        with (
            torch.no_grad(),
            self._one_thread(),
            last_layer_at_rows(self.backbone, no_rows),
            self._gemm_route(gemm_route, fused),
        ):
            out = self.backbone(input_ids=prefix_ids, use_cache=True, **earlier)
        return out.cache if hasattr(out, "cache") else out.past_key_values

    def step_hidden_states(
        self,
        input_ids: torch.Tensor,
        rows: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Final hidden states [K, H] at ``rows`` [K] (int64 flat positions of the [B * T] tokens), e.g. the
        step rows. The last layer computes past its attention at those rows only
        (:mod:`fastprm.models.step_rows`); other architectures run it in full and the rows are gathered.
        ``kwargs`` go to :meth:`hidden_states` (``position_ids``, ``prefix``, ``gemm_route``, ``fused``)."""
        with self._one_thread(), last_layer_at_rows(self.backbone, rows) as at_rows:
            hidden = self.hidden_states(input_ids, attention_mask, **kwargs)
        return hidden[0] if at_rows else hidden.reshape(-1, hidden.shape[-1])[rows]

    def packed_step_hidden_states(
        self,
        rows: Sequence[Sequence[int]],
        step_ends: Sequence[Sequence[int]],
        *,
        prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        prefix_spans: Sequence[tuple[int, int]] | None = None,
        capture: bool = False,
        gemm_route: str | None = None,
        fused: bool = False,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """Rows of token ids, each continuing its own span of cached keys and values, in one packed forward.

        Args:
            rows: B rows of new token ids.
            step_ends: per row, positions within the row whose final hidden states are wanted (step rows).
            prefix: per layer (keys, values) [P, Hkv, D] of earlier tokens (from ``capture``), or None.
            prefix_spans: per row (start, end) in ``prefix``: the tokens the row continues (its positions
                start at end - start). Default: no prefix.
            capture: also return every layer's (keys, values) [N, Hkv, D] of the rows' own tokens.
            gemm_route, fused: as :meth:`hidden_states`.

        Returns:
            (hidden [K, H] at the step rows, row by row; the captured keys and values or None).

        Needs fastprm's varlen attention (the CPU default, :func:`default_attention`): it is what reads the
        per-row prefix spans.
        """
        if getattr(self.backbone.config, "_attn_implementation", None) != varlen_attention.NAME:
            raise ValueError(
                "per-row prefixes (problem-shared scoring, sessions) need fastprm's varlen attention: load the "
                f"model with attn_implementation={varlen_attention.NAME!r}"
            )
        input_ids, position_ids, packed = varlen_attention.packed_inputs(
            [list(r) for r in rows], prefix, prefix_spans, capture, self.device
        )
        offsets = packed.cu_seqlens.tolist()
        step_rows = [offsets[b] + i for b, ends in enumerate(step_ends) for i in ends]
        hidden = self.step_hidden_states(
            input_ids,
            torch.tensor(step_rows, dtype=torch.long, device=self.device),
            position_ids=position_ids,
            gemm_route=gemm_route,
            fused=fused,
            **{varlen_attention.ROWS_KWARG: packed},
        )
        return hidden, packed.captured

    def score_step_rows(
        self, step_hidden: torch.Tensor, cu_steps: torch.Tensor, threshold: float = 0.5
    ) -> StepScores:
        """The head and the fused op over step rows: ``step_hidden`` [K, H] (from :meth:`step_hidden_states`)
        and ``cu_steps`` [B + 1] int64 offsets of each sequence's steps -> :class:`~fastprm.ops.StepScores`
        (the op's rows mode: its ``step_index`` is None)."""
        with self._one_thread(), self._gemm_route(None):
            rows, weight, bias = self.head.project(step_hidden)
        return score_steps(
            rows,
            weight,
            bias,
            cu_steps=cu_steps,
            positive_class=self.convention.positive_class,
            threshold=threshold,
        )

    @contextlib.contextmanager
    def _one_thread(self):
        """Refuses a second thread while one runs the model: a forward swaps module methods of the backbone
        (GEMM route, fused layers, the step-row last layer) for its own call, so two threads at once would
        run each other's layers and fail or, worse, return wrong numbers. Re-entered freely by its thread."""
        me = threading.get_ident()
        with _THREAD_CHECK:
            owner, depth = self.__dict__.get("_running_in", (None, 0))
            if owner not in (None, me):
                raise RuntimeError(
                    "this PRM is running in another thread: one thread at a time may use a PRM (or a Scorer "
                    "or session over it); give each thread its own PRM (fastprm serve --model-workers runs "
                    "model copies side by side)"
                )
            self.__dict__["_running_in"] = (me, depth + 1)
        try:
            yield
        finally:
            with _THREAD_CHECK:
                self.__dict__["_running_in"] = (me, depth) if depth else (None, 0)

    @contextlib.contextmanager
    def _gemm_route(self, route: str | None, fused: bool = False):
        """The context of GEMM route ``route`` (None: the default of the model's device and dtype), and of the
        fused decoder layers when ``fused``. Entered inside ``last_layer_at_rows``, whose rows the fused last
        layer keeps."""
        route = route or default_gemm_route(self.device, self.dtype)
        with route_gemms(self.backbone, route):
            if not fused:
                yield
                return
            with fused_layers(self.backbone, route):
                yield

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        step_index: torch.Tensor,
        cu_steps: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward: [B, T] ids -> (step_logits [K, C], step_probs [K]) for the given step rows.

        ``step_index`` holds flat rows of the [B * T] tokens; the backbone's last layer runs past its
        attention at those rows only and no per-token logits are computed. For a packed varlen batch pass
        input_ids [1, N] with ``position_ids`` restarting at 0 for every row and no mask (see
        :func:`fastprm.packing.pack_rows`).
        """
        extra = {} if position_ids is None else {"position_ids": position_ids}
        step_hidden = self.step_hidden_states(input_ids, step_index, attention_mask, **extra)
        scores = self.score_step_rows(step_hidden, cu_steps)
        return scores.step_logits, scores.step_probs

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **options):
        """Recomputes backbone activations in backward; what ``Trainer`` calls for
        ``gradient_checkpointing=True``. Non-reentrant by default, so a frozen embedding (LoRA) is fine. The
        step-row last layer is not recomputed (see :func:`~fastprm.models.step_rows.last_layer_at_rows`)."""
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        if hasattr(self.backbone, "activation_checkpointing_enable"):  # transformers >= 5.x
            self.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, **options)
        else:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **options):
        """The older transformers name of :meth:`activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **options)

    def session(
        self,
        problem: str,
        *,
        threshold: float = 0.5,
        max_length: int | None = None,
        gemm_route: str | None = None,
        fused: bool | None = None,
    ) -> StepSession:
        """An incremental scoring session of ``problem`` (see :mod:`fastprm.sessions`): its prompt runs now,
        and each :meth:`~fastprm.sessions.StepSession.add_step` runs only the new step's tokens.
        ``max_length``: longest session (default the backbone's ``max_position_embeddings``); ``gemm_route``,
        ``fused``: default the ones the Scorer's calibration chose (:func:`fastprm.tuning.tuned_plan`)."""
        from ..sessions import start_session

        return start_session(
            self, problem, threshold=threshold, max_length=max_length, gemm_route=gemm_route, fused=fused
        )

    def add_steps(self, sessions: Sequence[StepSession], texts: Sequence[str]) -> list[float]:
        """One new step for each of ``sessions`` (sessions of this model) in one backbone call: P(good) of
        each new step. See :func:`fastprm.sessions.add_steps`."""
        from ..sessions import add_steps

        if any(s.prm is not self for s in sessions):
            raise ValueError("every session must come from this model's session()")
        return add_steps(sessions, texts)

    def score(
        self, problems: Sequence[str], solutions: Sequence[Sequence[str]], **scorer_options
    ) -> list[SolutionScores]:
        """Scores solutions step by step: ``Scorer(self, **scorer_options).score(problems, solutions)``; the
        options are :class:`fastprm.scoring.Scorer`'s keyword arguments."""
        from ..scoring import Scorer

        return Scorer(self, **scorer_options).score(problems, solutions)


@functools.cache
def _cache_argument(backbone_type: type) -> str:
    """The backbone forward's KV-cache argument: ``cache`` in recent transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(backbone_type.forward).parameters else "past_key_values"
