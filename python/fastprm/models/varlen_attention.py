"""Variable-length attention for transformers backbones without flash-attention.

A packed [1, N] batch under transformers' SDPA path gets a dense N x N block-diagonal mask, so attention
costs N^2 and the block-diagonal structure is never exploited (measured: over half of a packed training step
of the demo model). Here each row (a packed segment, or a right-padded row) is attended on its own: sum(L^2)
work, no mask tensor, and padding is never attended to. On CPU without autograd, fastprm's varlen attention
kernel (:func:`fastprm.ops.varlen_attention`) does all rows in one call; elsewhere (training, GPU, CPUs
without a kernel) each row runs a mask-free causal SDPA.

A packed batch may also carry :class:`PackedRows` (the backbone's ``fastprm_rows`` keyword, which
transformers hands through to the attention): explicit row offsets, and per row a span of cached keys and
values that the row continues (its problem's prompt, or a session's earlier steps). This is how rows of
different prefixes share one backbone call.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ops.varlen_attention.cpu import kernel_applies, varlen_attention_cpu

NAME = "fastprm_varlen"
# The backbone keyword that carries PackedRows to the attention.
ROWS_KWARG = "fastprm_rows"


@dataclass
class PackedRows:
    """A packed [1, N] batch as fastprm's attention reads it.

    Attributes:
        cu_seqlens: [B + 1] int64 row offsets into the N tokens.
        prefix: per layer (keys, values), each [P, Hkv, D]: tokens the rows continue, or None.
        prefix_spans: [B, 2] int64 (start, end) of each row's prefix in ``prefix``, or None.
        captured: when a list, each layer appends its (keys, values) [N, Hkv, D] of the batch's own tokens
            (after rotary embedding): what a later call needs as its prefix.
    """

    cu_seqlens: torch.Tensor
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    prefix_spans: torch.Tensor | None = None
    captured: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def packed_inputs(
    rows: list[list[int]],
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None,
    prefix_spans: list[tuple[int, int]] | None,
    capture: bool,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, PackedRows]:
    """A backbone call's inputs for rows of new token ids, each continuing its own span of cached keys and
    values: (input_ids [1, N] int64, position_ids [1, N] int64, the :class:`PackedRows` to pass as
    ``ROWS_KWARG``). A row's positions start at its span's length; ``prefix_spans`` None: no prefix."""
    spans = list(prefix_spans) if prefix_spans is not None else [(0, 0)] * len(rows)
    lengths = [len(r) for r in rows]
    offsets = [0, *itertools.accumulate(lengths)]
    input_ids = torch.tensor([[t for r in rows for t in r]], dtype=torch.long, device=device)
    positions = [p for (s, e), n in zip(spans, lengths) for p in range(e - s, e - s + n)]
    packed = PackedRows(
        cu_seqlens=torch.tensor(offsets),
        prefix=prefix,
        prefix_spans=torch.tensor(spans, dtype=torch.long).reshape(-1, 2) if prefix is not None else None,
        captured=[] if capture else None,
    )
    return input_ids, torch.tensor([positions], dtype=torch.long, device=device), packed


def _row_segments(
    position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, batch: int, length: int
) -> list[list[tuple[int, int]]]:
    """[(start, end), ...] per batch row: packed rows from position_ids restarts, padded rows from the mask."""
    if attention_mask is not None:
        mask = attention_mask.bool()
        if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError("attention_mask: fastprm's varlen attention needs right-padded rows")
        return [[(0, int(n))] for n in mask.sum(1).tolist()]
    if position_ids is not None and batch == 1 and length > 1:
        restarts = (position_ids[0, 1:] != position_ids[0, :-1] + 1).nonzero().flatten() + 1
        bounds = [0, *restarts.tolist(), length]
        return [list(zip(bounds[:-1], bounds[1:]))]
    return [[(0, length)] for _ in range(batch)]


# Not traced by torch.compile: its per-row loop depends on the batch's row boundaries, so a compiled layer
# would recompile for every batch; the layer's other ops compile around it.
@torch.compiler.disable
def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function. query [B, Hq, T, D], key/value [B, Hkv, T, D] -> [B, T, Hq, D].

    ``attention_mask`` is the 2D [B, T] padding mask (or None), as transformers' flash-attention mask
    function hands it over; ``position_ids`` [1, N] in ``kwargs`` delimit packed rows. Padded positions of
    the output are zeros.
    """
    B, Hq, T, D = query.shape
    dropout = dropout if module.training else 0.0
    rows = kwargs.get(ROWS_KWARG)
    if rows is not None:
        return _packed_rows(module, query, key, value, rows, dropout, scaling), None
    S = key.shape[2]
    if S != T and (B != 1 or attention_mask is not None):
        raise ValueError("fastprm's varlen attention takes a cached prefix for one unpadded row only")
    segments = _row_segments(kwargs.get("position_ids"), attention_mask, B, T)
    if dropout == 0.0 and kernel_applies(query, key, value):
        return _with_kernel(query, key, value, segments, attention_mask, scaling), None
    if S != T:
        return _after_prefix(query, key, value, dropout, scaling).transpose(1, 2), None
    rows = []
    for b, spans in enumerate(segments):
        parts = [
            F.scaled_dot_product_attention(
                query[b : b + 1, :, s:e],
                key[b : b + 1, :, s:e],
                value[b : b + 1, :, s:e],
                dropout_p=dropout,
                is_causal=True,
                scale=scaling,
                enable_gqa=True,
            )
            for s, e in spans
            if e > s
        ]
        covered = spans[-1][1] if spans else 0
        if covered < T:
            parts.append(query.new_zeros(1, Hq, T - covered, D))
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows).transpose(1, 2), None


