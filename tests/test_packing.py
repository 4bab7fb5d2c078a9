"""Backbone batch layouts: padded [B, T] and packed varlen [1, N] give the same step logits and gradients."""

from __future__ import annotations

import pytest
import torch

import checkpoints as ck
from fastprm.packing import pack_rows, pad_rows
from fastprm.training.loss import step_bce

ROWS = [[5, 6, 7, 8, 9, 10], [11], [12, 13, 14], [15, 16, 17, 18]]
ENDS = [[2, 5], [0], [], [0, 3]]  # a length-1 row, a row without steps, steps on the first and last token


def test_padded_layout():
    batch = pad_rows(ROWS, ENDS, pad_id=0)
    assert batch.input_ids.shape == (4, 6) and batch.position_ids is None
    assert batch.attention_mask.sum(1).tolist() == [6, 1, 3, 4]
    assert batch.input_ids[1].tolist() == [11, 0, 0, 0, 0, 0]
    assert batch.step_index.tolist() == [2, 5, 6, 18, 21]
    assert batch.cu_steps.tolist() == [0, 2, 3, 3, 5]


def test_padded_layout_of_equal_lengths_has_no_mask():
    assert pad_rows([[1, 2], [3, 4]], [[1], [0, 1]], pad_id=0).attention_mask is None


def test_packed_layout():
    batch = pack_rows(ROWS, ENDS)
    assert batch.input_ids.tolist() == [[t for row in ROWS for t in row]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 0, 0, 1, 2, 0, 1, 2, 3]]
    assert batch.attention_mask is None
    assert batch.step_index.tolist() == [2, 5, 6, 10, 13]
    assert batch.cu_steps.tolist() == [0, 2, 3, 3, 5]


@pytest.fixture(scope="module")
def prm(tmp_path_factory):
    from fastprm.models import PRM

    path = tmp_path_factory.mktemp("prm")
    ck.write_qwen25_math_prm(path)
    return PRM.from_pretrained(path, dtype=torch.float32)


def _logits_and_grads(prm, batch, labels):
    prm.zero_grad()
    logits, _ = prm(
        batch.input_ids, batch.attention_mask, batch.step_index, batch.cu_steps, batch.position_ids
    )
    step_bce(logits, labels, batch.cu_steps).backward()
    return logits.detach(), {k: p.grad.clone() for k, p in prm.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_and_padded_batches_agree_forward_and_backward(prm, checkpointing):
    tok = prm.tokenizer
    rows = [tok(f"{'word ' * n}is {n}.", add_special_tokens=False)["input_ids"] for n in (1, 9, 3, 14)]
    rows[0] = rows[0][:1]  # a length-1 row
    ends = [[0], [2, len(rows[1]) - 1], [len(rows[2]) - 1], [0, 5, len(rows[3]) - 1]]
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    if checkpointing:
        prm.activation_checkpointing_enable()
        assert prm.backbone.is_gradient_checkpointing
    prm.train()
    try:
        padded = _logits_and_grads(prm, pad_rows(rows, ends, pad_id=0), labels)
        packed = _logits_and_grads(prm, pack_rows(rows, ends), labels)
    finally:
        backbone = prm.backbone
        getattr(backbone, "activation_checkpointing_disable", backbone.gradient_checkpointing_disable)()
        prm.eval()
    torch.testing.assert_close(packed[0], padded[0], atol=1e-5, rtol=0)
    assert padded[1].keys() == packed[1].keys()
    for name in padded[1]:
        torch.testing.assert_close(packed[1][name], padded[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_varlen_attention_matches_transformers_sdpa(prm):
    """fastprm's default CPU attention (per-row causal SDPA) against transformers' masked SDPA."""
    assert prm.backbone.config._attn_implementation == "fastprm_varlen"
    rows = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15]]
    batch = pad_rows(rows, [[6], [0], [2]], pad_id=0)
    varlen = prm.hidden_states(batch.input_ids, batch.attention_mask)
    prm.backbone.set_attn_implementation("sdpa")
    try:
        sdpa = prm.hidden_states(batch.input_ids, batch.attention_mask)
    finally:
        prm.backbone.set_attn_implementation("fastprm_varlen")
    real = batch.attention_mask.bool()
    torch.testing.assert_close(varlen[real], sdpa[real], atol=1e-5, rtol=0)


def test_varlen_attention_rejects_left_padding(prm):
    with pytest.raises(ValueError, match="right-padded"):
        prm.hidden_states(torch.tensor([[0, 5, 6]]), torch.tensor([[0, 1, 1]]))
