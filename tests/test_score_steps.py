"""The fused op (C++ CPU path, every ISA the test machine runs) against the pure-PyTorch reference."""

from __future__ import annotations

import math

import pytest
import torch

from batches import SEP, edge_case_rows, nan_step_batch, overflowing_logits_batch, packed_ids, random_rows
from fastprm.ops import find_steps, score_steps, score_steps_reference
from fastprm.ops.step_scoring.reference import find_steps_reference

OUTPUTS = ("step_logits", "step_probs", "min", "prod", "log_prod", "mean", "last")
TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1e-4, torch.float16: 1e-4}


def make_inputs(rows, H=48, C=2, dtype=torch.float32, bias=True, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    input_ids, cu = packed_ids(rows)
    hidden = (torch.randn(input_ids.shape[0], H, generator=gen) * scale).to(dtype)
    weight = (torch.randn(C, H, generator=gen) / math.sqrt(H)).to(dtype)
    b = torch.randn(C, generator=gen).to(dtype) if bias else None
    return hidden, weight, b, input_ids, cu


def loss_of(scores, seed=1):
    """A weighted sum over every differentiable output, NaN-safe for sequences without steps."""
    gen = torch.Generator().manual_seed(seed)
    total = 0
    for name in OUTPUTS:
        t = getattr(scores, name)
        w = torch.randn(t.shape, generator=gen, dtype=t.dtype)
        total = total + torch.where(torch.isnan(t.detach()), 0, t * w).sum()
    return total


def run_both(hidden, weight, bias, input_ids, cu, grads=True, **kw):
    leaves = [
        t.detach().clone().requires_grad_(grads) if t is not None else None for t in (hidden, weight, bias)
    ]
    ref_leaves = [
        t.detach().clone().requires_grad_(grads) if t is not None else None for t in (hidden, weight, bias)
    ]
    out = score_steps(*leaves, input_ids=input_ids, cu_seqlens=cu, sep_token_ids=kw.pop("seps", SEP), **kw)
    step_index, cu_steps = out.step_index, out.cu_steps
    ref = score_steps_reference(*ref_leaves, step_index, cu_steps, **kw)
    if grads:
        loss_of(out).backward()
        loss_of(ref).backward()
    return out, ref, leaves, ref_leaves


def assert_scores_close(out, ref, tol):
    torch.testing.assert_close(out.step_index, ref.step_index)
    torch.testing.assert_close(out.num_steps, ref.num_steps)
    torch.testing.assert_close(out.first_error, ref.first_error)
    for name in OUTPUTS:
        a, b = getattr(out, name).detach(), getattr(ref, name).detach()
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, equal_nan=True, msg=name)


def assert_grads_close(leaves, ref_leaves, tol):
    for name, a, b in zip(("hidden", "weight", "bias"), leaves, ref_leaves):
        if a is None:
            continue
        torch.testing.assert_close(a.grad.float(), b.grad.float(), atol=tol, rtol=tol, msg=f"grad {name}")


@pytest.mark.parametrize("C", [1, 2])
@pytest.mark.parametrize("positive_class", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_edge_cases_fp32_forward_backward(cpu_isa, C, positive_class, bias):
    inputs = make_inputs(edge_case_rows(), C=C, bias=bias)
    out, ref, leaves, ref_leaves = run_both(*inputs, positive_class=positive_class)
    assert out.num_steps.tolist() == [0, 0, 2, 1, 0, 4, 2, 0]
    assert_scores_close(out, ref, 1e-5)
    assert_grads_close(leaves, ref_leaves, 1e-5)
    empty = out.num_steps == 0
    assert torch.isnan(out.min[empty]).all() and torch.isnan(out.prod[empty]).all()
    assert (out.first_error[empty] == -1).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("H", [1, 7, 48, 133])
def test_random_batches_every_dtype(cpu_isa, dtype, H):
    gen = torch.Generator().manual_seed(H)
    rows = random_rows(gen, batch=12, max_len=30)
    out, ref, leaves, ref_leaves = run_both(*make_inputs(rows, H=H, dtype=dtype, seed=H))
    assert_scores_close(out, ref, TOL[dtype])
    # The reference rounds its d hidden to the 16-bit dtype the same way, from a differently ordered sum.
    assert_grads_close(leaves, ref_leaves, 1e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64])
