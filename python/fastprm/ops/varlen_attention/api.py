"""The documented public function of the varlen attention op and its argument checks."""

from __future__ import annotations

import torch

from .cpu import kernel_applies, varlen_attention_cpu
from .reference import varlen_attention_reference

__all__ = ["varlen_attention", "varlen_attention_reference"]


def _check(q, k, v, cu_seqlens, prefix_k, prefix_v, prefix_spans) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name} must be a 3-D [tokens, heads, head_dim] tensor")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(
            f"k and v must be [{q.shape[0]}, heads_kv, {q.shape[2]}], got {tuple(k.shape)} and "
            f"{tuple(v.shape)}"
        )
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"q's {q.shape[1]} heads are not a multiple of k's {k.shape[1]}")
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.dtype != torch.int64:
        raise ValueError("cu_seqlens must be a 1-D int64 tensor")
    bounds = cu_seqlens.tolist()
    if (
        not bounds
        or bounds[0] != 0
        or bounds[-1] != q.shape[0]
        or any(b > a for a, b in zip(bounds[1:], bounds))
    ):
        raise ValueError(f"cu_seqlens must rise from 0 to q's {q.shape[0]} tokens, got {bounds}")
    if (prefix_spans is None) != (prefix_k is None) or (prefix_k is None) != (prefix_v is None):
        raise ValueError("prefix_k, prefix_v and prefix_spans go together")
    if prefix_spans is None:
        return
    if prefix_k.dim() != 3 or prefix_k.shape != prefix_v.shape or prefix_k.shape[1:] != k.shape[1:]:
        raise ValueError(f"prefix_k and prefix_v must be [prefix_tokens, {k.shape[1]}, {k.shape[2]}]")
    if prefix_spans.dtype != torch.int64 or tuple(prefix_spans.shape) != (len(bounds) - 1, 2):
        raise ValueError(f"prefix_spans must be an int64 [{len(bounds) - 1}, 2] tensor of (start, end)")
    for r, (s, e) in enumerate(prefix_spans.tolist()):
        if not 0 <= s <= e <= prefix_k.shape[0]:
            raise ValueError(
                f"prefix_spans[{r}] = ({s}, {e}) is not a span of the {prefix_k.shape[0]} prefix tokens"
            )


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    scale: float,
    prefix_k: torch.Tensor | None = None,
    prefix_v: torch.Tensor | None = None,
    prefix_spans: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention over packed rows (flash-attention's varlen layout), each after its own cached prefix.

    Args:
        q: [N, Hq, D] float32 / bfloat16 / float16 queries of B packed rows, any token and head strides.
        k, v: [N, Hkv, D] the rows' keys and values, Hq a multiple of Hkv (grouped-query attention).
        cu_seqlens: [B + 1] int64 row offsets, 0 .. N.
        scale: factor on q . k (usually head_dim ** -0.5).
        prefix_k, prefix_v: [P, Hkv, D] keys and values of text before the rows (a prefix cache), or None.
        prefix_spans: [B, 2] int64 (start, end): the prefix tokens row b sees first, or None.

    Returns:
        [N, Hq, D] in q's dtype. Row b's query i attends to its prefix span and its own tokens 0 .. i; a row's
        result never depends on the other rows. Computed by the C++ kernel (fp32 accumulation; bf16 products
        and probabilities for bf16 inputs on AVX512-BF16 CPUs) on CPU when no gradient is needed, else by
        :func:`varlen_attention_reference`.
    """
    _check(q, k, v, cu_seqlens, prefix_k, prefix_v, prefix_spans)
    if kernel_applies(q, k, v, prefix_k, prefix_v):
        return varlen_attention_cpu(q, k, v, cu_seqlens, scale, prefix_k, prefix_v, prefix_spans)
    return varlen_attention_reference(q, k, v, cu_seqlens, scale, prefix_k, prefix_v, prefix_spans)
