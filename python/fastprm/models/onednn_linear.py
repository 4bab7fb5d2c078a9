"""Linear layers through oneDNN with weights packed once for the CPU's GEMM kernels (inference only).

torch's CPU ``F.linear`` runs fp32 through its BLAS (MKL in the official wheels), which may not use a CPU's
widest vector units: on an AMD EPYC Zen 5 (AVX-512) it ran the Qwen2.5-0.5B and tiny-model linear shapes at
160-200 GFLOP/s, while oneDNN with pre-packed weights ran the same shapes at 430-460 (bf16: 750 vs 870;
benchmarks/results/bench_gemm_*.md). Whether oneDNN wins is a property of the machine, so the route is chosen
by measurement (:mod:`fastprm.tuning`), never assumed.

A packed weight is kept per layer and rebuilt when the weight changes (training, ``load_state_dict``); it
costs one more copy of the linear weights in memory. oneDNN also caches one primitive per distinct input
row count, about 1.3 MB each at Qwen2.5-0.5B widths, up to 1,024 by default; scoring sees a new row count
for almost every row or batch, so fastprm lowers that default (:data:`PRIMITIVE_CACHE_CAPACITY`).
"""

from __future__ import annotations

import os
import weakref

import torch
import torch.nn.functional as F
from torch import nn

# The row count oneDNN packs a weight for; any row count runs with it (measured: 64 to 8192 rows all at the
# packed rate on an AMD EPYC Zen 5).
PACK_ROWS_HINT = 512

# oneDNN's primitive cache capacity unless the user set one; read by oneDNN when it first builds a primitive,
# so it is set at import, before any forward. Measured on an AMD EPYC Zen 5 (300 distinct row counts through
# an 896 x 4864 layer): +400 MB of RSS at oneDNN's default of 1,024, +140 MB at 64, with scoring speed
# within +-4% (tiny and 0.5B shapes, rows and packed layouts).
PRIMITIVE_CACHE_CAPACITY = 64
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(PRIMITIVE_CACHE_CAPACITY))

_packed: weakref.WeakKeyDictionary[nn.Linear, tuple[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()


def available(dtype: torch.dtype) -> bool:
    """Whether torch was built with oneDNN and it runs ``dtype`` GEMMs on the running CPU."""
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return dtype == torch.float32


def packed_weight(layer: nn.Linear) -> torch.Tensor:
    """``layer.weight`` [out, in] in oneDNN's blocked layout, packed on first use and after every change."""
    weight = layer.weight
    key = (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape))
    cached = _packed.get(layer)
    if cached is None or cached[0] != key:
        cached = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS_HINT))
        _packed[layer] = cached
    return cached[1]


def forget(layer: nn.Linear) -> None:
    """Drops ``layer``'s packed weight (a caller that packs it merged with others, :mod:`.fused_layers`)."""
    _packed.pop(layer, None)


# Not traced by torch.compile (it cannot trace oneDNN's packed-weight tensors); compiled layers call it as is.
@torch.compiler.disable
def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for x [..., in] -> [..., out] through oneDNN with the packed weight; where autograd
    needs the result (training), the layer's own ``F.linear``."""
    if torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad):
        return F.linear(x, layer.weight, layer.bias)
    bias = None if layer.bias is None else layer.bias.detach()
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight(layer), bias, "none", [], "")
