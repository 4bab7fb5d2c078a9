"""fastprm's SwiGLU GEMM (``silu(x Wg^T) * (x Wu^T)`` in one bf16 GEMM, AVX512-BF16) against its reference.

The kernel sums exact bf16 x bf16 products in fp32 in another order than the reference's fp32 GEMM, then
rounds once, as the reference does: results agree to one bf16 unit of the result plus the fp32 sums' own
rounding (which only shows where a sum nearly cancels). Runs where the machine has AVX512-BF16; elsewhere the
tests of the fallback (ops refuse, the fused layers keep the GEMM route's kernels) run.
"""

from __future__ import annotations

import math

import pytest
import torch

from fastprm import _native
from fastprm.ops import pack_gate_up, swiglu_gemm, swiglu_gemm_reference
from fastprm.ops.swiglu_gemm.cpu import swiglu_gemm_supported

needs_kernel = pytest.mark.skipif(
    not swiglu_gemm_supported(), reason="the SwiGLU GEMM needs a CPU with AVX512-BF16 and the C++ extension"
)


def _rand(*shape, seed=0, scale=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).bfloat16()


def _weights(intermediate: int, hidden: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    scale = hidden**-0.5
    return _rand(intermediate, hidden, seed=seed, scale=scale), _rand(
        intermediate, hidden, seed=seed + 1, scale=scale
    )


def _check(out: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> None:
    """``out`` within one bf16 unit of the reference, plus the fp32 sums' rounding times the terms' size."""
    expected = swiglu_gemm_reference(x, gate, up)
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    terms = (x.float().abs() @ gate.float().abs().T) * (x.float().abs() @ up.float().abs().T)
    atol = 64 * 2**-24 * terms
    diff = (out.float() - expected.float()).abs()
    assert (diff <= 2**-7 * expected.float().abs() + atol).all(), diff.max()


@needs_kernel
@pytest.mark.parametrize("rows", [1, 5, 6, 7, 13])
@pytest.mark.parametrize("intermediate", [1, 15, 16, 17, 32, 33, 48, 80])
@pytest.mark.parametrize("hidden", [1, 2, 3, 64, 65])
def test_matches_reference(rows, intermediate, hidden):
    x = _rand(rows, hidden)
    gate, up = _weights(intermediate, hidden)
    _check(swiglu_gemm(x, pack_gate_up(gate, up)), x, gate, up)


@needs_kernel
def test_model_widths_over_threads():
    """Qwen2.5-0.5B's widths (K 896, I 4,864), more rows than a slice of the kernel (1,024), 1 and 2 threads:
    each row's result is the same bits whatever the rows beside it and the thread count."""
    x = _rand(1100, 896)
    gate, up = _weights(4864, 896)
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


@needs_kernel
def test_leading_dimensions_strides_and_no_rows():
    gate, up = _weights(40, 24)
    packed = pack_gate_up(gate.t().contiguous().t(), up)  # weights with a column stride are packed too
    wide = _rand(3, 5, 30)
    x = wide[..., 3:27]  # rows 30 elements apart
    out = swiglu_gemm(x, packed)
    assert out.shape == (3, 5, 40)
    _check(out.view(15, 40), x.reshape(15, 24), gate, up)
    assert swiglu_gemm(torch.empty(0, 24, dtype=torch.bfloat16), packed).shape == (0, 40)


@needs_kernel
def test_nan_stays_in_its_row():
    x = _rand(9, 33)
    x[4, 7] = math.nan
    gate, up = _weights(20, 33)
    out = swiglu_gemm(x, pack_gate_up(gate, up))
    assert out[4].isnan().all() and not out[[0, 1, 2, 3, 5, 6, 7, 8]].isnan().any()


@needs_kernel
def test_bad_arguments_name_the_argument():
    gate, up = _weights(16, 8)
    packed = pack_gate_up(gate, up)
    with pytest.raises(TypeError, match="x"):
        swiglu_gemm(torch.randn(3, 8), packed)
    with pytest.raises(ValueError, match=r"x must be a CPU tensor \[\.\.\., 8\]"):
        swiglu_gemm(_rand(3, 9), packed)
    with pytest.raises(TypeError, match="gate_weight"):
        pack_gate_up(gate.float(), up)
    with pytest.raises(ValueError, match="up_weight"):
        pack_gate_up(gate, up[:8])
    C = _native.native
    cases = [
        (lambda: C.swiglu_gemm(_rand(3, 8), packed.packed, 16, 9, 1), "x must be"),
        (lambda: C.swiglu_gemm(_rand(3, 8), packed.packed[:-1], 16, 8, 1), "packed"),
        (lambda: C.swiglu_gemm(_rand(3, 8), packed.packed, 32, 8, 1), "packed"),
        (lambda: C.swiglu_gemm(_rand(3, 8).float(), packed.packed, 16, 8, 1), "x"),
        (lambda: C.swiglu_gemm(_rand(8, 3).t(), packed.packed, 16, 8, 1), "x"),
        (lambda: C.swiglu_gemm_pack(gate, up[:, :4]), "up"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()


def test_refused_without_avx512_bf16():
    """On an ISA without AVX512-BF16 (every machine has the portable one) the ops say so instead of running."""
    if _native.native is None:
        pytest.skip("the C++ extension is not built")
    gate, up = _weights(16, 8)
    before = _native.native.selected_isa()
    _native.native.set_isa("portable")
    try:
        assert not swiglu_gemm_supported()
        with pytest.raises(RuntimeError, match="AVX512-BF16"):
            pack_gate_up(gate, up)
        with pytest.raises(ValueError, match="AVX512-BF16"):
            _native.native.swiglu_gemm_pack(gate, up)
    finally:
        _native.native.set_isa(before)