def test_find_steps_id_dtypes_and_several_separators(cpu_isa, id_dtype, cu_dtype):
    rows = [[1, 2, 9, 3, 7], [], [9, 9], [7, 1, 1]]
    input_ids, cu = packed_ids(rows)
    step_index, cu_steps = find_steps(input_ids.to(id_dtype), cu.to(cu_dtype), [7, 9])
    assert step_index.tolist() == [2, 4, 5, 6, 7]
    assert cu_steps.tolist() == [0, 2, 2, 4, 5]
    assert step_index.dtype == cu_steps.dtype == torch.int64
    ref = find_steps_reference(input_ids, cu, torch.tensor([7, 9]))
    assert [t.tolist() for t in ref] == [step_index.tolist(), cu_steps.tolist()]


def test_min_ties_send_gradient_to_first_minimal_step(cpu_isa):
    hidden = torch.tensor([[1.0], [0.0], [2.0], [0.0], [0.0]], requires_grad=True)
    weight = torch.tensor([[1.0]])
    scores = score_steps(hidden, weight, step_index=torch.tensor([0, 1, 2, 3]), cu_steps=torch.tensor([0, 4]))
    assert scores.min.item() == 0.5
    scores.min.sum().backward()
    assert hidden.grad[:, 0].tolist() == [0.0, 0.25, 0.0, 0.0, 0.0]


def test_product_of_many_small_probabilities_stays_finite_in_log_space(cpu_isa):
    K = 2000
    hidden = torch.zeros(K, 4)  # logit 0 -> p = 0.5 at every step
    weight = torch.ones(1, 4)
    cu = torch.tensor([0, K])
    out = score_steps(hidden, weight, input_ids=torch.full((K,), SEP), cu_seqlens=cu, sep_token_ids=SEP)
    assert math.isfinite(out.log_prod.item())
    assert out.log_prod.item() == pytest.approx(K * math.log(0.5), rel=1e-6)
    assert out.prod.item() == 0.0  # 2^-2000 underflows; log_prod keeps the information
    # Very negative logits: log p stays exact where p itself underflows to zero.
    out = score_steps(
        torch.full((3, 1), -200.0),
        torch.ones(1, 1),
        step_index=torch.arange(3),
        cu_steps=torch.tensor([0, 3]),
    )
    assert out.log_prod.item() == pytest.approx(-600.0)


def test_nan_rows_only_affect_their_sequence(cpu_isa):
    rows = [[1, SEP, 2, SEP], [SEP, 3, SEP], [SEP]]
    hidden, weight, bias, input_ids, cu = make_inputs(rows)
    hidden[3, 5] = float("nan")  # a step row of sequence 0
    hidden[5, 0] = float("inf")  # a non-step row of sequence 1: never read
    out, ref, leaves, _ = run_both(hidden, weight, bias, input_ids, cu)
    assert_scores_close(out, ref, 1e-5)
    assert torch.isnan(out.min[0]) and torch.isnan(out.mean[0]) and torch.isnan(out.prod[0])
    for name in OUTPUTS[2:]:
        assert torch.isfinite(getattr(out, name)[1:]).all(), name
    grad = leaves[0].grad
    assert torch.isfinite(grad[4:]).all() and torch.isnan(grad[3]).any()


def test_non_contiguous_hidden(cpu_isa):
    rows = [[1, SEP, 2, SEP], [SEP, 3]]
    hidden, weight, bias, input_ids, cu = make_inputs(rows, H=40)
    wide = torch.randn(hidden.shape[0], 100)
    wide[:, 10:50] = hidden
    for view in (wide[:, 10:50], hidden.T.contiguous().T):
        assert not view.is_contiguous()
        out, ref, *_ = run_both(view, weight, bias, input_ids, cu, grads=False)
        assert_scores_close(out, ref, 1e-5)


