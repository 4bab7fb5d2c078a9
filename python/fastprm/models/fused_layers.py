"""Hand-fused inference decoder layers for the Llama-family pre-norm layout, on CPU.

transformers runs a decoder layer as about twenty ops: two RMSNorms of five ops each, seven GEMMs, rotary
embedding (eight ops on q and k), SwiGLU and two residual adds. On a small backbone (hidden 256) the
element-wise ones and the GEMM launches cost about a quarter of the forward (bf16 profile of the tiny
Qwen2.5-Math-PRM shape on an AMD EPYC Zen 5). Within :func:`fused_layers` each supported layer runs instead:

    RMSNorm (one kernel) -> merged QKV GEMM -> rotary of q and k in place (one kernel, on the GEMM's output)
    -> fastprm's varlen attention -> o_proj -> residual add + RMSNorm (one kernel) -> merged gate/up GEMM
    -> SwiGLU (one kernel) -> down_proj -> residual add       (the MLP in cache-sized slices of rows)

with the kernels of :mod:`fastprm.ops` (``rms_norm``, ``rotary_``, ``silu_mul``) called directly. Each
kernel rounds where transformers' modules round, so the result is transformers' forward up to the last bit
of fp32 math (fp32 within 1e-5; bf16 within a few units of bf16's last place, tests/test_fused_layers.py).

Under the ``onednn`` GEMM route the SwiGLU runs inside the GEMMs instead: the gate GEMM applies SiLU to its
fp32 results and the up GEMM multiplies its own results by them (oneDNN post-ops). That saves the SwiGLU
kernel's pass over the [tokens, 2 x intermediate] gate/up output and the merged GEMM's write of it (the
Qwen2.5-0.5B shape in bf16 scores 8-11% faster, same-process A/B on an AMD EPYC Zen 5); it rounds once where
transformers rounds after each GEMM and after SiLU, so its bf16 results are as close to the fp32 forward as
transformers' are, not equal to transformers' bits.

On CPUs with AVX-512, MLPs without biases run the gate and up GEMMs and the SwiGLU as fastprm's own kernel
(:func:`fastprm.ops.swiglu_gemm`, any GEMM route; fp32, and bf16 where AVX512-BF16 is and AMX is not): one
GEMM whose gate and up sums stay in registers until SiLU and the product, rounded once. It never writes the
gate output that the post-op route writes and reads back: at Qwen2.5-0.5B widths, weights cold, it runs bf16
858 GFLOP/s against 760 for the post-op route and fp32 369-378 against 289-333 (AMD EPYC Zen 5, 2 threads),
and the 0.5B shape in bf16 scores 7-11% faster (same-process A/B, 60 rows). Where AMX is, oneDNN's AMX
kernels are left to run bf16.

Scope: no-grad CPU inference with fastprm's varlen attention (every layout it serves: ``rows``, ``packed``
and right-padded ``padded`` batches; a backbone loaded with SDPA or eager attention runs unchanged), layers of :data:`FUSED_LAYERS` with SiLU MLPs and
plain ``nn.Linear`` projections. Qwen3 is left out: its per-head q / k RMSNorms before the rotary embedding
would need the norm kernel over the strided heads of the merged output. Anywhere else (autograd on, another
device, another layer type or attention) the layer's own forward runs.

Memory: the merged QKV and gate/up weights are one more copy of those five projections (for the
Qwen2.5-0.5B shape about 0.23 G parameters: 470 MB in bf16); under the ``onednn`` GEMM route only their packed
form is kept and the packed copies of the five separate projections are dropped, so the route costs what it
did without fusion.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..machine import cpu_description
from ..ops.native_layer_ops import kernel_applies
from ..ops.rms_norm.cpu import rms_norm_cpu
from ..ops.rotary.cpu import rotary_cpu_
from ..ops.silu_mul.cpu import silu_mul_cpu
from ..ops.swiglu_gemm.api import PackedGateUp, pack_gate_up
from ..ops.swiglu_gemm.cpu import swiglu_gemm_cpu, swiglu_gemm_supported
from . import onednn_linear, varlen_attention
from .step_rows import rows_of

# Decoder layers whose forward is the pre-norm layout above (tested against transformers' forward).
FUSED_LAYERS = frozenset({"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer"})
_KERNELS = ("rms_norm", "rotary", "silu_mul")
# The MLP runs over slices of rows whose [rows, intermediate] activations take at most MLP_CHUNK_BYTES, so
# the gate/up output is still in the last-level cache when the up GEMM's post-op and down_proj read it.
# Measured on an AMD EPYC Zen 5 (32 MB L3) at Qwen2.5-0.5B widths, 4,096-token packed batches, same-process
# A/B: bf16 +15% (one [4096, 4864] slice is 40 MB; slices of 512-2,048 rows all alike), fp32 +13%; results
# bitwise the same.
MLP_CHUNK_BYTES = 8 << 20


@dataclass
class _Merged:
    """A layer's merged projections: qkv [(Hq + 2 Hkv) D, H], and gate_up [2I, H] (plain), or gate and up
    [I, H] each (oneDNN-packed), or neither when the gate and up weights are packed for fastprm's SwiGLU GEMM
    (``swiglu_weights``; see :meth:`swiglu`)."""

    key: tuple
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    gate_up: tuple[torch.Tensor, ...]
    gate_up_bias: tuple[torch.Tensor | None, ...]
    packed: bool
    swiglu_weights: PackedGateUp | None = None

    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        """SiLU(x gate^T + b_gate) * (x up^T + b_up): [N, H] -> [N, I], in ``x``'s dtype."""
        if self.swiglu_weights is not None:
            w = self.swiglu_weights
            return swiglu_gemm_cpu(x, w.packed, w.intermediate, w.hidden)
        if self.packed:
            (gate_w, up_w), (gate_b, up_b) = self.gate_up, self.gate_up_bias
            gate = torch.ops.mkldnn._linear_pointwise(x, gate_w, gate_b, "swish", [], "")
            return torch.ops.mkldnn._linear_pointwise.binary(x, gate, up_w, up_b, "mul")
        return silu_mul_cpu(_linear(x, self.gate_up[0], self.gate_up_bias[0], packed=False))


