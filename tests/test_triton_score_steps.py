"""The Triton kernels (CUDA path) against the pure-PyTorch reference, run on CPU by the Triton interpreter.

Each kernel is reached through the dispatcher's CUDA entry, so ``cuda.py``'s registrations are tested too.
"""

import os

# Both must be set before triton and the kernels are imported: the interpreter runs the kernels on CPU
# tensors, and outputs the launchers forget to write stay NaN.
os.environ["TRITON_INTERPRET"] = "1"
os.environ["FASTPRM_NAN_FILL_OUTPUTS"] = "1"

import math
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from batches import SEP, edge_case_rows, nan_step_batch, overflowing_logits_batch, packed_ids, random_rows
from fastprm.ops.step_scoring import schema  # defines the fastprm ops and registers their kernels
from fastprm.ops.step_scoring.grad import OutputGrads, step_logit_grad
from fastprm.ops.step_scoring.reference import find_steps_reference, reference_backward, reference_forward

FORWARD_OUTPUTS = schema.FORWARD_OUTPUTS
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-4, torch.float16: 1e-4}
# fp32 -> 16-bit rounding may differ from torch's by one unit in the last place.
ULP = {torch.float32: 1e-5, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
_CUDA = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)


def cuda_op(name: str, *args):
    """Runs the kernel registered for CUDA on CPU tensors (the interpreter does not care about devices)."""
    return getattr(torch.ops.fastprm, name).default.redispatch(_CUDA, *args)


def make_case(rows, H=24, C=2, dtype=torch.float32, bias=True, seed=0):
    """hidden [N, H], weight [C, H], bias [C] | None and the reference steps of a packed batch."""
    gen = torch.Generator().manual_seed(seed)
    input_ids, cu = packed_ids(rows)
    hidden = torch.randn(input_ids.shape[0], H, generator=gen).to(dtype)
    weight = (torch.randn(C, H, generator=gen) / math.sqrt(H)).to(dtype)
    b = torch.randn(C, generator=gen).to(dtype) if bias else None
    step_index, cu_steps = find_steps_reference(input_ids, cu, torch.tensor([SEP]))
    return hidden, weight, b, step_index, cu_steps


def named(out) -> dict[str, torch.Tensor]:
    """The forward op's outputs by name."""
    return dict(zip(FORWARD_OUTPUTS, out))


def assert_forward_close(out, ref, tol):
    assert len(out) == len(ref) == len(FORWARD_OUTPUTS)
    for name, a, b in zip(FORWARD_OUTPUTS, out, ref):
        torch.testing.assert_close(
            a, b, atol=tol, rtol=tol, equal_nan=True, msg=lambda m, n=name: f"{n}: {m}"
        )


def assert_backward_close(out, ref, hidden_dtype):
    grad_hidden, grad_weight, grad_bias = out
    assert grad_hidden.is_contiguous()
    ulp = ULP[hidden_dtype]
    torch.testing.assert_close(grad_hidden, ref[0], atol=1e-6, rtol=ulp, equal_nan=True)
    torch.testing.assert_close(grad_weight, ref[1], atol=1e-5, rtol=1e-5, equal_nan=True)
    torch.testing.assert_close(grad_bias, ref[2], atol=1e-5, rtol=1e-5)


def check_against_reference(
    hidden, weight, bias, step_index, cu_steps, positive_class=1, threshold=0.5, backward=True
):
    """Forward and backward (for a random d loss / d logits) through the CUDA entry vs the reference."""
    args = (hidden, weight, bias, step_index, cu_steps, positive_class, threshold)
    out = cuda_op("score_steps_forward", *args)
    assert_forward_close(out, reference_forward(*args), TOL[hidden.dtype])
    if not backward:
        return out
    grad = step_logits_grad(out)
    assert_backward_close(
        cuda_op("score_steps_backward", grad, hidden, weight, step_index),
        reference_backward(grad, hidden, weight, step_index),
        hidden.dtype,
    )
    return out


def step_logits_grad(out) -> torch.Tensor:
    """A random d loss / d step logits [K, C] for the forward outputs ``out``, in their float dtype."""
    return torch.randn(out[0].shape, dtype=out[0].dtype, generator=torch.Generator().manual_seed(3))


def check_rows_mode(
    hidden, weight, bias, step_index, cu_steps, positive_class=1, threshold=0.5, backward=True
):
    """check_against_reference in rows mode, on the step rows hidden[step_index]; its results are also exactly
    those of given mode with step_index = arange(K) (the same kernels reading the same rows)."""
    rows = hidden[step_index]
    out = check_against_reference(rows, weight, bias, None, cu_steps, positive_class, threshold, backward)
    arange = torch.arange(rows.shape[0])
    given = cuda_op("score_steps_forward", rows, weight, bias, arange, cu_steps, positive_class, threshold)
    pairs = list(zip(out, given))
    if backward:
        grad = step_logits_grad(out)
        pairs += zip(
            cuda_op("score_steps_backward", grad, rows, weight, None),
            cuda_op("score_steps_backward", grad, rows, weight, arange),
        )
    for a, b in pairs:
        torch.testing.assert_close(a, b, atol=0, rtol=0, equal_nan=True)
    return out


