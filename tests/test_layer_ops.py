"""The decoder-layer kernels (RMSNorm with the fused residual add, SwiGLU, rotary embedding) against their
pure-PyTorch references, on every CPU code path the machine runs, in fp32 / bf16 / fp16.

The references round where transformers' modules round, and so do the kernels: fp32 results agree to float
rounding (2e-6 relative, the kernels' exp and sum order differ), bf16 / fp16 ones to one unit in the last place
of the dtype (a different fp32 bit before a rounding can move it by one).
"""

from __future__ import annotations

import math

import pytest
import torch

from fastprm import _native
from fastprm.ops import (
    rms_norm,
    rms_norm_reference,
    rotary_,
    rotary_reference_,
    silu_mul,
    silu_mul_reference,
)

pytestmark = pytest.mark.skipif(_native.native is None, reason="the C++ extension is not built")

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
WIDTHS = (1, 7, 15, 16, 17, 31, 33, 255, 256, 257)
# One unit in the last place at 1.0, relative, per dtype.
ULP = {torch.float32: 2e-6, torch.bfloat16: 2**-7, torch.float16: 2**-10}


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    tol = ULP[expected.dtype]
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tol, atol=tol, equal_nan=True)


def _rand(*shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
def test_rms_norm(cpu_isa, dtype, width):
    x, w, r = (
        _rand(5, width, dtype=dtype),
        _rand(width, dtype=dtype, seed=1),
        _rand(5, width, dtype=dtype, seed=2),
    )
    _close(rms_norm(x, w, 1e-6), rms_norm_reference(x, w, 1e-6))
    h, normed = rms_norm(x, w, 1e-6, residual=r)
    h_ref, normed_ref = rms_norm_reference(x, w, 1e-6, residual=r)
    assert torch.equal(h, h_ref)  # one rounding of an exact fp32 sum
    _close(normed, normed_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
def test_silu_mul(cpu_isa, dtype, width):
    gate_up = (_rand(6, 2 * width) * 4).to(dtype)
    _close(silu_mul(gate_up), silu_mul_reference(gate_up))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", (2, 8, 14, 32, 34, 64, 128))
def test_rotary(cpu_isa, dtype, head_dim):
    x = _rand(9, 3, head_dim, dtype=dtype)
    angles = _rand(9, head_dim // 2, seed=3) * 10
    cos, sin = (f(torch.cat([angles, angles], -1)).to(dtype) for f in (torch.cos, torch.sin))
    expected = rotary_reference_(x.clone(), cos, sin)
    actual = x.clone()
    assert rotary_(actual, cos, sin) is actual
    _close(actual, expected)


def test_many_rows_over_threads(cpu_isa):
    """Calls large enough to run on several threads give the bits of row-by-row calls."""
    x, w = _rand(300, 256), _rand(256, seed=1)
    whole = rms_norm(x, w, 1e-5)
    assert torch.equal(whole[123:124], rms_norm(x[123:124], w, 1e-5))
    gate_up = _rand(300, 512)
    assert torch.equal(silu_mul(gate_up)[7:8], silu_mul(gate_up[7:8]))


def test_merged_qkv_heads_in_place(cpu_isa):
    """q and k as one [T, Hq + Hkv, D] view of a merged projection's output: only those heads change."""
    T, Hq, Hkv, D = 11, 4, 2, 16
    qkv = _rand(T, (Hq + 2 * Hkv) * D)
    angles = _rand(T, D // 2, seed=3)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    expected = qkv.clone()
    rotary_reference_(expected[:, : (Hq + Hkv) * D].view(T, Hq + Hkv, D), cos, sin)
    rotary_(qkv[:, : (Hq + Hkv) * D].view(T, Hq + Hkv, D), cos, sin)
    _close(qkv, expected)
    assert torch.equal(qkv[:, (Hq + Hkv) * D :], expected[:, (Hq + Hkv) * D :])


def test_strided_inputs(cpu_isa):
    x = _rand(6, 64)[:, :32]  # row stride 64
    w, r = _rand(32, seed=1), _rand(12, 32, seed=2)[::2]
    _close(rms_norm(x, w, 1e-6), rms_norm_reference(x, w, 1e-6))
    for a, b in zip(rms_norm(x, w, 1e-6, residual=r), rms_norm_reference(x, w, 1e-6, residual=r)):
        _close(a, b)
    gate_up = _rand(4, 100)[:, :64]
    _close(silu_mul(gate_up), silu_mul_reference(gate_up))
    heads = _rand(3, 8, 16).transpose(0, 1)  # token stride 16, head stride 128
    cos, sin = _rand(8, 16, seed=4), _rand(8, 16, seed=5)
    expected = rotary_reference_(heads.clone(), cos, sin)
    _close(rotary_(heads, cos, sin), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_rows(cpu_isa, dtype):
    w = _rand(16, dtype=dtype)
    assert rms_norm(torch.empty(0, 16, dtype=dtype), w, 1e-6).shape == (0, 16)
    h, normed = rms_norm(torch.empty(0, 16, dtype=dtype), w, 1e-6, residual=torch.empty(0, 16, dtype=dtype))
    assert h.shape == normed.shape == (0, 16)
    assert silu_mul(torch.empty(0, 32, dtype=dtype)).shape == (0, 16)
    x = torch.empty(0, 2, 16, dtype=dtype)
    assert rotary_(x, torch.empty(0, 16, dtype=dtype), torch.empty(0, 16, dtype=dtype)).shape == (0, 2, 16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_stays_in_its_row(cpu_isa, dtype):
    x = _rand(4, 40, dtype=dtype)
    x[2, 5] = math.nan
    w = _rand(40, dtype=dtype, seed=1)
    normed = rms_norm(x, w, 1e-6)
    assert normed[2].isnan().all() and not normed[[0, 1, 3]].isnan().any()
    h, normed = rms_norm(_rand(4, 40, dtype=dtype, seed=2), w, 1e-6, residual=x)
    assert normed[2].isnan().all() and not normed[[0, 1, 3]].isnan().any()
    assert h[2, 5].isnan() and h.isnan().sum() == 1
    out = silu_mul(x)  # the NaN is gate element 5 of row 2
    assert out[2, 5].isnan() and out.isnan().sum() == 1
    heads = x.view(4, 2, 20)
    rotary_(heads, _rand(4, 20, dtype=dtype), _rand(4, 20, dtype=dtype, seed=1))
    assert heads[2, 0].isnan().sum() == 2 and heads.isnan().sum() == 2  # element 5 and its partner 15


def test_bad_arguments_name_the_argument():
    x, w = torch.randn(3, 8), torch.randn(8)
    with pytest.raises(TypeError, match="x"):
        rms_norm(x.numpy(), w, 1e-6)
    with pytest.raises(TypeError, match="weight"):
        rms_norm(x, w.double(), 1e-6)
    with pytest.raises(TypeError, match="residual"):
        rms_norm(x, w, 1e-6, residual=x.half())
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, torch.randn(7), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        rms_norm(x, w, 1e-6, residual=torch.randn(2, 8))
    with pytest.raises(ValueError, match="eps"):
        rms_norm(x, w, -1.0)
    with pytest.raises(TypeError, match="gate_up"):
        silu_mul(torch.ones(3, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="gate_up"):
        silu_mul(torch.randn(3, 7))
    with pytest.raises(ValueError, match="x"):
        rotary_(torch.randn(3, 2, 7), torch.randn(3, 7), torch.randn(3, 7))
    with pytest.raises(ValueError, match="cos"):
        rotary_(torch.randn(3, 2, 8), torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(TypeError, match="sin"):
        rotary_(torch.randn(3, 2, 8), torch.randn(3, 8), torch.randn(3, 8).half())


def test_extension_checks_what_it_reads():
    """The extension itself never trusts its caller: wrong shapes, dtypes, strides and overlapping in-place
    outputs raise ValueError naming the argument."""
    C = _native.native
    x, w = torch.randn(3, 8), torch.randn(8)
    cases = [
        (lambda: C.rms_norm(x, torch.randn(9), 1e-6, None, 1), "weight"),
        (lambda: C.rms_norm(x.double(), w.double(), 1e-6, None, 1), "x"),
        (lambda: C.rms_norm(x, w.half(), 1e-6, None, 1), "weight"),
        (lambda: C.rms_norm(x.t(), torch.randn(3), 1e-6, None, 1), "x"),
        (lambda: C.rms_norm(x, w, 1e-6, torch.randn(3, 9), 1), "residual"),
        (lambda: C.rms_norm(x, w, float("nan"), None, 1), "eps"),
        (lambda: C.rms_norm(x[None], w, 1e-6, None, 1), "x"),
        (lambda: C.rms_norm(x, torch.randn(16)[::2], 1e-6, None, 1), "weight"),
        (lambda: C.silu_mul(torch.randn(3, 7), 1), "gate_up"),
        (lambda: C.silu_mul(torch.randn(8, 4).t(), 1), "gate_up"),
        (lambda: C.silu_mul(torch.randn(4), 1), "gate_up"),
        (lambda: C.rotary(torch.randn(3, 2, 8), torch.randn(3, 8), torch.randn(2, 8), 1), "sin"),
        (lambda: C.rotary(torch.randn(3, 2, 8), torch.randn(3, 8).half(), torch.randn(3, 8), 1), "cos"),
        (
            lambda: C.rotary(torch.randn(3, 2, 8).transpose(1, 2), torch.randn(3, 2), torch.randn(3, 2), 1),
            "x",
        ),
        (
            lambda: C.rotary(torch.randn(1, 8).expand(3, 2, 8), torch.randn(3, 8), torch.randn(3, 8), 1),
            "overlap",
        ),
        (lambda: C.rotary(torch.randn(3, 2, 8), torch.randn(3, 8), "sin", 1), "sin"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()


def test_reference_under_autograd():
    """Where a gradient is needed the reference runs, and the gradient flows."""
    x = torch.randn(3, 8, requires_grad=True)
    w = torch.randn(8)
    rms_norm(x, w, 1e-6).sum().backward()
    assert x.grad is not None
    g = torch.randn(3, 8, requires_grad=True)
    silu_mul(g).sum().backward()
    assert g.grad is not None