_merged: weakref.WeakKeyDictionary[nn.Module, _Merged] = weakref.WeakKeyDictionary()


def fusable(backbone: nn.Module) -> bool:
    """Whether :func:`fused_layers` changes anything for ``backbone``: fastprm's varlen attention, a layer it
    supports, and an extension with the kernels."""
    layers = getattr(backbone, "layers", None)
    return (
        getattr(backbone.config, "_attn_implementation", None) == varlen_attention.NAME
        and isinstance(layers, nn.ModuleList)
        and any(supported(layer) for layer in layers)
        and all(kernel_applies(op, layers[0].input_layernorm.weight.detach()) for op in _KERNELS)
    )


def supported(layer: nn.Module) -> bool:
    """Whether ``layer`` can run fused: a :data:`FUSED_LAYERS` type with plain linear projections and a SiLU
    MLP."""
    if type(layer).__name__ not in FUSED_LAYERS:
        return False
    attn, mlp = layer.self_attn, layer.mlp
    linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    return all(type(m) is nn.Linear for m in linears) and isinstance(mlp.act_fn, (nn.SiLU, _silu_type()))


@functools.cache
def _silu_type() -> type:
    from transformers.activations import SiLUActivation

    return SiLUActivation


def _projections(layer: nn.Module) -> tuple[list[nn.Linear], list[nn.Linear]]:
    attn, mlp = layer.self_attn, layer.mlp
    return [attn.q_proj, attn.k_proj, attn.v_proj], [mlp.gate_proj, mlp.up_proj]


def _concat(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The linears' weights stacked [sum(out), in], and their biases (zeros for a linear without) or None."""
    weight = torch.cat([m.weight.detach() for m in linears])
    if all(m.bias is None for m in linears):
        return weight, None
    biases = [m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features) for m in linears]
    return weight, torch.cat(biases)


