"""Each checkpoint convention: a tiny random checkpoint in that exact on-disk format, scored by fastprm and
by a plain transformers implementation of the model card's published recipe."""

from __future__ import annotations

import torch

import checkpoints as ck
from fastprm.models import PRM

PROBLEM = "Janet has 3 eggs and buys 2 more. How many eggs?"
STEPS = ["Step 1: She starts with 3 eggs.", "Step 2: 3 + 2 = 5.", "Step 3: The answer is 5."]
TOL = 1e-5


def assert_close(fast, ref):
    assert len(fast) == len(ref), (fast, ref)
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(ref, dtype=torch.float32), atol=TOL, rtol=0)


def test_qwen25_math_prm(tmp_path):
    backbone, head, tok = ck.write_qwen25_math_prm(tmp_path)
    prm = PRM.from_pretrained(tmp_path, dtype=torch.float32)
    assert prm.convention.name == "qwen2.5-math-prm"
    # The model card: ChatML conversation, <extra_0> after every step, softmax over 2 logits, class 1.
    system = "Please reason step by step, and put your final answer within \\boxed{}."
    conversation = (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{PROBLEM}<|im_end|>\n"
        f"<|im_start|>assistant\n{'<extra_0>'.join(STEPS)}<extra_0><|im_end|>\n"
    )
    input_ids = tok.encode(conversation, return_tensors="pt")
    with torch.no_grad():
        logits = head(backbone(input_ids=input_ids).last_hidden_state)
    mask = input_ids == tok.encode("<extra_0>")[0]
    ref = torch.softmax(logits, -1)[mask][:, 1].tolist()

    fast = prm.score([PROBLEM], [STEPS])[0]
    assert_close(fast.step_scores, ref)
    assert prm.score.__self__ is prm
    rows = ck_tokenized(prm, [PROBLEM], [STEPS])
    assert rows[0].input_ids == input_ids[0].tolist()  # identical token ids to the card's joined string


def ck_tokenized(prm, problems, solutions):
    from fastprm.tokenization import StepTokenizer

    return StepTokenizer(prm.tokenizer, prm.convention)(problems, solutions)


def test_math_shepherd(tmp_path):
    model, tok = ck.write_math_shepherd(tmp_path)
    prm = PRM.from_pretrained(tmp_path, dtype=torch.float32)
    assert prm.convention.name == "math-shepherd"
    # The model card: f"{question} {output}", steps end with " ки", softmax over the logits of '+' and '-'.
    candidate_tokens = tok.encode("+ -")[1:]
    step_tag_id = tok.encode("ки")[-1]
    assert (candidate_tokens, step_tag_id) == ([648, 387], 12902)
    output = "\n".join(f"{s} ки" for s in STEPS)
    input_id = torch.tensor([tok.encode(f"{PROBLEM} {output}")])
    with torch.no_grad():
        logits = model(input_id).logits[:, :, candidate_tokens]
    ref = logits.softmax(dim=-1)[:, :, 0][input_id == step_tag_id].tolist()

    fast = prm.score([PROBLEM], [STEPS])[0]
    assert_close(fast.step_scores, ref)
    assert ck_tokenized(prm, [PROBLEM], [STEPS])[0].input_ids == input_id[0].tolist()


def test_token_classification_trl(tmp_path):
    model, tok = ck.write_token_classification(tmp_path)
    prm = PRM.from_pretrained(tmp_path, dtype=torch.float32)
    assert prm.convention.name == "token-classification"
    # TRL's PRMTrainer tokenize_row: prompt ids, then each step's ids + the "\n" separator; label on its last token.
    prompt_ids = tok(PROBLEM, add_special_tokens=False)["input_ids"]
    sep = tok.encode("\n", add_special_tokens=False)
    completions = [tok(s, add_special_tokens=False)["input_ids"] + sep for s in STEPS]
    input_ids = prompt_ids + [t for c in completions for t in c]
    label_pos, pos = [], len(prompt_ids)
    for c in completions:
        pos += len(c)
        label_pos.append(pos - 1)
    with torch.no_grad():
        logits = model(torch.tensor([input_ids])).logits[0]
    ref = torch.softmax(logits, -1)[label_pos, 1].tolist()

    assert_close(prm.score([PROBLEM], [STEPS])[0].step_scores, ref)
    assert ck_tokenized(prm, [PROBLEM], [STEPS])[0].input_ids == input_ids


