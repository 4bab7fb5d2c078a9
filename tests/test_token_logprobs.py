"""fastprm.ops.token_logprobs against the pure-PyTorch reference (CPU path and, under the Triton interpreter,
the CUDA path's row kernels), its gradients, edge cases and bad inputs, its 16-bit GEMMs against eager
transformers-style code; and fastprm.ops.step_sums."""

from __future__ import annotations

import math

import pytest
import torch

from fastprm.ops import step_sums, token_logprobs, token_logprobs_reference
from fastprm.ops.token_logprobs import chunked
from fastprm.ops.token_logprobs.api import DEFAULT_CHUNK_SIZE, DEFAULT_ROW_CHUNK_SIZE
from fastprm.ops.token_logprobs.reference import reference_backward, reference_forward

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}
# Gradients come back in the inputs' dtype: 16-bit ones may round one unit in the last place apart.
GRAD_RTOL = {**TOL, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
HALF = (torch.bfloat16, torch.float16)


def make_case(N=23, H=16, V=37, dtype=torch.float32, seed=0):
    """hidden [N, H], weight [V, H] and targets [N]. 16-bit cases take values on a grid (multiples of 1/64 and
    1/128 below 2, exact in bf16) whose products and sums are exact in float32 in any order: every 16-bit GEMM
    rounds the same exact logits, whichever kernel runs it, so forward results are held to float32
    tolerances while the logits' rounding to 16 bits (the point of ``gemm_dtype="input"``) is real."""
    gen = torch.Generator().manual_seed(seed)
    if dtype in HALF:
        hidden = torch.randint(-128, 128, (N, H), generator=gen) / 64
        weight = torch.randint(-128, 128, (V, H), generator=gen) / 128
    else:
        hidden = torch.randn(N, H, generator=gen)
        weight = torch.randn(V, H, generator=gen)
    targets = torch.randint(0, V, (N,), generator=gen)
    return hidden.to(dtype), weight.to(dtype), targets


def upstream_grad(n: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(1))


def assert_grads_close(got, want, dtype, chunks_summed, rounded):
    """Gradients (grad_hidden, grad_weight) of the op vs an oracle's. With 16-bit GEMMs (``rounded``) each
    chunk's product is rounded to 16 bits before the sum over chunks, so they may differ by one rounding of
    the largest gradient per summed chunk (``chunks_summed``: vocabulary chunks for grad_hidden, row chunks for
    grad_weight) and one for the final result."""
    for a, b, n in zip(got, want, chunks_summed):
        assert a.dtype == b.dtype
        if rounded:
            largest = b.abs().max().item() if b.numel() else 0.0
            atol = (n + 1) * torch.finfo(dtype).eps * largest
            torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=0)
        else:
            torch.testing.assert_close(a.float(), b.float(), atol=TOL[dtype], rtol=GRAD_RTOL[dtype])


def chunk_counts(N: int, V: int, chunk_size=DEFAULT_CHUNK_SIZE, row_chunk_size=DEFAULT_ROW_CHUNK_SIZE):
    """(vocabulary chunks, row chunks) of a call: how many products grad_hidden and grad_weight sum."""
    return len(range(0, V, chunk_size)), len(range(0, N, row_chunk_size))


def check(hidden, weight, targets, temperature=1.0, backward=True, gemm_dtype="input", **chunks):
    """Forward and backward (a random upstream gradient) of the op vs the reference."""
    tol = TOL[hidden.dtype]
    h, w = hidden.clone().requires_grad_(backward), weight.clone().requires_grad_(backward)
    out = token_logprobs(h, w, targets, temperature=temperature, gemm_dtype=gemm_dtype, **chunks)
    ref_h, ref_w = hidden.clone().requires_grad_(backward), weight.clone().requires_grad_(backward)
    ref = token_logprobs_reference(ref_h, ref_w, targets, temperature, gemm_dtype)
    assert out.dtype == (torch.float64 if hidden.dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol, equal_nan=True)
    if backward:
        grad = upstream_grad(out.shape[0]).to(out.dtype)
        got = torch.autograd.grad(out, (h, w), grad)
        want = torch.autograd.grad(ref, (ref_h, ref_w), grad)
        rounded = gemm_dtype == "input" and hidden.dtype in HALF
        counts = chunk_counts(hidden.shape[0], weight.shape[0], **chunks)
        assert_grads_close(got, want, hidden.dtype, counts, rounded)
    return out


