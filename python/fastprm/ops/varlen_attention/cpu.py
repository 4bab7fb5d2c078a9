"""CPU backend: the C++ kernel of ``csrc/attention*.{h,cpp}``, for inference only.

The kernel has no backward: callers take the reference (or torch's SDPA) wherever autograd needs the result,
and on CPUs without an AVX2 / AVX-512 kernel (the portable ISA) or head sizes it was not built for.
"""

from __future__ import annotations

import torch

from ..._native import native

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def kernel_applies(q: torch.Tensor, *tensors: torch.Tensor | None) -> bool:
    """Whether the C++ kernel can compute this call: CPU tensors of a kernel dtype, no gradient needed, an ISA
    with a kernel for q's head size ([..., D])."""
    if native is None or q.device.type != "cpu" or q.dtype not in KERNEL_DTYPES:
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, *tensors)):
        return False
    return native.attention_supported(q.shape[-1])


def varlen_attention_cpu(q, k, v, cu_seqlens, scale, prefix_k, prefix_v, prefix_spans) -> torch.Tensor:
    """The kernel (spec: ``varlen_attention_reference``) on all of torch's intra-op threads, for callers that
    have checked :func:`kernel_applies`: :func:`fastprm.ops.varlen_attention` after its argument checks, and
    the model's attention function, whose arguments it builds itself (once per layer, so it skips the Python
    checks; the extension still re-checks every bound it dereferences)."""
    return native.varlen_attention(
        q, k, v, cu_seqlens, scale, prefix_k, prefix_v, prefix_spans, torch.get_num_threads()
    )