def test_given_mode_rows_shared_by_sequences_sum_their_gradients(cpu_isa):
    """Given mode may point two sequences at one row (e.g. a shared prefix step): gradients add up."""
    hidden = torch.randn(6, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    step_index, cu_steps = torch.tensor([1, 4, 1, 5, 0]), torch.tensor([0, 2, 4, 5])
    out = score_steps(hidden, weight, step_index=step_index, cu_steps=cu_steps)
    ref_h, ref_w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    ref = score_steps_reference(ref_h, ref_w, None, step_index, cu_steps)
    loss_of(out).backward()
    loss_of(ref).backward()
    torch.testing.assert_close(hidden.grad, ref_h.grad)
    torch.testing.assert_close(weight.grad, ref_w.grad)


@pytest.mark.parametrize("C", [1, 2])
def test_gradcheck_float64(cpu_isa, C):
    rows = [[1, SEP, 2, SEP], [], [SEP, SEP, 4], [3]]
    hidden, weight, bias, input_ids, cu = make_inputs(rows, H=5, C=C, dtype=torch.float64)
    step_index, cu_steps = find_steps(input_ids, cu, SEP)

    def fn(h, w, b):
        s = score_steps(h, w, b, step_index=step_index, cu_steps=cu_steps)
        finite = s.num_steps > 0
        return s.step_logits, s.step_probs, s.min[finite], s.log_prod[finite], s.mean[finite], s.last[finite]

    leaves = [t.requires_grad_() for t in (hidden, weight, bias)]
    assert torch.autograd.gradcheck(fn, leaves)


def test_bf16_error_within_twice_a_bf16_torch_reference():
    rows = random_rows(torch.Generator().manual_seed(3), batch=16, max_len=60)
    hidden, weight, bias, input_ids, cu = make_inputs(rows, H=256, dtype=torch.float64, seed=3, scale=3.0)
    step_index, cu_steps = find_steps(input_ids, cu, SEP)
    exact = score_steps_reference(hidden, weight, bias, step_index, cu_steps)
    fused = score_steps(
        hidden.bfloat16(), weight.bfloat16(), bias.bfloat16(), step_index=step_index, cu_steps=cu_steps
    )
    # What a user would write in plain PyTorch at bf16: matmul and softmax in bf16.
    logits16 = hidden.bfloat16()[step_index] @ weight.bfloat16().T + bias.bfloat16()
    probs16 = torch.softmax(logits16, -1)[:, 1].double()
    fused_err = (fused.step_probs.double() - exact.step_probs).abs().max()
    torch_err = (probs16 - exact.step_probs).abs().max()
    assert fused_err <= 2 * torch_err, (fused_err, torch_err)
    logit_err = (fused.step_logits.double() - exact.step_logits).abs().max()
    assert logit_err <= 2 * (logits16.double() - exact.step_logits).abs().max()


def test_batch_invariance_and_determinism(cpu_isa):
    gen = torch.Generator().manual_seed(7)
    H = 96
    target = [1, SEP, 2, 3, SEP, SEP, 4, SEP]
    others = random_rows(gen, batch=40, max_len=50)
    weight = torch.randn(2, H, generator=gen)
    target_hidden = torch.randn(len(target), H, generator=gen).bfloat16()

    def score_in(batch_rows, position):
        rows = [*batch_rows[:position], target, *batch_rows[position:]]
        input_ids, cu = packed_ids(rows)
        hidden = torch.randn(input_ids.shape[0], H, generator=gen).bfloat16()
        start = int(cu[position])
        hidden[start : start + len(target)] = target_hidden
        hidden.requires_grad_()
        s = score_steps(hidden, weight, input_ids=input_ids, cu_seqlens=cu, sep_token_ids=SEP)
        (s.min[position] + s.log_prod[position] + s.step_probs.sum()).backward()
        k0, k1 = int(s.cu_steps[position]), int(s.cu_steps[position + 1])
        per_seq = [
            getattr(s, n)[position].detach() for n in ("min", "log_prod", "mean", "last", "first_error")
        ]
        return (s.step_logits[k0:k1].detach(), *per_seq, hidden.grad[start : start + len(target)])

    alone = score_in([], 0)
    for batch_rows, position in [(others, 0), (others, 17), (others, 40), (others[:5], 5), (others, 17)]:
        for a, b in zip(alone, score_in(batch_rows, position)):
            assert torch.equal(a, b)


def test_opcheck():
    rows = [[1, SEP, 2, SEP], [SEP, 3]]  # opcheck compares with NaN != NaN: no empty sequence here
    hidden, weight, bias, input_ids, cu = make_inputs(rows, H=8)
    step_index, cu_steps = find_steps(input_ids, cu, SEP)
    hidden.requires_grad_()
    weight.requires_grad_()
    torch.library.opcheck(
        torch.ops.fastprm.score_steps_forward.default, (hidden, weight, bias, step_index, cu_steps, 1, 0.5)
    )
    g = torch.randn(step_index.shape[0], 2)
    torch.library.opcheck(
        torch.ops.fastprm.score_steps_backward.default, (g, hidden.detach(), weight.detach(), step_index)
    )
    torch.library.opcheck(
        torch.ops.fastprm.find_steps.default,
        (input_ids, cu, torch.tensor([SEP])),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


def test_torch_compile_fullgraph():
    rows = [[1, SEP, 2, SEP], [], [SEP, 3], [SEP]]
    hidden, weight, bias, input_ids, cu = make_inputs(rows, H=16)

    @torch.compile(fullgraph=True)
    def scored(h, w, b):
        s = score_steps(h, w, b, input_ids=input_ids, cu_seqlens=cu, sep_token_ids=SEP)
        return s.step_probs.sum() + torch.nan_to_num(s.min).sum(), s.first_error

    h = hidden.clone().requires_grad_()
    loss, first_error = scored(h, weight, bias)
    loss.backward()
    h_ref = hidden.clone().requires_grad_()
    ref = score_steps(h_ref, weight, bias, input_ids=input_ids, cu_seqlens=cu, sep_token_ids=SEP)
    (ref.step_probs.sum() + torch.nan_to_num(ref.min).sum()).backward()
    torch.testing.assert_close(loss, ref.step_probs.sum() + torch.nan_to_num(ref.min).sum())
    torch.testing.assert_close(first_error, ref.first_error)
    torch.testing.assert_close(h.grad, h_ref.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("C", [1, 2])
def test_edge_cases_every_dtype_forward_backward(cpu_isa, dtype, C):
    """Empty sequences, no step, separator first/last, length 1 and all-separator rows in 16-bit dtypes."""
    out, ref, leaves, ref_leaves = run_both(*make_inputs(edge_case_rows(), C=C, dtype=dtype))
    assert_scores_close(out, ref, TOL[dtype])
    assert_grads_close(leaves, ref_leaves, 1e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_steps_at_all(cpu_isa, dtype):
    hidden, weight, bias, input_ids, cu = make_inputs([[], [1, 2], []], dtype=dtype)
    out, ref, leaves, _ = run_both(hidden, weight, bias, input_ids, cu)
    assert out.step_index.shape == (0,) and out.step_logits.shape == (0, 2)
    assert out.num_steps.tolist() == [0, 0, 0] and out.first_error.tolist() == [-1, -1, -1]
    for name in ("min", "prod", "log_prod", "mean", "last"):
        assert torch.isnan(getattr(out, name)).all(), name
    assert_scores_close(out, ref, TOL[dtype])
    assert (leaves[0].grad == 0).all()


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_given_mode_index_dtypes(cpu_isa, index_dtype):
    hidden, weight, bias, _, _ = make_inputs([[1] * 9])
    step_index, cu_steps = torch.tensor([0, 3, 8, 2]), torch.tensor([0, 3, 3, 4])
    out = score_steps(
        hidden, weight, bias, step_index=step_index.to(index_dtype), cu_steps=cu_steps.to(index_dtype)
    )
    ref = score_steps_reference(hidden, weight, bias, step_index, cu_steps)
    assert out.step_index.dtype == out.cu_steps.dtype == out.num_steps.dtype == torch.int64
    assert_scores_close(out, ref, 1e-5)


@pytest.mark.parametrize(
    "layout", ["bf16-head-fp32-rows", "fp32-head-bf16-rows", "strided-head", "fp16-head"]
)
def test_head_of_another_dtype_or_layout(cpu_isa, layout):
    """The kernel converts the head to float32 itself; the result is the reference's on the same tensors."""
    hidden, weight, bias, input_ids, cu = make_inputs(
        random_rows(torch.Generator().manual_seed(4), 6, 20), H=40
    )
    if layout == "bf16-head-fp32-rows":
        weight, bias = weight.bfloat16(), bias.bfloat16()
    elif layout == "fp32-head-bf16-rows":
        hidden = hidden.bfloat16()
    elif layout == "strided-head":
        weight = torch.randn(40, 2).T  # [2, 40] with column-major strides
    else:
        weight = weight.half()
    out, ref, leaves, ref_leaves = run_both(hidden, weight, bias, input_ids, cu)
    assert_scores_close(out, ref, TOL[hidden.dtype])
    for a, b in zip(leaves, ref_leaves):
        assert a.grad.dtype == b.grad.dtype == a.dtype
    assert_grads_close(leaves, ref_leaves, 1e-5 if hidden.dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_a_nan_step_is_an_error(cpu_isa, dtype):
    """NaN first, NaN after a real error, NaN only: a NaN step is never correct, whatever the threshold."""
    hidden, weight, step_index, cu_steps = nan_step_batch(dtype)
    for threshold in (0.5, 0.0):
        out = score_steps(hidden, weight, step_index=step_index, cu_steps=cu_steps, threshold=threshold)
        ref = score_steps_reference(hidden, weight, None, step_index, cu_steps, threshold=threshold)
        expected = [0, 1, 0] if threshold == 0.5 else [0, 2, 0]
        assert out.first_error.tolist() == ref.first_error.tolist() == expected, threshold
        assert out.min.isnan().all() and out.prod.isnan().all() and out.mean.isnan().all()
        assert_scores_close(out, ref, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("C", [1, 2])
@pytest.mark.parametrize("positive_class", [0, 1])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_logits_overflowing_to_inf_give_exact_probabilities(cpu_isa, dtype, C, positive_class, sign):
    """Huge finite hidden values make a logit +-inf: P is exactly 1 or 0 and log P 0 or -inf, never NaN, in
    the reference (the spec and fallback) as in the kernel, and both give the same gradients."""
    hidden, weight, step_index, cu_steps = overflowing_logits_batch(dtype, C, sign)
    hidden.requires_grad_()
    out = score_steps(hidden, weight, step_index=step_index, cu_steps=cu_steps, positive_class=positive_class)
    ref_hidden = hidden.detach().clone().requires_grad_()
    ref = score_steps_reference(ref_hidden, weight, None, step_index, cu_steps, positive_class)

    good = (sign > 0) == (positive_class == 1)  # the huge logit is the positive class's margin
    assert out.step_logits[1, C - 1].item() == sign * math.inf
    for s in (out, ref):
        assert s.step_probs.tolist() == [0.5, 1.0 if good else 0.0, 0.5]
        assert s.log_prod[0].item() == (pytest.approx(math.log(0.5)) if good else -math.inf)
        assert s.prod[0].item() == (pytest.approx(0.5) if good else 0.0)
        assert s.first_error.tolist() == [-1 if good else 1, -1]
    assert_scores_close(out, ref, TOL[dtype])
    (out.step_probs.sum() + out.log_prod[1] + out.mean.sum()).backward()
    (ref.step_probs.sum() + ref.log_prod[1] + ref.mean.sum()).backward()
    assert (
        hidden.grad[1] == 0
    ).all()  # the saturated step: sigmoid' = 0, d log P = 0 or 1 only via log_prod[0]
    torch.testing.assert_close(hidden.grad, ref_hidden.grad)


def test_large_batch_takes_the_parallel_paths(cpu_isa):
    """N >= 65536 ids and K * H > 2^18 hidden elements switch the scan, the forward and the backward to
    OpenMP: same results as the reference, and each sequence's bits are those it gets when scored alone
    (one thread)."""
    gen = torch.Generator().manual_seed(11)
    rows = random_rows(gen, batch=10, max_len=17000, sep_rate=1 / 40)
    hidden, weight, bias, input_ids, cu = make_inputs(rows, H=160, seed=11)
    assert input_ids.shape[0] >= 65536
    out, ref, leaves, ref_leaves = run_both(hidden, weight, bias, input_ids, cu)
    assert out.step_index.shape[0] * 160 > 2**18
    assert_scores_close(out, ref, 1e-5)
    assert_grads_close(leaves, ref_leaves, 1e-4)  # d weight sums 1,700 steps, in another order than torch
    b = 3
    start, end = int(cu[b]), int(cu[b + 1])
    alone = score_steps(
        hidden[start:end], weight, bias, input_ids=input_ids[start:end], cu_seqlens=torch.tensor([0, end - start]),
        sep_token_ids=SEP,
    )  # fmt: skip
    k0, k1 = int(out.cu_steps[b]), int(out.cu_steps[b + 1])
    assert torch.equal(alone.step_logits, out.step_logits[k0:k1].detach())
    for name in ("min", "log_prod", "prod", "mean", "last", "first_error"):
        assert torch.equal(getattr(alone, name)[0], getattr(out, name)[b].detach()), name


def test_the_session_fills_kernel_outputs_with_nan():
    """conftest's FASTPRM_NAN_FILL_OUTPUTS=1 reaches the allocator (and, through _native, the extension), so an
    output element that a kernel forgets to write is NaN and fails the comparisons with the reference."""
    from fastprm.kernels import contract

    assert contract.fill_outputs_with_nan
    assert contract.empty(3, dtype=torch.float32, device="cpu").isnan().all()


def test_dispatcher_autograd_with_a_nan_step_matches_the_reference(cpu_isa):
    """Through the dispatcher (torch.compile's and CUDA's route) autograd hands zeros for outputs the loss does
    not use: a NaN prod must not turn them into NaN gradients for the finite steps of its sequence."""
    rows = [[SEP, 1, SEP, SEP], [SEP, SEP]]
    hidden, weight, bias, input_ids, cu = make_inputs(rows, H=8)
    hidden[2, 3] = float("nan")  # the second step of sequence 0
    step_index, cu_steps = find_steps(input_ids, cu, SEP)
    leaf, ref_leaf = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    outputs = torch.ops.fastprm.score_steps_forward(leaf, weight, bias, step_index, cu_steps, 1, 0.5)
    step_probs, log_prod = outputs[1], outputs[3]
    ref = score_steps_reference(ref_leaf, weight, bias, step_index, cu_steps)
    for probs, log_prods in ((step_probs, log_prod), (ref.step_probs, ref.log_prod)):
        (torch.where(probs.isnan(), 0, probs).sum() + log_prods[1]).backward()
    assert torch.isfinite(leaf.grad[[0, 3, 4, 5]]).all()
    torch.testing.assert_close(leaf.grad, ref_leaf.grad, equal_nan=True)


# ---------------------------------------------------------------------------------------------------------------
# Rows mode: hidden is exactly the [K, H] step rows, no step_index.
# ---------------------------------------------------------------------------------------------------------------


def step_rows_inputs(rows, **kw):
    """make_inputs cut down to the step rows: step_rows [K, H], weight, bias and cu_steps [B + 1] int64."""
    hidden, weight, bias, input_ids, cu = make_inputs(rows, **kw)
    step_index, cu_steps = find_steps_reference(input_ids, cu, torch.tensor([SEP]))
    return hidden[step_index], weight, bias, cu_steps


def assert_rows_mode_matches(
    hidden, weight, bias, cu_steps, tol=1e-5, grad_tol=1e-5, reference_grads=True, **kw
):
    """Rows mode on hidden [K, H] against given mode with step_index = arange(K) (the same kernel reading the
    same rows: equal bits) and the reference in rows mode (within tol), forward and loss_of's gradients to
    hidden, weight and bias. ``reference_grads=False`` skips the reference's gradients, for batches with a NaN
    step: loss_of zeroes the NaN prod, which autograd through the reference turns into NaN gradients and the op
    into none. Returns the rows-mode scores."""
    K = hidden.shape[0]
    calls = {
        "rows": lambda h, w, b: score_steps(h, w, b, cu_steps=cu_steps, **kw),
        "given": lambda h, w, b: score_steps(h, w, b, step_index=torch.arange(K), cu_steps=cu_steps, **kw),
        "reference": lambda h, w, b: score_steps_reference(h, w, b, None, cu_steps.long(), **kw),
    }
    scores, leaves = {}, {}
    for mode, call in calls.items():
        leaves[mode] = [
            None if t is None else t.detach().clone().requires_grad_() for t in (hidden, weight, bias)
        ]
        scores[mode] = call(*leaves[mode])
        loss_of(scores[mode]).backward()
    rows, given = scores["rows"], scores["given"]
    assert rows.step_index is None and rows.cu_steps.dtype == torch.int64
    for name in (*OUTPUTS, "num_steps", "first_error", "cu_steps"):
        exact = dict(atol=0, rtol=0, equal_nan=True, msg=name)
        torch.testing.assert_close(getattr(rows, name).detach(), getattr(given, name).detach(), **exact)
    assert_scores_close(rows, scores["reference"], tol)
    for i, name in enumerate(("hidden", "weight", "bias")):
        a, b, r = leaves["rows"][i], leaves["given"][i], leaves["reference"][i]
        if a is None:
            continue
        torch.testing.assert_close(a.grad, b.grad, atol=0, rtol=0, equal_nan=True, msg=f"grad {name}")
        if reference_grads:
            torch.testing.assert_close(
                a.grad.float(), r.grad.float(), atol=grad_tol, rtol=grad_tol, msg=f"grad {name}"
            )
    return rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("C", [1, 2])
@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64])
def test_rows_mode_edge_cases(cpu_isa, dtype, C, cu_dtype):
    """Empty sequences, sequences without steps, length 1, all-separator rows, in every dtype and offset dtype
    (the C = 1 head without bias, with positive class 0)."""
    rows = edge_case_rows() + random_rows(torch.Generator().manual_seed(C), 6, 20)
    hidden, weight, bias, cu_steps = step_rows_inputs(rows, C=C, dtype=dtype, bias=C == 2)
    grad_tol = 1e-5 if dtype == torch.float32 else 2e-2
    out = assert_rows_mode_matches(
        hidden, weight, bias, cu_steps.to(cu_dtype), TOL[dtype], grad_tol, positive_class=C - 1
    )
    assert out.num_steps[:8].tolist() == [0, 0, 2, 1, 0, 4, 2, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B", [0, 3])
def test_rows_mode_no_steps_at_all(cpu_isa, dtype, B):
    hidden, weight, bias = torch.empty(0, 16, dtype=dtype), torch.randn(2, 16, dtype=dtype), None
    out = assert_rows_mode_matches(hidden, weight, bias, torch.zeros(B + 1, dtype=torch.int64), TOL[dtype])
    assert out.step_logits.shape == (0, 2) and out.num_steps.tolist() == [0] * B
    assert all(torch.isnan(getattr(out, name)).all() for name in ("min", "prod", "log_prod", "mean", "last"))


def test_rows_mode_min_ties_send_gradient_to_first_minimal_step(cpu_isa):
    hidden = torch.tensor([[1.0], [0.0], [2.0], [0.0]], requires_grad=True)
    scores = score_steps(hidden, torch.tensor([[1.0]]), cu_steps=torch.tensor([0, 4]))
    assert scores.min.item() == 0.5
    scores.min.sum().backward()
    assert hidden.grad[:, 0].tolist() == [0.0, 0.25, 0.0, 0.0]
    assert_rows_mode_matches(hidden.detach(), torch.tensor([[1.0]]), None, torch.tensor([0, 4]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_rows_mode_nan_step_is_an_error(cpu_isa, dtype):
    hidden, weight, step_index, cu_steps = nan_step_batch(dtype)
    assert torch.equal(step_index, torch.arange(hidden.shape[0]))  # the batch's rows are its steps
    for threshold, expected in ((0.5, [0, 1, 0]), (0.0, [0, 2, 0])):
        out = assert_rows_mode_matches(
            hidden, weight, None, cu_steps, TOL[dtype], reference_grads=False, threshold=threshold
        )
        assert out.first_error.tolist() == expected, threshold


def test_rows_mode_underflow_stays_finite_in_log_space(cpu_isa):
    K = 2000
    out = assert_rows_mode_matches(torch.zeros(K, 4), torch.ones(1, 4), None, torch.tensor([0, K]))
    assert out.log_prod.item() == pytest.approx(K * math.log(0.5), rel=1e-6) and out.prod.item() == 0.0
    out = assert_rows_mode_matches(torch.full((3, 1), -200.0), torch.ones(1, 1), None, torch.tensor([0, 3]))
    assert out.log_prod.item() == pytest.approx(-600.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rows_mode_logits_overflowing_to_inf(cpu_isa, dtype):
    for C in (1, 2):
        for sign in (1.0, -1.0):
            hidden, weight, step_index, cu_steps = overflowing_logits_batch(dtype, C, sign)
            assert torch.equal(step_index, torch.arange(hidden.shape[0]))
            out = assert_rows_mode_matches(hidden, weight, None, cu_steps, TOL[dtype])
            assert out.step_logits[1, C - 1].item() == sign * math.inf


def test_rows_mode_non_contiguous_rows(cpu_isa):
    hidden, weight, bias, cu_steps = step_rows_inputs(edge_case_rows(), H=40)
    wide = torch.randn(hidden.shape[0], 100)
    wide[:, 10:50] = hidden
    for view in (wide[:, 10:50], hidden.T.contiguous().T):
        assert not view.is_contiguous()
        assert_rows_mode_matches(view, weight, bias, cu_steps)


def test_rows_mode_large_batch_takes_the_parallel_paths(cpu_isa):
    """K * H > 2^18: the forward and the backward run on OpenMP threads; the backward writes every row of
    d hidden itself (the session NaN-fills it first)."""
    rows = random_rows(torch.Generator().manual_seed(12), batch=40, max_len=300, sep_rate=0.3)
    hidden, weight, bias, cu_steps = step_rows_inputs(rows, H=160, seed=12)
    assert hidden.shape[0] * 160 > 2**18
    assert_rows_mode_matches(hidden, weight, bias, cu_steps, grad_tol=1e-4)


@pytest.mark.parametrize("C", [1, 2])
def test_rows_mode_gradcheck_float64(cpu_isa, C):
    rows = [[1, SEP, 2, SEP], [], [SEP, SEP, 4], [3]]
    hidden, weight, bias, cu_steps = step_rows_inputs(rows, H=5, C=C, dtype=torch.float64)

    def fn(h, w, b):
        s = score_steps(h, w, b, cu_steps=cu_steps)
        finite = s.num_steps > 0
        return s.step_logits, s.step_probs, s.min[finite], s.log_prod[finite], s.mean[finite], s.last[finite]

    assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in (hidden, weight, bias)])


def test_rows_mode_opcheck_and_dispatcher_autograd(cpu_isa):
    """The schemas' optional step_index: fake implementations, autograd registration and the dispatcher's
    route (torch.compile's and CUDA's) in rows mode."""
    hidden, weight, bias, cu_steps = step_rows_inputs([[1, SEP, 2, SEP], [SEP, 3]], H=8)  # no NaN: opcheck
    hidden.requires_grad_()
    torch.library.opcheck(
        torch.ops.fastprm.score_steps_forward.default, (hidden, weight, bias, None, cu_steps, 1, 0.5)
    )
    g = torch.randn(hidden.shape[0], 2)
    torch.library.opcheck(torch.ops.fastprm.score_steps_backward.default, (g, hidden.detach(), weight, None))
    outputs = torch.ops.fastprm.score_steps_forward(hidden, weight, bias, None, cu_steps, 1, 0.5)
    (outputs[1].sum() + outputs[2].sum()).backward()
    ref_hidden = hidden.detach().clone().requires_grad_()
    ref = score_steps_reference(ref_hidden, weight, bias, None, cu_steps)
    (ref.step_probs.sum() + ref.min.sum()).backward()
    torch.testing.assert_close(hidden.grad, ref_hidden.grad)


def test_rows_mode_torch_compile_fullgraph():
    hidden, weight, bias, cu_steps = step_rows_inputs([[1, SEP, 2, SEP], [], [SEP, 3], [SEP]], H=16)

    def loss(s):
        return s.step_probs.sum() + torch.nan_to_num(s.min).sum()

    @torch.compile(fullgraph=True)
    def scored(h, w, b):
        s = score_steps(h, w, b, cu_steps=cu_steps)
        return loss(s), s.first_error

    h, h_ref = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    value, first_error = scored(h, weight, bias)
    value.backward()
    ref = score_steps_reference(h_ref, weight, bias, None, cu_steps)
    loss(ref).backward()
    torch.testing.assert_close(value, loss(ref))
    torch.testing.assert_close(first_error, ref.first_error)
    torch.testing.assert_close(h.grad, h_ref.grad)
