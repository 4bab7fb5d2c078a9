"""A checkpoint fastprm cannot load is a one-line CheckpointError naming its directory, never a traceback from
deep inside transformers and never a model that scores garbage; bad rows given to ``prm.score`` are errors
naming the row."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import checkpoints as ck
from fastprm.models import PRM
from fastprm.models.checkpoint import CheckpointError
from fastprm.tokenization import RowError


def _load(path, **kw):
    return PRM.from_pretrained(path, dtype=torch.float32, **kw)


def _one_line_naming(err: pytest.ExceptionInfo, path) -> str:
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.fixture
def qwen_copy(qwen_prm_dir, tmp_path):
    """A private copy of the session's Qwen2.5-Math-PRM checkpoint, for tests that break it."""
    path = tmp_path / "prm"
    shutil.copytree(qwen_prm_dir, path)
    return path


def _edit_tensors(path, edit) -> None:
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_no_config(tmp_path):
    with pytest.raises(CheckpointError) as err:
        _load(tmp_path)
    assert "no config.json" in _one_line_naming(err, tmp_path)
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        _load(tmp_path, convention="token-classification")


def test_unknown_architecture_and_model_type(qwen_copy):
    config = json.loads((qwen_copy / "config.json").read_text())
    (qwen_copy / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen2ForSomethingElse"]}))
    with pytest.raises(CheckpointError) as err:
        _load(qwen_copy)
    assert "cannot tell the PRM convention" in _one_line_naming(err, qwen_copy)
    (qwen_copy / "config.json").write_text(json.dumps({**config, "model_type": "no-such-model"}))
    with pytest.raises(CheckpointError) as err:
        _load(qwen_copy)
    _one_line_naming(err, qwen_copy)


def test_missing_and_half_heads(qwen_copy):
    _edit_tensors(qwen_copy, lambda t: t.pop("score.0.bias"))
    with pytest.raises(CheckpointError) as err:
        _load(qwen_copy)
    assert "missing ['0.bias']" in _one_line_naming(err, qwen_copy)
    _edit_tensors(qwen_copy, lambda t: [t.pop(k) for k in list(t) if k.startswith("score.")])
    with pytest.raises(CheckpointError, match=r"no head tensors under 'score\.\*'"):
        _load(qwen_copy)


def test_a_head_of_the_wrong_shape(qwen_copy):
    _edit_tensors(qwen_copy, lambda t: t.update({"score.2.weight": torch.zeros(2, 7)}))
    with pytest.raises(CheckpointError, match=r"'2\.weight' has shape \(2, 7\)"):
        _load(qwen_copy)


def test_corrupt_safetensors(qwen_copy):
    data = (qwen_copy / "model.safetensors").read_bytes()
    (qwen_copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        _load(qwen_copy)
    _one_line_naming(err, qwen_copy)
    (qwen_copy / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        _load(qwen_copy)


def test_no_tokenizer_files(qwen_copy):
    for f in qwen_copy.iterdir():
        if f.name.startswith(
            ("tokenizer", "vocab", "merges", "special_tokens", "added_tokens", "chat_template")
        ):
            f.unlink()
    with pytest.raises(CheckpointError) as err:
        _load(qwen_copy)
    assert "no tokenizer files" in _one_line_naming(err, qwen_copy)


def test_a_tokenizer_without_the_special_separator_is_refused(tmp_path):
    """Without `<extra_0>` the separator would be five text tokens, and a step containing the text
    "<extra_0>" would yield exactly the separator's ids."""
    ck.write_qwen25_math_prm(tmp_path)
    ck.qwen_tokenizer(tmp_path)  # overwrite the tokenizer with one that lacks <extra_0>
    with pytest.raises(CheckpointError) as err:
        _load(tmp_path)
    assert "'<extra_0>'" in _one_line_naming(err, tmp_path)


def test_math_shepherd_needs_an_lm_head_or_tied_embeddings(tmp_path):
    ck.write_math_shepherd(tmp_path)
    _edit_tensors(tmp_path, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointError) as err:
        _load(tmp_path)
    assert "does not tie" in _one_line_naming(err, tmp_path)
    # tied: the embedding rows are the LM head, as the family's own code reads them
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    prm = _load(tmp_path)
    embeddings = load_file(tmp_path / "model.safetensors")["model.embed_tokens.weight"]
    good, bad = prm.tokenizer("+ -", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(prm.head.out.weight.data, embeddings[[good, bad]])


def test_convention_fastprm_needs_fastprm_format(qwen_prm_dir, tmp_path):
    with pytest.raises(CheckpointError, match="not in fastprm's format"):
        _load(qwen_prm_dir, convention="fastprm")
    _load(qwen_prm_dir).save_pretrained(tmp_path / "own")
    assert _load(tmp_path / "own", convention="fastprm").convention.name == "qwen2.5-math-prm"
    with pytest.raises(CheckpointError, match=r"saved by fastprm with the qwen2\.5-math-prm convention"):
        _load(tmp_path / "own", convention="token-classification")


@pytest.fixture(scope="module")
def prm(qwen_prm_dir):
    return _load(qwen_prm_dir)


@pytest.mark.parametrize(
    ("problems", "solutions", "message"),
    [
        (["q"], ["2 + 3 = 5. The answer is 5."], r"row 0: the steps must be a list of strings, got str"),
        (["q", "r"], [["ok"], []], r"row 1: the solution has no steps"),
        (["q"], [["ok \ud800"]], r"row 0: step 0 is not valid Unicode text"),
        (["q \udfff"], [["ok"]], r"row 0: the problem is not valid Unicode text"),
        (["q"], [["ok", 3]], r"row 0: step 1 must be a string, got int"),
        ([None], [["ok"]], r"row 0: the problem must be a string"),
    ],
)
def test_bad_rows_name_the_row(prm, problems, solutions, message):
    with pytest.raises(RowError, match=message):
        prm.score(problems, solutions)


def test_score_takes_the_scorer_options_by_signature(prm):
    assert prm.score(["q"], [["a", "b"]], threshold=0.0)[0].first_error == -1
    with pytest.raises(TypeError, match="no_such_option"):
        prm.score(["q"], [["a"]], no_such_option=1)
    with pytest.raises(ValueError, match="problems and solutions must be lists"):
        prm.score("q", [["a"]])