def own_swiglu_gemm(gate: nn.Linear, up: nn.Linear) -> bool:
    """Whether the MLP's gate and up GEMMs run as fastprm's SwiGLU GEMM (:func:`fastprm.ops.swiglu_gemm`):
    fp32 or bf16 weights without biases, on a CPU whose selected ISA runs the kernel in that dtype (AVX-512,
    AVX512-BF16 for bf16), and in bf16 only without AMX: oneDNN's AMX tiles out-run the kernel's AVX-512 dot
    products, so there the GEMM route's kernels stay."""
    dtype = gate.weight.dtype
    return (
        up.weight.dtype == dtype
        and gate.bias is None
        and up.bias is None
        and swiglu_gemm_supported(dtype)
        and not (dtype == torch.bfloat16 and "amx_bf16" in cpu_description()[1])
    )


def merged_weights(layer: nn.Module, packed: bool) -> _Merged:
    """The layer's merged QKV and gate/up weights, built on first use and rebuilt when a projection's weight
    or bias changes (training, ``load_state_dict``: keyed by data pointer, version, dtype and shape) or the
    GEMM route switches between plain and oneDNN-packed weights."""
    qkv, gate_up = _projections(layer)
    own = own_swiglu_gemm(*gate_up)  # part of the key: the selected CPU ISA can change (tests pin each)
    params = [p for m in qkv + gate_up for p in (m.weight, m.bias) if p is not None]
    key = (packed, own, *((p.data_ptr(), p._version, p.dtype, tuple(p.shape)) for p in params))
    cached = _merged.get(layer)
    if cached is not None and cached.key == key:
        return cached
    qkv_w, qkv_b = _concat(qkv)
    swiglu_weights, gu_w, gu_b = None, (), ()
    if own:
        swiglu_weights = pack_gate_up(gate_up[0].weight, gate_up[1].weight)
    elif packed:
        gu_w = tuple(_pack(m.weight.detach()) for m in gate_up)
        gu_b = tuple(None if m.bias is None else m.bias.detach() for m in gate_up)
    else:
        merged_gate_up, merged_bias = _concat(gate_up)
        gu_w, gu_b = (merged_gate_up,), (merged_bias,)
    if packed:
        qkv_w = _pack(qkv_w)
        for m in qkv + gate_up:  # the packed copies of the module route are no longer read
            onednn_linear.forget(m)
    cached = _Merged(key, qkv_w, qkv_b, gu_w, gu_b, packed, swiglu_weights)
    _merged[layer] = cached
    return cached


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, onednn_linear.PACK_ROWS_HINT)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, packed: bool) -> torch.Tensor:
    if packed:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)  # the fp32 route's TorchFunctionMode sees it as any other matmul


def _applies(layer: nn.Module, hidden_states: torch.Tensor, position_embeddings) -> bool:
    """Whether this call can run fused: CPU, no gradient, fastprm's varlen attention, rotary tables given,
    and the kernels take the dtypes (norm weights in the hidden states' dtype)."""
    if position_embeddings is None:
        return False
    if getattr(layer.self_attn.config, "_attn_implementation", None) != varlen_attention.NAME:
        return False
    if torch.is_grad_enabled() and any(p.requires_grad for p in layer.parameters()):
        return False
    norms = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
    return all(kernel_applies(op, hidden_states, *norms, *position_embeddings) for op in _KERNELS)


