"""The last MLP at the step rows only (fastprm.models.step_rows) equals the full forward at those rows."""

import pytest
import torch

from fastprm.models import CONVENTIONS, PRM
from fastprm.models.heads import LinearHead
from fastprm.models.step_rows import last_mlp
from fastprm.packing import pack_rows, pad_rows

SMALL = dict(
    vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128,
)  # fmt: skip
BACKBONES = {
    "qwen2": dict(model_type="qwen2", **SMALL),
    "llama": dict(model_type="llama", **SMALL),
    "mistral": dict(model_type="mistral", **SMALL),
    "qwen3": dict(model_type="qwen3", head_dim=8, **SMALL),
    # no layers[-1].mlp: the full last layer runs
    "gpt2": dict(model_type="gpt2", vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=128),
}
ROWS = [[5, 9, 2, 7, 7, 1], [3], [4, 4, 8, 1, 2], [6, 2]]
# every step-row position kind: first token, last token, a length-1 row, a row without steps, all tokens
ENDS = [[0, 3, 5], [0], [], [0, 1]]


def _prm(name: str, dtype=torch.float32) -> PRM:
    torch.manual_seed(0)
    conv = CONVENTIONS["token-classification"]
    prm = PRM.from_config(BACKBONES[name], tokenizer=None, convention=conv, dtype=dtype)
    prm.head = LinearHead(32, 2).to(dtype)
    return prm.eval()


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("layout", ["padded", "packed", "one row"])
def test_step_rows_match_the_full_forward(name, layout):
    prm = _prm(name)
    assert (last_mlp(prm.backbone) is None) == (name == "gpt2")
    if layout == "padded":
        batches = [pad_rows(ROWS, ENDS, pad_id=0)]
    elif layout == "packed":
        batches = [pack_rows(ROWS, ENDS)]
    else:
        batches = [pack_rows([r], [e]) for r, e in zip(ROWS, ENDS)]
    with torch.inference_mode():
        for b in batches:
            extra = {} if b.position_ids is None else {"position_ids": b.position_ids}
            full = prm.hidden_states(b.input_ids, b.attention_mask, **extra)
            full = full.reshape(-1, full.shape[-1])[b.step_index]
            got = prm.step_hidden_states(b.input_ids, b.step_index, b.attention_mask, **extra)
            assert got.shape == full.shape
            torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
            # the hooks are gone afterwards: a plain forward is a full forward again
            again = prm.hidden_states(b.input_ids, b.attention_mask, **extra)
            torch.testing.assert_close(again.reshape(-1, again.shape[-1])[b.step_index], full)


def test_step_rows_in_bf16():
    prm = _prm("qwen2", torch.bfloat16)
    b = pack_rows(ROWS, ENDS)
    with torch.inference_mode():
        full = prm.hidden_states(b.input_ids, position_ids=b.position_ids)[0][b.step_index]
        got = prm.step_hidden_states(b.input_ids, b.step_index, position_ids=b.position_ids)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, full, rtol=0, atol=0)
