"""Run the backbone's last layer past its attention only at the rows a PRM reads (the step rows).

A PRM reads the final hidden state of a handful of tokens per solution, yet a plain forward computes every
layer at every token. Earlier layers are needed everywhere (their keys and values feed later attention), and
so is the last layer's attention (every token's keys and values). Everything after it is token-wise and feeds
nothing but the rows read: the attention output projection, the residual adds, the post-attention norm, the
MLP and the backbone's final norm. Computing them only at the step rows is exact, and the backbone then
returns the step rows' final hidden states directly, [1, K, H] in step order: nothing is scattered back into
an [N, H] tensor and the final norm runs on K rows.

This needs the decoder layer's own code path, so it covers the pre-norm layout of the Llama family
(``input_layernorm -> self_attn (o_proj) -> + residual -> post_attention_layernorm -> mlp -> + residual``):
:data:`STEP_ROW_LAYERS`. Other architectures run their full last layer and the caller gathers the rows.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

# Decoder layers whose forward is exactly the pre-norm layout above (tested against the full forward).
STEP_ROW_LAYERS = frozenset(
    {"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer"}
)


def step_row_layer(backbone: nn.Module) -> nn.Module | None:
    """The backbone's last decoder layer when it is one of :data:`STEP_ROW_LAYERS`, else None."""
    layers = getattr(backbone, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) and type(layers[-1]).__name__ in STEP_ROW_LAYERS:
        return layers[-1]
    return None


def compile_backbone(backbone: nn.Module) -> None:
    """``torch.compile(dynamic=True)`` of the backbone in place, layer by layer, leaving out the step-row
    last layer (its row count changes on every call, which would force a recompilation each time). What
    compiles is the layer's norms, projections, rotary embedding and MLP, fused by inductor; fastprm's varlen
    attention and oneDNN linear layers run eagerly between them (both are excluded from tracing)."""
    if step_row_layer(backbone) is None:
        backbone.compile(dynamic=True)
        return
    for layer in backbone.layers[:-1]:
        layer.compile(dynamic=True)


def uncompile_backbone(backbone: nn.Module) -> None:
    """Undoes :func:`compile_backbone`: every module runs eagerly again."""
    for module in backbone.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None  # what nn.Module.compile sets


def _forward_at_rows(
    layer: nn.Module, rows: torch.Tensor, hidden_states: torch.Tensor, **kwargs
) -> torch.Tensor:
    """The pre-norm decoder layer's forward with its output computed at the flat rows ``rows`` [K] (int64) of
    ``hidden_states`` [B, T, H] only: returns [1, K, H]. ``kwargs`` are the layer's (mask, positions, cache)."""

    def attention_output_at_rows(module, args):
        (x, *rest) = args
        return (x.reshape(-1, x.shape[-1])[rows].unsqueeze(0), *rest)

    handle = layer.self_attn.o_proj.register_forward_pre_hook(attention_output_at_rows)
    try:
        attention, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), **kwargs)
    finally:
        handle.remove()
    residual = hidden_states.reshape(-1, hidden_states.shape[-1])[rows].unsqueeze(0) + attention
    return residual + layer.mlp(layer.post_attention_layernorm(residual))


def rows_of(layer: nn.Module) -> torch.Tensor | None:
    """The flat rows [K] ``layer`` computes within :func:`last_layer_at_rows`, or None outside it."""
    forward = layer.__dict__.get("forward")
    if isinstance(forward, functools.partial) and forward.func is _forward_at_rows:
        return forward.args[1]
    return None


@contextlib.contextmanager
def last_layer_at_rows(backbone: nn.Module, rows: torch.Tensor) -> Iterator[bool]:
    """Within this context the backbone's last layer computes only the flat rows ``rows`` [K] (int64) of its
    [B, T, H] input, so the backbone's last hidden state is [1, K, H]. Yields whether it does: False (and
    nothing changes) for architectures outside :data:`STEP_ROW_LAYERS`.

    Under activation checkpointing the last layer is not checkpointed within the context (its recompute in
    backward would run outside it); its activations are kept instead, one layer's worth.
    """
    layer = step_row_layer(backbone)
    if layer is None:
        yield False
        return
    checkpointed = getattr(layer, "gradient_checkpointing", False)
    layer.forward = functools.partial(_forward_at_rows, layer, rows)
    layer.gradient_checkpointing = False
    try:
        yield True
    finally:
        del layer.forward
        layer.gradient_checkpointing = checkpointed
