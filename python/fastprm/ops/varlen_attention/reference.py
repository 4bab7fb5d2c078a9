"""Pure-PyTorch reference of the varlen attention op: the specification, the test oracle and the fallback.

Query by query, a softmax attention in fp32 over the row's prefix keys and its own keys up to the query.
"""

from __future__ import annotations

import torch


def varlen_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    prefix_k: torch.Tensor | None = None,
    prefix_v: torch.Tensor | None = None,
    prefix_spans: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of each packed row over its cached prefix and its own earlier tokens.

    Args:
        q: [N, Hq, D] queries of the packed rows; k, v: [N, Hkv, D] their keys and values (Hq % Hkv == 0:
            query head h reads key head h // (Hq // Hkv)).
        cu_seqlens: [B + 1] int64 row offsets into the N tokens.
        scale: factor on q . k before the softmax.
        prefix_k, prefix_v: [P, Hkv, D] keys and values of earlier text, or None.
        prefix_spans: [B, 2] int64 (start, end) of each row's prefix in prefix_k / prefix_v, or None.

    Returns:
        [N, Hq, D] in q's dtype: query i of a row with a prefix of L tokens attends to the L prefix tokens and
        to the row's tokens 0 .. i.
    """
    out = torch.zeros_like(q)
    groups = q.shape[1] // k.shape[1]
    bounds = cu_seqlens.tolist()
    for r in range(len(bounds) - 1):
        s, e = bounds[r], bounds[r + 1]
        if e == s:
            continue
        keys, values = k[s:e], v[s:e]
        if prefix_spans is not None:
            ps, pe = prefix_spans[r].tolist()
            keys = torch.cat([prefix_k[ps:pe], keys])
            values = torch.cat([prefix_v[ps:pe], values])
        T, L = e - s, keys.shape[0]
        qf = q[s:e].float().transpose(0, 1)  # [Hq, T, D]
        kf = keys.repeat_interleave(groups, dim=1).float().transpose(0, 1)
        vf = values.repeat_interleave(groups, dim=1).float().transpose(0, 1)
        # One query at a time over exactly the keys it sees: a masked product would multiply the zero weight
        # of a later key by its value, and a NaN value would reach earlier queries.
        for i in range(T):
            seen = L - T + i + 1
            weights = torch.softmax((qf[:, i : i + 1] @ kf[:, :seen].transpose(1, 2)) * scale, dim=-1)
            out[s + i] = (weights @ vf[:, :seen])[:, 0].to(q.dtype)
    return out