# The two ways the backends get the step rows (find mode reaches them as given mode), by mode name.
CHECKS = {"given": check_against_reference, "rows": check_rows_mode}


@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("seps", [[SEP], [SEP, 3, 5], [*range(100, 120), SEP]], ids=["one", "three", "21"])
def test_find_steps_matches_reference(id_dtype, seps):
    # Over 1024 rows, so the rows span several blocks; 21 ids span two blocks of separators.
    rows = edge_case_rows() + random_rows(torch.Generator().manual_seed(0), 12, 200)
    input_ids, cu = packed_ids(rows, id_dtype)
    sep_ids = torch.tensor(seps)
    step_index, cu_steps = cuda_op("find_steps", input_ids, cu, sep_ids)
    ref_index, ref_cu = find_steps_reference(input_ids, cu, sep_ids)
    assert input_ids.shape[0] > 1024
    assert step_index.dtype == cu_steps.dtype == torch.int64
    assert torch.equal(step_index, ref_index)
    assert torch.equal(cu_steps, ref_cu)


@pytest.mark.parametrize("rows", [[], [[], []], [[1, 2], [3]]], ids=["no-sequence", "empty", "no-separator"])
def test_find_steps_without_steps(rows):
    input_ids, cu = packed_ids(rows)
    step_index, cu_steps = cuda_op("find_steps", input_ids, cu, torch.tensor([SEP]))
    assert step_index.shape == (0,)
    assert torch.equal(cu_steps, torch.zeros(len(rows) + 1, dtype=torch.int64))


def test_find_steps_rejects_bad_cu_seqlens():
    input_ids, _ = packed_ids([[1, SEP, 2]])
    with pytest.raises(ValueError, match="non-decreasing"):
        cuda_op("find_steps", input_ids, torch.tensor([0, 2, 1, 3]), torch.tensor([SEP]))
    with pytest.raises(ValueError, match="must end at"):
        cuda_op("find_steps", input_ids, torch.tensor([0, 2]), torch.tensor([SEP]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("C", [1, 2])
@pytest.mark.parametrize("positive_class", [0, 1])
@pytest.mark.parametrize("mode", CHECKS)
def test_forward_backward_match_reference(dtype, C, positive_class, mode):
    rows = edge_case_rows() + random_rows(torch.Generator().manual_seed(C), 6, 20)
    case = make_case(rows, C=C, dtype=dtype, bias=positive_class == 1, seed=positive_class)
    CHECKS[mode](*case, positive_class=positive_class, threshold=0.4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 2])
@pytest.mark.parametrize("mode", CHECKS)
def test_gradients_match_reference_autograd(dtype, C, mode):
    """Forward kernels, the shared logit gradient and the backward kernels compose to the reference's
    autograd gradients of a loss on every output."""
    hidden, weight, bias, step_index, cu_steps = make_case(edge_case_rows(), C=C, dtype=dtype, seed=5)
    if mode == "rows":
        hidden, step_index = hidden[step_index], None
    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight, bias)]
    ref = reference_forward(*leaves, step_index, cu_steps, 1, 0.5)
    out = cuda_op("score_steps_forward", hidden, weight, bias, step_index, cu_steps, 1, 0.5)
    gen = torch.Generator().manual_seed(6)
    # One random weight per element of each differentiable output, zero where the output is NaN.
    n_float = FORWARD_OUTPUTS.index("first_error")
    weights = [torch.where(torch.isnan(t), 0.0, torch.randn(t.shape, generator=gen)) for t in out[:n_float]]
    sum(torch.where(torch.isnan(t.detach()), 0, t * w).sum() for t, w in zip(ref, weights)).backward()

    o = named(out)
    grad = step_logit_grad(
        o["step_logits"], o["step_probs"], o["prod"], cu_steps, o["argmin"], 1, OutputGrads(*weights)
    )
    grad_hidden, grad_weight, grad_bias = cuda_op("score_steps_backward", grad, hidden, weight, step_index)
    ulp = ULP[dtype]
    torch.testing.assert_close(grad_hidden, leaves[0].grad, atol=1e-6, rtol=ulp)
    torch.testing.assert_close(grad_weight.to(dtype), leaves[1].grad, atol=1e-4, rtol=max(ulp, 1e-4))
    torch.testing.assert_close(grad_bias.to(dtype), leaves[2].grad, atol=1e-4, rtol=max(ulp, 1e-4))


