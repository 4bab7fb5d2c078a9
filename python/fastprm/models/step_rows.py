"""Run the backbone's last token-wise modules only at the rows a PRM reads (the step rows).

A PRM uses the final hidden state of a handful of tokens per solution, yet a plain forward computes every
layer at every token. Earlier layers are needed everywhere (their keys and values feed later attention), and
so are the last layer's key and value projections, but the last layer's attention output projection and MLP
are token-wise and feed nothing but the final norm: computing them only at the step rows is exact. They are
about 90% of a Qwen2-family layer's FLOPs, so this saves ~22% of a 4-layer backbone and ~3.7% of a 24-layer one.

The layer's own modules run unchanged (any attention variant, any MLP); hooks on them shrink their input to
the step rows and scatter their output back, with zeros at the rows nobody reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def last_mlp(backbone: nn.Module) -> nn.Module | None:
    """The token-wise MLP of the backbone's last decoder layer (``layers[-1].mlp``), or None when the
    architecture does not follow that layout (the caller then runs the full last layer)."""
    layers = getattr(backbone, "layers", None)
    if (
        isinstance(layers, nn.ModuleList)
        and len(layers)
        and isinstance(getattr(layers[-1], "mlp", None), nn.Module)
    ):
        return layers[-1].mlp
    return None


def row_wise_modules(backbone: nn.Module) -> list[nn.Module]:
    """The last layer's modules that may run at the step rows only: its MLP and, when the layer has one, its
    attention output projection (``self_attn.o_proj``). Empty for other layouts."""
    mlp = last_mlp(backbone)
    if mlp is None:
        return []
    o_proj = getattr(getattr(backbone.layers[-1], "self_attn", None), "o_proj", None)
    return [mlp, *([o_proj] if isinstance(o_proj, nn.Module) else [])]


def compile_backbone(backbone: nn.Module) -> None:
    """``torch.compile(dynamic=True)`` of the backbone in place, layer by layer, leaving out the last layer
    (its step-row hooks change on every call and would force a recompilation each time)."""
    if last_mlp(backbone) is None:
        backbone.compile(dynamic=True)
        return
    for layer in backbone.layers[:-1]:
        layer.compile(dynamic=True)


@contextlib.contextmanager
def last_layer_at_rows(backbone: nn.Module, rows: torch.Tensor) -> Iterator[None]:
    """Within this context the :func:`row_wise_modules` of ``backbone`` compute only the flat rows ``rows``
    [K] (int64) of their [B, T, H] input; their other output rows are zeros, so only those rows of the final
    hidden states are valid. A no-op for architectures without a recognised last MLP."""
    shape: list[torch.Size] = []

    def gather(module, args):
        (x, *rest) = args
        shape.append(x.shape)
        return (x.reshape(-1, x.shape[-1])[rows].unsqueeze(0), *rest)

    def scatter(module, args, out):
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{type(module).__name__} returned {type(out).__name__}, not a tensor")
        full = shape.pop()
        flat = out.new_zeros(full.numel() // full[-1], out.shape[-1])
        return flat.index_copy(0, rows, out[0]).reshape(*full[:-1], out.shape[-1])

    handles = []
    for module in row_wise_modules(backbone):
        handles += [module.register_forward_pre_hook(gather), module.register_forward_hook(scatter)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
