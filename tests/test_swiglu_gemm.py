"""fastprm's SwiGLU GEMM (``silu(x Wg^T) * (x Wu^T)`` in one GEMM; fp32 on AVX-512, bf16 on AVX512-BF16)
against its reference.

The kernel sums in fp32 in another order than the reference's fp32 GEMM (bf16: exact bf16 x bf16 products),
then rounds once, as the reference does: results agree to one unit of the dtype's last place plus the fp32
sums' own rounding (which only shows where a sum nearly cancels). Each dtype runs where the machine has its
ISA; elsewhere the ops refuse (tested on the portable ISA every machine has).
"""

from __future__ import annotations

import math

import pytest
import torch

from fastprm import _native
from fastprm.ops import pack_gate_up, swiglu_gemm, swiglu_gemm_reference
from fastprm.ops.swiglu_gemm.cpu import swiglu_gemm_supported

DTYPES = [
    pytest.param(
        dtype,
        marks=pytest.mark.skipif(
            not swiglu_gemm_supported(dtype), reason=f"the running CPU has no SwiGLU GEMM in {dtype}"
        ),
    )
    for dtype in (torch.float32, torch.bfloat16)
]
# One unit in the last place, relative, per dtype.
ULP = {torch.float32: 2**-23, torch.bfloat16: 2**-7}


def _rand(*shape, seed=0, scale=1.0, dtype=torch.bfloat16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def _weights(intermediate: int, hidden: int, dtype=torch.bfloat16, seed: int = 1) -> tuple[torch.Tensor, ...]:
    scale = hidden**-0.5
    return tuple(_rand(intermediate, hidden, seed=seed + i, scale=scale, dtype=dtype) for i in range(2))


def _check(out: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> None:
    """``out`` within one unit of the dtype's last place of the reference, plus the fp32 sums' rounding
    times the terms' size."""
    expected = swiglu_gemm_reference(x, gate, up)
    assert out.dtype == x.dtype and out.shape == expected.shape
    terms = (x.float().abs() @ gate.float().abs().T) * (x.float().abs() @ up.float().abs().T)
    atol = 64 * 2**-24 * terms
    diff = (out.float() - expected.float()).abs()
    assert (diff <= ULP[x.dtype] * expected.float().abs() + atol).all(), diff.max()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 5, 6, 7, 13])
@pytest.mark.parametrize("intermediate", [1, 15, 16, 17, 32, 33, 48, 80])
@pytest.mark.parametrize("hidden", [1, 2, 3, 64, 65])
def test_matches_reference(dtype, rows, intermediate, hidden):
    x = _rand(rows, hidden, dtype=dtype)
    gate, up = _weights(intermediate, hidden, dtype)
    _check(swiglu_gemm(x, pack_gate_up(gate, up)), x, gate, up)


@pytest.mark.parametrize("dtype", DTYPES)
def test_model_widths_over_threads(dtype):
    """Qwen2.5-0.5B's widths (K 896, I 4,864), more rows than a slice of the kernel (1,024), 1 and 2 threads:
    each row's result is the same bits whatever the rows beside it and the thread count."""
    x = _rand(1100, 896, dtype=dtype)
    gate, up = _weights(4864, 896, dtype)
    packed = pack_gate_up(gate, up)
    out = swiglu_gemm(x, packed)
    _check(out, x, gate, up)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(swiglu_gemm(x, packed), out)
    finally:
        torch.set_num_threads(threads)
    for rows in (slice(0, 1), slice(5, 12), slice(1023, 1030)):
        assert torch.equal(swiglu_gemm(x[rows], packed), out[rows])