@pytest.mark.parametrize("C", [1, 2])
@pytest.mark.parametrize("mode", CHECKS)
def test_without_bias(C, mode):
    CHECKS[mode](*make_case(edge_case_rows(), C=C, bias=False))


@pytest.mark.parametrize("layout", ["column-slice", "transposed"])
@pytest.mark.parametrize("mode", CHECKS)
def test_non_contiguous_hidden(layout, mode):
    hidden, weight, bias, step_index, cu_steps = make_case(edge_case_rows(), H=20)
    if mode == "rows":  # a strided view of the step rows themselves
        hidden, step_index = hidden[step_index], None
    if layout == "column-slice":
        wide = torch.randn(hidden.shape[0], 50)
        wide[:, 7:27] = hidden
        hidden = wide[:, 7:27]
    else:
        hidden = hidden.T.contiguous().T
    assert not hidden.is_contiguous()
    check_against_reference(hidden, weight, bias, step_index, cu_steps)


@pytest.mark.parametrize("mode", CHECKS)
def test_long_sequence_tie_and_log_prod_stays_finite(mode):
    """2,000 steps of p = 0.5 except two tied minima in later reduction blocks: the product underflows but
    log_prod does not, and the first of the tied steps is the min."""
    _, weight, _, step_index, cu_steps = make_case([[SEP] * 2000, [1, SEP]], H=8)
    hidden = torch.zeros(2002, 8)
    hidden[step_index[[130, 300]]] = -1.0
    weight = torch.zeros_like(weight)
    weight[1] = 1 / 8  # logits (0, -1) on the two rows, (0, 0) elsewhere
    out = named(CHECKS[mode](hidden, weight, None, step_index, cu_steps, backward=False))
    p = 1 / (1 + math.exp(1))
    assert math.prod([0.5] * 2000) == 0.0
    log_prod = out["log_prod"].tolist()
    assert log_prod[0] == pytest.approx(1998 * math.log(0.5) + 2 * math.log(p), rel=1e-6)
    assert log_prod[1] == pytest.approx(math.log(0.5), rel=1e-6)
    assert out["prod"].tolist() == [0.0, pytest.approx(0.5)]
    assert out["argmin"].tolist() == [130, 2000]
    assert out["min"].tolist() == pytest.approx([p, 0.5], rel=1e-6)
    assert out["first_error"].tolist() == [130, -1]


@pytest.mark.parametrize("mode", CHECKS)
def test_nan_row_only_affects_its_sequence(mode):
    rows = [[SEP] * 300, [1, SEP, 2, SEP], [SEP, SEP]]
    hidden, weight, bias, step_index, cu_steps = make_case(rows, H=16)
    # Two NaN steps in the second reduction block of sequence 0: the first one is its min.
    hidden[step_index[200], 3] = float("nan")
    hidden[step_index[250], 0] = float("nan")
    out = named(CHECKS[mode](hidden, weight, bias, step_index, cu_steps))
    assert out["argmin"][0] == 200
    assert out["first_error"][0] <= 200
    for name in ("min", "log_prod", "prod", "mean"):
        assert torch.isnan(out[name][0]), name
    for name in ("min", "log_prod", "prod", "mean", "last"):
        assert torch.isfinite(out[name][1:]).all(), name