def _with_kernel(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: list[list[tuple[int, int]]],
    attention_mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """All rows of the batch in one call of the C++ kernel: [B, T, Hq, D].

    A cached prefix (keys longer than the queries, one row) is the kernel's prefix span. Right-padded rows run
    whole, padding included (causal: no real token sees a pad), and the pad positions are zeroed afterwards.
    """
    B, Hq, T, D = query.shape
    S = key.shape[2]
    scale = D**-0.5 if scaling is None else scaling
    q = query.transpose(1, 2).reshape(B * T, Hq, D)
    if S != T:
        P = S - T
        k, v = key[0, :, P:].transpose(0, 1), value[0, :, P:].transpose(0, 1)
        prefix = (key[0, :, :P].transpose(0, 1), value[0, :, :P].transpose(0, 1), torch.tensor([[0, P]]))
        cu_seqlens = torch.tensor([0, T])
    else:
        k = key.transpose(1, 2).reshape(B * T, -1, D)
        v = value.transpose(1, 2).reshape(B * T, -1, D)
        prefix = (None, None, None)
        if attention_mask is None and B == 1:
            cu_seqlens = torch.tensor([0, *(e for _, e in segments[0])])
        else:
            cu_seqlens = torch.arange(0, B * T + 1, T)
    out = varlen_attention_cpu(q, k, v, cu_seqlens, scale, *prefix).view(B, T, Hq, D)
    if attention_mask is not None:
        out.masked_fill_(~attention_mask.bool()[:, :, None, None], 0)
    return out


def _packed_rows(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rows: PackedRows,
    dropout: float,
    scaling: float | None,
) -> torch.Tensor:
    """A [1, N] batch described by ``rows``: [1, N, Hq, D]. The kernel where it applies, else SDPA per row
    over the row's prefix span and its own keys."""
    if query.shape[0] != 1 or key.shape[2] != query.shape[2]:
        raise ValueError("PackedRows describe one packed [1, N] row of new tokens (no transformers cache)")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [N, H, D]
    if rows.captured is not None:
        rows.captured.append((k, v))
    prefix_k, prefix_v = rows.prefix[module.layer_idx] if rows.prefix is not None else (None, None)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    if dropout == 0.0 and kernel_applies(q, k, v, prefix_k, prefix_v):
        return varlen_attention_cpu(q, k, v, rows.cu_seqlens, scale, prefix_k, prefix_v, rows.prefix_spans)[
            None
        ]
    bounds = rows.cu_seqlens.tolist()
    spans = rows.prefix_spans.tolist() if rows.prefix_spans is not None else [(0, 0)] * (len(bounds) - 1)
    parts = []
    for (s, e), (ps, pe) in zip(zip(bounds[:-1], bounds[1:]), spans):
        if e == s:
            continue
        keys, values = k[s:e], v[s:e]
        if pe > ps:
            keys, values = torch.cat([prefix_k[ps:pe], keys]), torch.cat([prefix_v[ps:pe], values])
        row = _after_prefix(
            q[s:e].transpose(0, 1)[None],
            keys.transpose(0, 1)[None],
            values.transpose(0, 1)[None],
            dropout,
            scaling,
        )
        parts.append(row[0].transpose(0, 1))
    return torch.cat(parts)[None] if parts else query.new_zeros(1, 0, *q.shape[1:])


# Queries per attention call after a cached prefix (measured on an AMD EPYC Zen 5 at Qwen2.5-0.5B widths:
# 32 to 96 are within 3% of each other, and all about 20% faster than one call over the whole rectangle).
PREFIX_QUERY_BLOCK = 64


def _after_prefix(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float, scaling: float | None
) -> torch.Tensor:
    """Attention of one row's T queries [1, Hq, T, D] whose S keys [1, Hkv, S, D] start with a cached prefix
    of S - T tokens (PRM.prefix_cache): query i sees the prefix and the row's keys up to i. Returns
    [1, Hq, T, D].

    One masked call would compute the whole T x S rectangle, half of whose row part is masked out; blocks of
    queries that each see the keys up to their last query compute about T x P + T^2 / 2 instead. The blocks
    depend on T and S only, so a row gets the same bits whatever else is scored with it.
    """
    T, S = query.shape[2], key.shape[2]
    prefix = S - T
    blocks = []
    for q0 in range(0, T, PREFIX_QUERY_BLOCK):
        q1 = min(T, q0 + PREFIX_QUERY_BLOCK)
        keys = prefix + q1
        causal = torch.ones(q1 - q0, keys, dtype=torch.bool, device=query.device).tril(prefix + q0)
        blocks.append(
            F.scaled_dot_product_attention(
                query[:, :, q0:q1],
                key[:, :, :keys],
                value[:, :, :keys],
                attn_mask=causal,
                dropout_p=dropout,
                scale=scaling,
                enable_gqa=True,
            )
        )
    return torch.cat(blocks, dim=2)


def register() -> str:
    """Registers the attention and its mask function (the 2D padding mask or None) with transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(NAME, varlen_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)
    return NAME
