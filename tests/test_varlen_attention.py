"""The varlen attention op (fastprm.ops.varlen_attention): the C++ kernel of every ISA the test machine runs
against the pure-PyTorch reference, and the transformers attention function built on it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastprm import _native
from fastprm.ops import varlen_attention, varlen_attention_reference
from fastprm.ops.varlen_attention.cpu import kernel_applies

# Outputs are rounded to the storage dtype once; the kernel and the reference differ in fp32 summation order.
TOL = {torch.float32: 2e-6, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def _kernel_runs(head_dim: int) -> bool:
    return _native.native is not None and _native.native.attention_supported(head_dim)


def _packed(lengths, heads_q, heads_kv, head_dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    q, k, v = (torch.randn(n, h, head_dim, generator=g).to(dtype) for h in (heads_q, heads_kv, heads_kv))
    cu = torch.tensor([0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()])
    return q, k, v, cu


def _close(out, ref, dtype):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert not out.isnan().any()
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("heads_q", "heads_kv"), [(4, 4), (4, 2), (14, 2)])
def test_rows_of_every_length_against_reference(cpu_isa, dtype, heads_q, heads_kv):
    # Empty rows, length 1, and lengths around the 32-query blocks and the 32 / 64-key tiles.
    q, k, v, cu = _packed([0, 1, 5, 31, 32, 33, 63, 64, 65, 0, 130, 1], heads_q, heads_kv, 64, dtype)
    out = varlen_attention(q, k, v, cu, scale=0.125)
    _close(out, varlen_attention_reference(q, k, v, cu, 0.125), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [16, 32, 48, 64, 80, 128])
def test_head_sizes(cpu_isa, head_dim, dtype):
    # Sizes of 1 to 8 AVX-512 vectors exercise every chunk of the output micro-kernel.
    q, k, v, cu = _packed([7, 70, 129], 4, 2, head_dim, dtype)
    out = varlen_attention(q, k, v, cu, scale=head_dim**-0.5)
    _close(out, varlen_attention_reference(q, k, v, cu, head_dim**-0.5), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefix_spans(cpu_isa, dtype):
    # Rows after a shared prefix, after different spans of it, and after an empty span.
    q, k, v, cu = _packed([3, 40, 1, 66], 4, 2, 64, dtype)
    pk, pv = (t.to(dtype) for t in torch.randn(2, 90, 2, 64, generator=torch.Generator().manual_seed(1)))
    spans = torch.tensor([[0, 90], [0, 90], [10, 10], [5, 71]])
    out = varlen_attention(q, k, v, cu, scale=0.125, prefix_k=pk, prefix_v=pv, prefix_spans=spans)
    _close(out, varlen_attention_reference(q, k, v, cu, 0.125, pk, pv, spans), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_inputs(cpu_isa, dtype):
    # [B, H, T, D] views transposed to [T, H, D], as transformers' attention hands them over.
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 4, 100, 64, generator=g).to(dtype)[0].transpose(0, 1)
    k, v = (torch.randn(1, 2, 100, 64, generator=g).to(dtype)[0].transpose(0, 1) for _ in range(2))
    cu = torch.tensor([0, 37, 100])
    out = varlen_attention(q, k, v, cu, scale=0.125)
    _close(
        out,
        varlen_attention_reference(q.contiguous(), k.contiguous(), v.contiguous(), cu, 0.125),
        dtype,
    )


def test_a_row_does_not_depend_on_the_other_rows(cpu_isa):
    q, k, v, cu = _packed([50, 77, 20], 4, 2, 64, torch.bfloat16)
    together = varlen_attention(q, k, v, cu, scale=0.125)
    s, e = cu[1].item(), cu[2].item()
    alone = varlen_attention(q[s:e], k[s:e], v[s:e], torch.tensor([0, e - s]), scale=0.125)
    assert torch.equal(together[s:e], alone)


def test_large_and_tied_scores_stay_finite(cpu_isa):
    # Scores of +-1e4 (a softmax without its running max overflows) and identical keys (ties).
    q, k, v, cu = _packed([70], 2, 1, 64, torch.float32)
    q = q * 300
    k[10:40] = k[10]
    out = varlen_attention(q, k, v, cu, scale=1.0)
    # Scores this large carry fp32 rounding of ~1e-3 each, and summation order differs from the reference's.
    assert out.isfinite().all()
    torch.testing.assert_close(out, varlen_attention_reference(q, k, v, cu, 1.0), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("token", [5, 6])
def test_nan_stays_in_its_row(cpu_isa, dtype, token):
    # A NaN value reaches the queries that see its key and no other, whether the key is odd or even (the bf16
    # pair kernels take keys two at a time: a query whose last key is 4 or 5 must not read its partner).
    q, k, v, cu = _packed([20, 20], 2, 2, 64, dtype)
    v[token, 0, 3] = float("nan")
    out = varlen_attention(q, k, v, cu, scale=0.125)
    assert out[token:20, 0, 3].isnan().all() and not out[20:].isnan().any() and not out[:token].isnan().any()


def test_gradient_takes_the_reference():
    q, k, v, cu = _packed([9, 4], 4, 2, 64, torch.float32)
    q.requires_grad_()
    assert not kernel_applies(q, k, v)
    varlen_attention(q, k, v, cu, scale=0.125).sum().backward()
    assert q.grad is not None and q.grad.isfinite().all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cu_seqlens": torch.tensor([0, 5, 3])}, "cu_seqlens must rise"),
        ({"cu_seqlens": torch.tensor([0, 5], dtype=torch.int32)}, "int64"),
        ({"k": torch.zeros(6, 3, 64), "v": torch.zeros(6, 3, 64)}, "not a multiple"),
        ({"v": torch.zeros(5, 2, 64)}, "k and v must be"),
        ({"prefix_spans": torch.tensor([[0, 4]])}, "go together"),
    ],
)
def test_bad_arguments(change, message):
    q, k, v, cu = _packed([6], 4, 2, 64, torch.float32)
    args = {"q": q, "k": k, "v": v, "cu_seqlens": cu, **change}
    with pytest.raises(ValueError, match=message):
        varlen_attention(
            args.pop("q"), args.pop("k"), args.pop("v"), args.pop("cu_seqlens"), scale=1.0, **args
        )


def test_prefix_span_out_of_range():
    q, k, v, cu = _packed([6], 4, 2, 64, torch.float32)
    pk = pv = torch.zeros(8, 2, 64)
    with pytest.raises(ValueError, match=r"prefix_spans\[0\]"):
        varlen_attention(
            q, k, v, cu, scale=1.0, prefix_k=pk, prefix_v=pv, prefix_spans=torch.tensor([[2, 9]])
        )


@pytest.mark.skipif(not _kernel_runs(64), reason="no attention kernel on the test machine's ISA")
def test_extension_rechecks_what_it_dereferences():
    q, k, v, _ = _packed([6], 4, 2, 64, torch.float32)
    with pytest.raises(ValueError, match="cu_seqlens"):
        _native.native.varlen_attention(q, k, v, torch.tensor([0, 7]), 1.0, None, None, None, 1)
    with pytest.raises(ValueError, match="head_dim"):
        _native.native.varlen_attention(
            q, k[..., :32], v[..., :32], torch.tensor([0, 6]), 1.0, None, None, None, 1
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transformers_attention_function_matches_sdpa(cpu_isa, dtype):
    """The registered attention on packed rows, padded rows and after a cached prefix, against per-row SDPA
    (what it computes where the kernel does not apply)."""
    from fastprm.models import varlen_attention as attn

    module = torch.nn.Module().eval()
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, h, 90, 64, generator=g).to(dtype) for h in (4, 2, 2))
    position_ids = torch.cat([torch.arange(30), torch.arange(60)])[None]
    out, _ = attn.varlen_attention(module, q, k, v, None, scaling=0.125, position_ids=position_ids)
    for s, e in ((0, 30), (30, 90)):
        want = F.scaled_dot_product_attention(
            q[..., s:e, :].float(),
            k[..., s:e, :].float(),
            v[..., s:e, :].float(),
            is_causal=True,
            scale=0.125,
            enable_gqa=True,
        ).transpose(1, 2)
        torch.testing.assert_close(out[:, s:e].float(), want, atol=TOL[dtype] * 2, rtol=TOL[dtype] * 2)

    mask = torch.ones(2, 45, dtype=torch.long)
    mask[1, 20:] = 0
    qp, kp, vp = (t.reshape(t.shape[1], 2, 45, 64).transpose(0, 1).contiguous() for t in (q, k, v))
    out, _ = attn.varlen_attention(module, qp, kp, vp, mask, scaling=0.125)
    assert torch.equal(out[1, 20:], torch.zeros_like(out[1, 20:]))
    want = F.scaled_dot_product_attention(
        qp[1:, :, :20].float(),
        kp[1:, :, :20].float(),
        vp[1:, :, :20].float(),
        is_causal=True,
        scale=0.125,
        enable_gqa=True,
    ).transpose(1, 2)
    torch.testing.assert_close(out[1:, :20].float(), want, atol=TOL[dtype] * 2, rtol=TOL[dtype] * 2)

    # 10 new queries after an 80-token prefix: keys are [1, Hkv, 90, D].
    out, _ = attn.varlen_attention(module, q[..., 80:, :], k, v, None, scaling=0.125)
    visible = torch.ones(10, 90, dtype=torch.bool).tril(80)
    want = F.scaled_dot_product_attention(
        q[..., 80:, :].float(), k.float(), v.float(), attn_mask=visible, scale=0.125, enable_gqa=True
    ).transpose(1, 2)
    torch.testing.assert_close(out.float(), want, atol=TOL[dtype] * 2, rtol=TOL[dtype] * 2)