# Not traced by torch.compile: the kernels are opaque to it (the Scorer never combines the two).
@torch.compiler.disable
def _fused_forward(
    layer: nn.Module,
    rows: torch.Tensor | None,
    packed: bool,
    fallback: Callable[..., torch.Tensor],
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs,
) -> torch.Tensor:
    """The layer's forward on [B, T, H] hidden states, fused; [1, K, H] at the flat ``rows`` [K] when given
    (the step-row last layer, :mod:`.step_rows`). ``fallback`` is the forward to run where fusion does not
    apply."""
    if not _applies(layer, hidden_states, position_embeddings):
        return fallback(
            hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            position_embeddings=position_embeddings,
            **kwargs,
        )
    attn = layer.self_attn
    B, T, H = hidden_states.shape
    D = attn.head_dim
    Hq, Hkv = attn.config.num_attention_heads, attn.config.num_key_value_heads
    merged = merged_weights(layer, packed)
    x = hidden_states.reshape(B * T, H)
    normed = rms_norm_cpu(x, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon, None)
    qkv = _linear(normed, merged.qkv, merged.qkv_bias, packed)  # [N, (Hq + 2 Hkv) D]
    # [B or 1, T, D]: padded rows share one table (positions from 0), expanded per token here
    cos, sin = (t.expand(B, T, D).reshape(B * T, D) for t in position_embeddings)
    rotary_cpu_(qkv[:, : (Hq + Hkv) * D].view(B * T, Hq + Hkv, D), cos, sin)
    q, k, v = (
        part.view(B, T, -1, D).transpose(1, 2) for part in qkv.split([Hq * D, Hkv * D, Hkv * D], dim=1)
    )
    cache, legacy = kwargs.pop("cache", None), kwargs.pop("past_key_values", None)  # older transformers' name
    cache = legacy if cache is None else cache  # not `or`: an empty Cache is falsy
    if cache is not None:  # a prefix cache (the rows layout): this call's keys join it, as in transformers
        k, v = cache.update(k, v, attn.layer_idx, kwargs=kwargs)
    out, _ = varlen_attention.varlen_attention(
        attn, q, k, v, attention_mask, scaling=attn.scaling, position_ids=position_ids, **kwargs
    )
    packed_rows = kwargs.get(varlen_attention.ROWS_KWARG)
    if packed_rows is not None and packed_rows.captured is not None:
        # The captured keys and values are views of the whole QKV output: keep copies of them alone, or a
        # kept prefix would hold the queries too ((Hq + 2 Hkv) / (2 Hkv) times the memory).
        packed_rows.captured[-1] = tuple(t.contiguous() for t in packed_rows.captured[-1])
    out = out.reshape(B * T, Hq * D)
    residual = x
    if rows is not None:
        out, residual = out[rows], x[rows]
    post = layer.post_attention_layernorm
    h, normed = rms_norm_cpu(attn.o_proj(out), post.weight, post.variance_epsilon, residual)
    chunk = mlp_chunk_rows(layer.mlp.gate_proj.out_features, h.element_size())
    for start in range(0, h.shape[0], chunk):  # h += MLP(normed), a cache-sized slice of rows at a time
        part = slice(start, start + chunk)
        h[part].add_(layer.mlp.down_proj(merged.swiglu(normed[part])))
    return h.view(1, -1, H) if rows is not None else h.view(B, T, H)


def mlp_chunk_rows(intermediate: int, itemsize: int) -> int:
    """Rows per MLP slice: the most whose [rows, intermediate] activations fit :data:`MLP_CHUNK_BYTES`."""
    return max(1, MLP_CHUNK_BYTES // (intermediate * itemsize))


@contextlib.contextmanager
def fused_layers(backbone: nn.Module, gemm_route: str) -> Iterator[int]:
    """Within this context the backbone's supported decoder layers run fused (see the module docstring), the
    merged projections through ``gemm_route`` (:mod:`.gemm_routes`: oneDNN-packed under ``onednn``). Enter it
    inside :func:`~fastprm.models.step_rows.last_layer_at_rows`, whose step rows the fused last layer keeps.
    Yields how many layers run fused."""
    layers = getattr(backbone, "layers", None)
    patched: list[tuple[nn.Module, Callable | None]] = []
    for layer in layers if isinstance(layers, nn.ModuleList) else []:
        previous = layer.__dict__.get("forward")
        rows = rows_of(layer)
        if not supported(layer) or (previous is not None and rows is None):  # patched by someone else
            continue
        packed = gemm_route == "onednn"
        layer.forward = functools.partial(_fused_forward, layer, rows, packed, layer.forward)
        patched.append((layer, previous))
    try:
        yield len(patched)
    finally:
        for layer, previous in patched:
            if previous is None:
                del layer.forward
            else:
                layer.forward = previous