def test_value_head_skywork(tmp_path):
    backbone, v_head, tok = ck.write_value_head(tmp_path)
    prm = PRM.from_pretrained(tmp_path, dtype=torch.float32)
    assert prm.convention.name == "value-head"
    # skywork-o1-prm-inference prepare_input: bos + problem + "\n", each step encoded alone + the "\n" id.
    prompt_ids = tok.encode(tok.bos_token + PROBLEM + "\n")
    step_token_id = tok.encode("\n")[-1]
    input_ids, flags = list(prompt_ids), [0] * len(prompt_ids)
    for step in STEPS:
        ids = [*tok.encode(step), step_token_id]
        input_ids += ids
        flags += [0] * (len(ids) - 1) + [1]
    with torch.no_grad():
        values = v_head(backbone(input_ids=torch.tensor([input_ids])).last_hidden_state).squeeze(-1)[0]
    ref = torch.sigmoid(values)[torch.tensor(flags) == 1].tolist()

    assert_close(prm.score([PROBLEM], [STEPS])[0].step_scores, ref)
    assert ck_tokenized(prm, [PROBLEM], [STEPS])[0].input_ids == input_ids


def test_fastprm_format_round_trip(tmp_path):
    ck.write_qwen25_math_prm(tmp_path / "src")
    prm = PRM.from_pretrained(tmp_path / "src", dtype=torch.float32)
    prm.save_pretrained(tmp_path / "own")
    again = PRM.from_pretrained(tmp_path / "own", dtype=torch.float32)
    assert again.convention == prm.convention
    a = prm.score([PROBLEM], [STEPS])[0].step_scores
    b = again.score([PROBLEM], [STEPS])[0].step_scores
    assert a == b


def test_round_trip_keeps_a_new_word_level_tokenizer(tmp_path):
    """A tokenizer trained for a new model must come back as saved, not rebuilt as the backbone family's
    (transformers would pick Qwen2's BPE tokenizer from config.json and drop words)."""
    from fastprm.demo import build_tokenizer
    from fastprm.models import CONVENTIONS

    text = "tom has 3 apples . 3 + 4 = 7 ."
    tok = build_tokenizer([text], tmp_path / "tok")
    convention = CONVENTIONS["token-classification"].with_overrides(separator="<step>")
    prm = PRM.from_config(ck.tiny_qwen2_config(len(tok)).to_dict(), tmp_path / "tok", convention)
    prm.save_pretrained(tmp_path / "model")
    again = PRM.from_pretrained(tmp_path / "model", dtype=torch.float32)
    assert again.tokenizer(text)["input_ids"] == tok(text)["input_ids"]
    assert tok.unk_token_id not in tok(text)["input_ids"]


def test_overrides(tmp_path):
    ck.write_token_classification(tmp_path)
    prm = PRM.from_pretrained(tmp_path, dtype=torch.float32, separator="\n\n", positive_class=0)
    assert prm.convention.separator == "\n\n" and prm.convention.positive_class == 0
    s = prm.score([PROBLEM], [STEPS])[0]
    assert len(s.step_scores) == len(STEPS)


def test_save_in_original_layout_round_trips(tmp_path):
    for name, writer in [
        ("qwen2.5-math-prm", ck.write_qwen25_math_prm),
        ("token-classification", ck.write_token_classification),
        ("value-head", ck.write_value_head),
    ]:
        writer(tmp_path / name)
        prm = PRM.from_pretrained(tmp_path / name, dtype=torch.float32)
        prm.save_pretrained(tmp_path / f"{name}-out", format="original")
        again = PRM.from_pretrained(tmp_path / f"{name}-out", dtype=torch.float32)
        assert again.convention.name == name
        assert again.score([PROBLEM], [STEPS])[0].step_scores == prm.score([PROBLEM], [STEPS])[0].step_scores


def test_lm_pair_head_cannot_be_written_in_an_original_layout(tmp_path):
    import pytest

    ck.write_math_shepherd(tmp_path / "ms")
    prm = PRM.from_pretrained(tmp_path / "ms", dtype=torch.float32)
    with pytest.raises(ValueError, match="fastprm format"):
        prm.save_pretrained(tmp_path / "out", format="original")


def test_loading_is_quiet_and_missing_backbone_weights_raise(tmp_path, capfd, caplog):
    """No transformers load report listing the head as UNEXPECTED; a checkpoint that lacks backbone weights
    is an error naming them, never a model with random layers."""
    import pytest
    from safetensors.torch import load_file, save_file

    ck.write_qwen25_math_prm(tmp_path)
    PRM.from_pretrained(tmp_path, dtype=torch.float32)
    assert "UNEXPECTED" not in capfd.readouterr().err + caplog.text
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks 1 backbone tensors.*layers\.1\.mlp\.down_proj\.weight"):
        PRM.from_pretrained(tmp_path, dtype=torch.float32)
