"""Fused step loss (step rows only) against a per-token reference, for every head kind."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from batches import SEP, packed_ids, random_rows
from fastprm.ops import find_steps, score_steps
from fastprm.training.loss import step_bce, step_loss_mask


def reference_loss(hidden, weight, bias, step_index, labels, mask, positive_class, pos_weight):
    """Per-token logits for every row (what a token-classification trainer computes), then the steps."""
    logits = hidden @ weight.T + (0 if bias is None else bias)
    step_logits = logits[step_index]
    if weight.shape[0] == 1:
        z = step_logits[:, 0] if positive_class == 1 else -step_logits[:, 0]
        per_step = F.binary_cross_entropy_with_logits(
            z, labels, pos_weight=None if pos_weight is None else torch.tensor(pos_weight), reduction="none"
        )
    else:
        # Softmax cross-entropy with soft targets over the two classes.
        logp = torch.log_softmax(step_logits, -1)
        target = (
            torch.stack([1 - labels, labels], 1)
            if positive_class == 1
            else torch.stack([labels, 1 - labels], 1)
        )
        w = (
            torch.ones(2)
            if pos_weight is None
            else torch.tensor([1.0, pos_weight] if positive_class == 1 else [pos_weight, 1.0])
        )
        per_step = -(target * logp * w).sum(1)
    return (per_step * mask).sum() / mask.sum().clamp(min=1)


@pytest.mark.parametrize("C,positive_class,bias", [(1, 1, True), (1, 0, True), (2, 1, True), (2, 0, False)])
@pytest.mark.parametrize("mode", ["all", "last", "first_error"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("pos_weight", [None, 2.5])
def test_fused_loss_matches_per_token_reference(C, positive_class, bias, mode, soft, pos_weight):
    """C = 2 with positive_class 0 and no bias is the LM-head-pair (Math-Shepherd) convention."""
    gen = torch.Generator().manual_seed(C * 10 + positive_class)
    rows = random_rows(gen, batch=10, max_len=30, sep_rate=0.25)
    input_ids, cu = packed_ids(rows)
    H = 24
    hidden = torch.randn(input_ids.shape[0], H, generator=gen, requires_grad=True)
    weight = torch.randn(C, H, generator=gen, requires_grad=True)
    b = torch.randn(C, generator=gen, requires_grad=True) if bias else None
    step_index, cu_steps = find_steps(input_ids, cu, SEP)
    K = step_index.shape[0]
    labels = torch.rand(K, generator=gen) if soft else (torch.rand(K, generator=gen) > 0.3).float()

    out = score_steps(
        hidden, weight, b, step_index=step_index, cu_steps=cu_steps, positive_class=positive_class
    )
    loss = step_bce(
        out.step_logits, labels, cu_steps, positive_class=positive_class, mode=mode, pos_weight=pos_weight
    )
    leaves = [t for t in (hidden, weight, b) if t is not None]
    grads = torch.autograd.grad(loss, leaves)

    mask = step_loss_mask(labels, cu_steps, mode)
    ref = reference_loss(hidden, weight, b, step_index, labels, mask, positive_class, pos_weight)
    ref_grads = torch.autograd.grad(ref, leaves)
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)


def test_label_modes():
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.2, 0.9])
    cu_steps = torch.tensor([0, 4, 4, 6, 8])
    assert step_loss_mask(labels, cu_steps, "last").tolist() == [
        False,
        False,
        False,
        True,
        False,
        True,
        False,
        True,
    ]
    # Sequence 0: stop after the first negative (index 1); sequence 2: no negative; sequence 3: soft 0.2 is negative.
    assert step_loss_mask(labels, cu_steps, "first_error").tolist() == [
        True,
        True,
        False,
        False,
        True,
        True,
        True,
        False,
    ]


def test_soft_labels_are_not_rounded():
    z = torch.zeros(1, 1)
    loss = step_bce(z, torch.tensor([0.3]), torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(
        F.binary_cross_entropy_with_logits(torch.zeros(1), torch.tensor([0.3])).item()
    )
