"""Property-based checks of the C++ op against the reference over random shapes and offsets."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from batches import SEP, packed_ids
from fastprm.ops import score_steps, score_steps_reference

row = st.lists(st.sampled_from([1, 2, 3, SEP]), max_size=12)
# Everything but the step layout: the head's shape, the op's options and the seed of the float64 leaves.
HEAD_AND_OPTIONS = dict(
    H=st.integers(1, 40),
    C=st.integers(1, 2),
    positive_class=st.integers(0, 1),
    threshold=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)


def float64_leaves(seed: int, N: int, H: int, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [N, H] and weight [C, H], random float64 leaves that require grad."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=gen, dtype=torch.float64, requires_grad=True)
    return hidden, torch.randn(C, H, generator=gen, dtype=torch.float64, requires_grad=True)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(row, max_size=8), **HEAD_AND_OPTIONS)
def test_matches_reference(rows, H, C, positive_class, threshold, seed):
    input_ids, cu = packed_ids(rows)
    hidden, weight = float64_leaves(seed, input_ids.shape[0], H, C)
    out = score_steps(
        hidden, weight, input_ids=input_ids, cu_seqlens=cu, sep_token_ids=SEP,
        positive_class=positive_class, threshold=threshold,
    )  # fmt: skip
    assert out.step_index.tolist() == [i for i, t in enumerate(input_ids.tolist()) if t == SEP]
    assert_matches_reference(out, hidden, weight, positive_class, threshold)


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.integers(0, 6), max_size=8), **HEAD_AND_OPTIONS)
def test_rows_mode_matches_reference(steps, H, C, positive_class, threshold, seed):
    """Rows mode: hidden is the [K, H] step rows, sequence b's being rows cu_steps[b] : cu_steps[b + 1]."""
    cu_steps = torch.tensor([0, *steps]).cumsum(0)
    hidden, weight = float64_leaves(seed, sum(steps), H, C)
    out = score_steps(hidden, weight, cu_steps=cu_steps, positive_class=positive_class, threshold=threshold)
    assert out.step_index is None and out.num_steps.tolist() == steps
    assert_matches_reference(out, hidden, weight, positive_class, threshold)


def assert_matches_reference(out, hidden, weight, positive_class, threshold):
    """The op's scores ``out`` of float64 leaves hidden and weight against the reference on the same steps,
    forward and the gradients of a loss on the finite reductions."""
    ref_h, ref_w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    ref = score_steps_reference(ref_h, ref_w, None, out.step_index, out.cu_steps, positive_class, threshold)
    for name in ("step_probs", "min", "log_prod", "mean", "last"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), equal_nan=True, msg=name)
    assert torch.equal(out.first_error, ref.first_error)
    finite = out.num_steps > 0
    (out.min[finite].sum() + out.log_prod[finite].sum() + out.mean[finite].sum()).backward()
    (ref.min[finite].sum() + ref.log_prod[finite].sum() + ref.mean[finite].sum()).backward()
    if out.step_probs.numel():
        torch.testing.assert_close(hidden.grad, ref_h.grad)
        torch.testing.assert_close(weight.grad, ref_w.grad)