@pytest.mark.parametrize(
    "chunk_size,row_chunk_size",
    [(37, 23), (10, 5), (1, 100), (64, 7)],
    ids=["whole", "uneven", "1-col", "big-v"],
)
def test_matches_reference_fp64_for_every_chunking(chunk_size, row_chunk_size):
    check(*make_case(dtype=torch.float64), chunk_size=chunk_size, row_chunk_size=row_chunk_size)


@pytest.mark.parametrize("gemm_dtype", ["input", "float32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_reference_in_each_dtype(dtype, gemm_dtype):
    check(*make_case(dtype=dtype), chunk_size=10, row_chunk_size=8, gemm_dtype=gemm_dtype)


def test_mixed_dtypes_multiply_in_the_promoted_dtype():
    hidden, weight, targets = make_case(dtype=torch.bfloat16)
    # gemm_dtype="input" with bf16 hidden and a float32 weight: GEMMs in the promoted dtype, float32.
    mixed = token_logprobs(hidden, weight.float(), targets, chunk_size=10)
    torch.testing.assert_close(
        mixed, token_logprobs(hidden, weight, targets, chunk_size=10, gemm_dtype="float32")
    )
    torch.testing.assert_close(mixed, token_logprobs_reference(hidden, weight.float(), targets))


def eager_logprobs(hidden, weight, targets, temperature=1.0):
    """What transformers-style code computes from a 16-bit model: the LM head's logits in the model's dtype,
    upcast to float32, divided by the temperature, log_softmax, gather."""
    logits = torch.nn.functional.linear(hidden, weight).float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype", HALF)
def test_16_bit_gemms_match_eager(dtype, temperature):
    hidden, weight, targets = make_case(dtype=dtype)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    out = token_logprobs(h, w, targets, temperature=temperature, chunk_size=10, row_chunk_size=8)
    eager_h, eager_w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    eager = eager_logprobs(eager_h, eager_w, targets, temperature)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    grad = upstream_grad(out.shape[0])
    got = torch.autograd.grad(out, (h, w), grad)
    want = torch.autograd.grad(eager, (eager_h, eager_w), grad)
    assert_grads_close(got, want, dtype, chunk_counts(23, 37, 10, 8), rounded=True)
    # float32 GEMMs do not round the logits: a different answer, which the comparison above would catch.
    unrounded = token_logprobs(hidden, weight, targets, temperature=temperature, gemm_dtype="float32")
    assert (unrounded - eager).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", HALF)
def test_16_bit_results_do_not_depend_on_the_chunks(dtype):
    hidden, weight, targets = make_case(N=19, V=53, dtype=dtype)
    grad = upstream_grad(19)
    results = []
    for chunk_size, row_chunk_size in [(53, 19), (10, 8), (7, 5), (1, 100), (64, 3)]:
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        out = token_logprobs(h, w, targets, chunk_size=chunk_size, row_chunk_size=row_chunk_size)
        results.append((out, torch.autograd.grad(out, (h, w), grad), (chunk_size, row_chunk_size)))
    (whole, whole_grads, _), *others = results
    for out, grads, chunks in others:
        torch.testing.assert_close(out, whole, atol=1e-5, rtol=1e-5)
        assert_grads_close(grads, whole_grads, dtype, chunk_counts(19, 53, *chunks), rounded=True)


@pytest.mark.parametrize("fast_gemm", [True, False], ids=["16-bit-gemm", "float32-gemm-rounded"])
@pytest.mark.parametrize("dtype", HALF)
def test_both_routes_of_16_bit_gemms(dtype, fast_gemm, monkeypatch):
    """A 16-bit GEMM, or a float32 GEMM over the same values with its result rounded (where the device has no
    fast 16-bit GEMM), compute the same: both match the reference."""
    monkeypatch.setattr(chunked, "_fast_gemm", lambda *_: fast_gemm)
    check(*make_case(dtype=dtype), temperature=0.8, chunk_size=9, row_chunk_size=7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_targets_at_chunk_boundaries(dtype):
    hidden, weight, _ = make_case(N=9, V=37, dtype=dtype)
    targets = torch.tensor([0, 9, 10, 19, 20, 29, 30, 35, 36])  # each chunk's first and last column; V - 1
    check(hidden, weight, targets, chunk_size=10, row_chunk_size=4)


def test_gradcheck():
    hidden, weight, targets = make_case(N=5, H=4, V=9, dtype=torch.float64)
    fn = lambda h, w: token_logprobs(h, w, targets, chunk_size=4, row_chunk_size=2, temperature=0.7)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden.requires_grad_(), weight.requires_grad_()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [0.3, 2.5])
def test_temperature(temperature, dtype):
    check(*make_case(dtype=dtype), temperature=temperature, chunk_size=9, row_chunk_size=6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N,V", [(0, 37), (1, 37), (23, 1)], ids=["N=0", "N=1", "V=1"])
def test_degenerate_sizes(N, V, dtype):
    hidden, weight, targets = make_case(N=N, V=V, dtype=dtype)
    out = check(hidden, weight, targets, chunk_size=8, row_chunk_size=4)
    if V == 1:
        assert torch.equal(out, torch.zeros(N))


def test_ties_and_large_logits():
    hidden, weight, targets = make_case(N=6, V=30)
    weight[10:20] = weight[0]  # eleven equal logits per row
    check(hidden * 1e3, weight, targets, chunk_size=7, row_chunk_size=4)  # logits ~1e4: exp would overflow
    out = token_logprobs(torch.zeros(4, 16), weight, targets[:4], chunk_size=7)  # all logits tie
    torch.testing.assert_close(out, torch.full((4,), -math.log(30)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("target_dtype", [torch.int32, torch.int64])
def test_nan_rows_stay_in_their_row(target_dtype, dtype):
    hidden, weight, targets = make_case(dtype=dtype)
    hidden[3, 2] = float("nan")
    hidden[17, 0] = float("inf")
    out = token_logprobs(hidden, weight, targets.to(target_dtype), chunk_size=10, row_chunk_size=8)
    bad = torch.zeros(out.shape[0], dtype=torch.bool)
    bad[[3, 17]] = True
    assert out[bad].isnan().all()
    torch.testing.assert_close(out[~bad], token_logprobs_reference(hidden, weight, targets)[~bad])


def test_strided_hidden_and_the_registered_op():
    hidden, weight, targets = make_case(N=12, H=32)
    strided = hidden[:, ::2]
    expected = token_logprobs_reference(strided, weight[:, :16], targets)
    torch.testing.assert_close(token_logprobs(strided, weight[:, :16], targets, chunk_size=10), expected)
    # The registered op (what torch.compile and other devices call) gives the same.
    logprobs, _ = torch.ops.fastprm.token_logprobs_forward(
        strided, weight[:, :16], targets, 1.0, 10, 5, torch.float32
    )
    torch.testing.assert_close(logprobs, expected)
    # Schema, fake (meta) and autograd registrations are consistent with the kernel, 16-bit GEMMs included.
    for dtype in (torch.float64, torch.bfloat16):
        h, w = hidden.to(dtype).requires_grad_(), weight.to(dtype).requires_grad_()
        torch.library.opcheck(
            torch.ops.fastprm.token_logprobs_forward.default, (h, w, targets, 0.8, 10, 5, dtype)
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_row_kernels_under_the_interpreter(dtype):
    """The CUDA path's loop with its Triton row kernels, whose tiles are float32 whatever the GEMM dtype (the
    GEMMs are torch's, so the interpreter's bf16 tl.dot never runs)."""
    pytest.importorskip("triton")
    from fastprm.kernels import token_logprobs as triton_kernels  # TRITON_INTERPRET=1 is set by conftest

    hidden, weight, targets = make_case(N=11, V=41, dtype=dtype)
    hidden[4] = float("nan")
    weight[5:9] = weight[0]
    for temperature in (1.0, 0.6):
        logprobs, lse = chunked.forward(hidden, weight, targets, temperature, 16, 4, dtype, triton_kernels)
        ref_logprobs, ref_lse = reference_forward(hidden, weight, targets, temperature, dtype)
        torch.testing.assert_close(logprobs, ref_logprobs, equal_nan=True)
        torch.testing.assert_close(lse, ref_lse, equal_nan=True)
    hidden[4] = 0.0
    _, lse = chunked.forward(hidden, weight, targets, 0.6, 16, 4, dtype, triton_kernels)
    grad = upstream_grad(11)
    got = chunked.backward(grad, hidden, weight, targets, lse, 0.6, 16, 4, dtype, triton_kernels)
    want = reference_backward(grad, hidden, weight, targets, lse, 0.6, dtype)
    assert_grads_close(got, want, dtype, chunk_counts(11, 41, 16, 4), rounded=dtype in HALF)


@pytest.mark.parametrize(
    "change,error,match",
    [
        ({"hidden": [1.0]}, TypeError, "hidden must be a torch.Tensor"),
        ({"hidden": torch.zeros(3, 4, dtype=torch.int64)}, TypeError, "hidden must have dtype"),
        ({"hidden": torch.zeros(3)}, ValueError, "hidden must be 2-D"),
        ({"lm_head_weight": torch.zeros(5, 3)}, ValueError, "lm_head_weight has H = 3"),
        ({"lm_head_weight": torch.zeros(0, 4)}, ValueError, "at least one row"),
        ({"targets": torch.zeros(3)}, TypeError, "targets must have dtype"),
        ({"targets": torch.zeros(2, dtype=torch.int64)}, ValueError, r"targets must be \[N\] = \[3\]"),
        ({"targets": torch.tensor([0, 5, 1])}, ValueError, r"targets\[1\] = 5 is out of range \[0, 5\)"),
        ({"targets": torch.tensor([0, -1, 1])}, ValueError, r"targets\[1\] = -1"),
        ({"temperature": float("inf")}, ValueError, "temperature must be finite"),
        ({"temperature": 0.0}, ValueError, "temperature must be finite and positive"),
        ({"temperature": "1"}, TypeError, "temperature must be a number"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be positive"),
        ({"row_chunk_size": 2.0}, TypeError, "row_chunk_size must be an int"),
        ({"gemm_dtype": "bf16"}, ValueError, r"gemm_dtype must be one of \('input', 'float32'\), got 'bf16'"),
        ({"lm_head_weight": torch.zeros(5, 4, device="meta")}, ValueError, "lm_head_weight is on meta"),
    ],
)
def test_bad_inputs(change, error, match):
    args = {
        "hidden": torch.zeros(3, 4),
        "lm_head_weight": torch.zeros(5, 4),
        "targets": torch.tensor([0, 4, 1]),
    }
    args.update(change)
    with pytest.raises(error, match=match):
        token_logprobs(**args)


def test_step_sums():
    values = torch.arange(10.0, requires_grad=True)
    cu = torch.tensor([0, 4, 4, 10], dtype=torch.int32)
    sums = step_sums(values, cu, torch.tensor([1, 3, 6, 8]), torch.tensor([0, 2, 2, 4]))
    assert sums.tolist() == [1.0, 5.0, 15.0, 15.0]  # row 9 is after sequence 2's last step: in no step
    sums.sum().backward()
    assert values.grad.tolist() == [1.0] * 9 + [0.0]
    nan = torch.tensor([1.0, float("nan"), 2.0, 3.0])
    assert step_sums(nan, torch.tensor([0, 4]), torch.tensor([1, 3]), torch.tensor([0, 2]))[1] == 5.0
    empty = step_sums(
        torch.zeros(0), torch.tensor([0, 0]), torch.zeros(0, dtype=torch.int64), torch.tensor([0, 0])
    )
    assert empty.shape == (0,)
    with pytest.raises(ValueError, match="outside its sequence"):
        step_sums(torch.zeros(6), torch.tensor([0, 3, 6]), torch.tensor([4, 5]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="cu_seqlens must end"):
        step_sums(torch.zeros(6), torch.tensor([0, 5]), torch.tensor([4]), torch.tensor([0, 1]))