@pytest.mark.parametrize("mode", CHECKS)
def test_float64_falls_back_to_reference(mode):
    case = make_case(edge_case_rows(), C=2)
    hidden, weight, bias, step_index, cu_steps = (t.double() if t.is_floating_point() else t for t in case)
    if mode == "rows":
        hidden, step_index = hidden[step_index], None
    args = (hidden, weight, bias, step_index, cu_steps, 0, 0.5)
    out = cuda_op("score_steps_forward", *args)
    for a, b in zip(out, reference_forward(*args)):
        torch.testing.assert_close(a, b, atol=0, rtol=0, equal_nan=True)
    grad = step_logits_grad(out)
    for a, b in zip(
        cuda_op("score_steps_backward", grad, hidden, weight, step_index),
        reference_backward(grad, hidden, weight, step_index),
    ):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_sequence_results_do_not_depend_on_the_batch():
    rows = random_rows(torch.Generator().manual_seed(1), 4, 400, sep_rate=0.8)
    hidden, weight, bias, step_index, cu_steps = make_case(rows, H=16)
    batched = cuda_op("score_steps_forward", hidden, weight, bias, step_index, cu_steps, 1, 0.5)
    b = max(range(len(rows)), key=lambda i: int(cu_steps[i + 1] - cu_steps[i]))  # longest: several blocks
    s, e = int(cu_steps[b]), int(cu_steps[b + 1])
    alone = cuda_op(
        "score_steps_forward", hidden, weight, bias, step_index[s:e], torch.tensor([0, e - s]), 1, 0.5
    )
    assert e - s > 128
    alone, batched = named(alone), named(batched)
    for name in ("step_logits", "step_probs"):
        assert torch.equal(alone[name], batched[name][s:e]), name
    for name in ("min", "log_prod", "prod", "mean", "last", "first_error", "num_steps"):
        assert torch.equal(alone[name], batched[name][b : b + 1]), name
    assert int(alone["argmin"]) + s == int(batched["argmin"][b])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_sums_steps_sharing_a_row(dtype):
    """Given mode may list a row in several sequences: the row gets the sum of its steps' gradients, added
    in float32 (the reference adds 16-bit rows, so it is given float32 hidden and its result rounded)."""
    hidden, weight, bias, _, _ = make_case([[1] * 8], H=12, dtype=dtype)
    step_index = torch.tensor([1, 4, 6, 1, 4, 0, 1])
    cu_steps = torch.tensor([0, 3, 5, 7])
    check_against_reference(hidden, weight, bias, step_index, cu_steps, backward=False)
    grad = torch.randn(7, 2, generator=torch.Generator().manual_seed(3))
    out = cuda_op("score_steps_backward", grad, hidden, weight, step_index)
    grad_hidden, grad_weight, grad_bias = reference_backward(grad, hidden.float(), weight, step_index)
    assert_backward_close(out, (grad_hidden.to(dtype), grad_weight, grad_bias), dtype)
    again = cuda_op("score_steps_backward", grad, hidden, weight, step_index)
    assert all(torch.equal(a, b) for a, b in zip(out, again))


@pytest.mark.parametrize("mode", CHECKS)
def test_no_steps_at_all(mode):
    hidden, weight, bias, step_index, cu_steps = make_case([[], [1, 2], []], C=1)
    assert step_index.shape == (0,)
    out = named(CHECKS[mode](hidden, weight, bias, step_index, cu_steps))
    assert out["argmin"].tolist() == out["first_error"].tolist() == [-1, -1, -1]
    assert out["num_steps"].tolist() == [0, 0, 0]
    for name in ("min", "log_prod", "prod", "mean", "last"):
        assert torch.isnan(out[name]).all(), name


def test_forward_rejects_malformed_steps():
    hidden, weight, bias, _, _ = make_case([[1, 2, 3]])
    with pytest.raises(ValueError, match="strictly ascending"):
        cuda_op(
            "score_steps_forward", hidden, weight, bias, torch.tensor([2, 1]), torch.tensor([0, 2]), 1, 0.5
        )
    with pytest.raises(ValueError, match="out of range"):
        cuda_op("score_steps_forward", hidden, weight, bias, torch.tensor([3]), torch.tensor([0, 1]), 1, 0.5)
    # Rows mode: hidden's 3 rows are the steps, so cu_steps must end at 3.
    for cu_steps in (torch.tensor([0, 2]), torch.tensor([0, 4])):
        with pytest.raises(ValueError, match=r"cu_steps must end at hidden.shape\[0\] = 3"):
            cuda_op("score_steps_forward", hidden, weight, bias, None, cu_steps, 1, 0.5)


def test_fastprm_imports_without_triton():
    code = "import sys; sys.modules['triton'] = None; import fastprm; print(fastprm.score_steps.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("score_steps")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", CHECKS)
def test_a_nan_step_is_an_error(dtype, mode):
    """NaN first, NaN after a real error, NaN only: a NaN step is never correct, whatever the threshold."""
    hidden, weight, step_index, cu_steps = nan_step_batch(dtype)
    for threshold, expected in ((0.5, [0, 1, 0]), (0.0, [0, 2, 0])):
        out = named(CHECKS[mode](hidden, weight, None, step_index, cu_steps, threshold=threshold))
        assert out["first_error"].tolist() == expected, threshold


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("C", [1, 2])
@pytest.mark.parametrize("positive_class", [0, 1])
@pytest.mark.parametrize("sign", [1.0, -1.0])
# The interpreter's NumPy warns about the overflow that this test makes on purpose.
@pytest.mark.parametrize("mode", CHECKS)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_logits_overflowing_to_inf_give_exact_probabilities(dtype, C, positive_class, sign, mode):
    hidden, weight, step_index, cu_steps = overflowing_logits_batch(dtype, C, sign)
    out = named(CHECKS[mode](hidden, weight, None, step_index, cu_steps, positive_class))
    good = (sign > 0) == (positive_class == 1)
    assert out["step_probs"].tolist() == [0.5, 1.0 if good else 0.0, 0.5]
    assert out["log_prod"][0].item() == (pytest.approx(math.log(0.5)) if good else -math.inf)