@pytest.mark.parametrize("dtype", DTYPES)
def test_leading_dimensions_strides_and_no_rows(dtype):
    gate, up = _weights(40, 24, dtype)
    packed = pack_gate_up(gate.t().contiguous().t(), up)  # weights with a column stride are packed too
    wide = _rand(3, 5, 30, dtype=dtype)
    x = wide[..., 3:27]  # rows 30 elements apart
    out = swiglu_gemm(x, packed)
    assert out.shape == (3, 5, 40)
    _check(out.view(15, 40), x.reshape(15, 24), gate, up)
    assert swiglu_gemm(torch.empty(0, 24, dtype=dtype), packed).shape == (0, 40)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_stays_in_its_row(dtype):
    x = _rand(9, 33, dtype=dtype)
    x[4, 7] = math.nan
    gate, up = _weights(20, 33, dtype)
    out = swiglu_gemm(x, pack_gate_up(gate, up))
    assert out[4].isnan().all() and not out[[0, 1, 2, 3, 5, 6, 7, 8]].isnan().any()


@pytest.mark.skipif(
    not swiglu_gemm_supported(torch.bfloat16), reason="the running CPU has no bf16 SwiGLU GEMM"
)
def test_bad_arguments_name_the_argument():
    gate, up = _weights(16, 8)
    packed = pack_gate_up(gate, up)
    with pytest.raises(TypeError, match="x"):
        swiglu_gemm(torch.randn(3, 8), packed)  # fp32 x, bf16 weights
    with pytest.raises(TypeError, match="up_weight"):
        pack_gate_up(gate, up.float())
    with pytest.raises(TypeError, match="gate_weight"):
        pack_gate_up(gate.half(), up.half())
    with pytest.raises(RuntimeError, match="inference-only"):
        swiglu_gemm(_rand(3, 8).requires_grad_(), packed)
    with torch.no_grad():
        assert swiglu_gemm(_rand(3, 8).requires_grad_(), packed).shape == (3, 16)
    with pytest.raises(ValueError, match=r"x must be a CPU tensor \[\.\.\., 8\]"):
        swiglu_gemm(_rand(3, 9), packed)
    with pytest.raises(ValueError, match="up_weight"):
        pack_gate_up(gate, up[:8])
    C = _native.native
    cases = [
        (lambda: C.swiglu_gemm(_rand(3, 8), packed.packed, 16, 9, 1), "x must be"),
        (lambda: C.swiglu_gemm(_rand(3, 8), packed.packed[:-1], 16, 8, 1), "packed"),
        (lambda: C.swiglu_gemm(_rand(3, 8), packed.packed, 32, 8, 1), "packed"),
        (lambda: C.swiglu_gemm(_rand(3, 8).float(), packed.packed, 16, 8, 1), "packed"),
        (lambda: C.swiglu_gemm(_rand(3, 8).half(), packed.packed, 16, 8, 1), "x"),
        (lambda: C.swiglu_gemm_pack(gate, up.float()), "up"),
        (lambda: C.swiglu_gemm(_rand(8, 3).t(), packed.packed, 16, 8, 1), "x"),
        (lambda: C.swiglu_gemm_pack(gate, up[:, :4]), "up"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()


@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512"])
def test_refused_where_the_isa_lacks_it(isa):
    """On an ISA without the kernel's instructions (fp32: AVX-512, bf16: AVX512-BF16) the ops say so instead of
    running; the portable ISA is on every machine."""
    if _native.native is None or isa not in _native.available_isas():
        pytest.skip(f"the running CPU has no {isa} code path")
    before = _native.native.selected_isa()
    _native.native.set_isa(isa)
    try:
        for dtype, need in ((torch.float32, "AVX-512"), (torch.bfloat16, "AVX512-BF16")):
            if isa == "avx512" and dtype == torch.float32:
                assert swiglu_gemm_supported(dtype)
                continue
            gate, up = _weights(16, 8, dtype)
            assert not swiglu_gemm_supported(dtype)
            with pytest.raises(RuntimeError, match=need):
                pack_gate_up(gate, up)
            with pytest.raises(ValueError, match=need):
                _native.native.swiglu_gemm_pack(gate, up)
    finally:
        _native.native.set_isa(before)
