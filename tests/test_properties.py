"""Property-based checks of the C++ op against the reference over random shapes and cu_seqlens."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from batches import SEP, packed_ids
from fastprm.ops import score_steps, score_steps_reference

row = st.lists(st.sampled_from([1, 2, 3, SEP]), max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(row, max_size=8),
    H=st.integers(1, 40),
    C=st.integers(1, 2),
    positive_class=st.integers(0, 1),
    threshold=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(rows, H, C, positive_class, threshold, seed):
    gen = torch.Generator().manual_seed(seed)
    input_ids, cu = packed_ids(rows)
    hidden = torch.randn(input_ids.shape[0], H, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(C, H, generator=gen, dtype=torch.float64, requires_grad=True)
    out = score_steps(
        hidden, weight, input_ids=input_ids, cu_seqlens=cu, sep_token_ids=SEP,
        positive_class=positive_class, threshold=threshold,
    )  # fmt: skip
    ref_h, ref_w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    ref = score_steps_reference(ref_h, ref_w, None, out.step_index, out.cu_steps, positive_class, threshold)
    assert out.step_index.tolist() == [i for i, t in enumerate(input_ids.tolist()) if t == SEP]
    for name in ("step_probs", "min", "log_prod", "mean", "last"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), equal_nan=True, msg=name)
    assert torch.equal(out.first_error, ref.first_error)
    finite = out.num_steps > 0
    (out.min[finite].sum() + out.log_prod[finite].sum() + out.mean[finite].sum()).backward()
    (ref.min[finite].sum() + ref.log_prod[finite].sum() + ref.mean[finite].sum()).backward()
    if out.step_index.numel():
        torch.testing.assert_close(hidden.grad, ref_h.grad)
        torch.testing.assert_close(weight.grad, ref_w.grad)
