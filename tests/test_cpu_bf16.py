"""bf16 matmuls as fp32 GEMMs on CPUs without native bf16 (fastprm.models.cpu_bf16)."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from fastprm.models import PRM, cpu_bf16
from fastprm.models.cpu_bf16 import Fp32Matmuls, bf16_matmuls


def _bf16(*shape):
    return torch.randn(*shape).to(torch.bfloat16)


CASES = {
    "linear": (F.linear, lambda: (_bf16(5, 7), _bf16(3, 7), _bf16(3))),
    "matmul": (torch.matmul, lambda: (_bf16(2, 5, 7), _bf16(7, 3))),
    "method": (lambda a, b: a @ b, lambda: (_bf16(5, 7), _bf16(7, 3))),
    "bmm": (torch.bmm, lambda: (_bf16(2, 5, 7), _bf16(2, 7, 3))),
    "sdpa": (
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        lambda: (_bf16(1, 2, 6, 8), _bf16(1, 2, 6, 8), _bf16(1, 2, 6, 8)),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_matmuls_are_fp32_math_rounded_to_bf16(name):
    torch.manual_seed(0)
    fn, make = CASES[name]
    args = make()
    with Fp32Matmuls():
        got = fn(*args)
    assert got.dtype == torch.bfloat16
    expected = fn(*(a.float() for a in args)).to(torch.bfloat16)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # and what torch's own bf16 kernel gives, to its rounding
    torch.testing.assert_close(got, fn(*args), rtol=2e-2, atol=2e-2)


def test_other_dtypes_and_ops_pass_through():
    x, w = torch.randn(4, 3), torch.randn(2, 3)
    with Fp32Matmuls():
        assert F.linear(x, w).dtype == torch.float32
        assert F.linear(x.half(), w.half()).dtype == torch.float16
        assert (_bf16(3) + _bf16(3)).dtype == torch.bfloat16


def test_mode_applies_only_to_bf16_on_cpus_without_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    assert isinstance(bf16_matmuls(cpu, torch.float32), contextlib.nullcontext)
    monkeypatch.setattr(cpu_bf16, "native_bf16", lambda: True)
    assert isinstance(bf16_matmuls(cpu, torch.bfloat16), contextlib.nullcontext)
    monkeypatch.setattr(cpu_bf16, "native_bf16", lambda: False)
    assert isinstance(bf16_matmuls(cpu, torch.bfloat16), Fp32Matmuls)


def _step_probs(prm, rows):
    return torch.tensor([p for s in prm.score(*zip(*rows)) for p in s.step_scores])


def test_bf16_prm_scores_like_fp32_math_and_trains(qwen_prm_dir, monkeypatch):
    """A bf16 PRM under the mode is as close to fp32 math on the same (bf16) weights as torch's bf16 kernels
    are, and backward works through it with bf16 gradients."""
    rows = [("What is 2 + 3?", ["2 + 3 = 5.", "The answer is 5."]), ("Is 7 prime?", ["Yes, 7 is prime."])]
    reference = _step_probs(PRM.from_pretrained(qwen_prm_dir, dtype=torch.bfloat16).float(), rows)
    monkeypatch.setattr(cpu_bf16, "native_bf16", lambda: False)
    prm = PRM.from_pretrained(qwen_prm_dir, dtype=torch.bfloat16)
    with_mode = _step_probs(prm, rows)
    monkeypatch.setattr(cpu_bf16, "native_bf16", lambda: True)
    stock = _step_probs(prm, rows)
    assert (with_mode - reference).abs().max() <= 2 * (stock - reference).abs().max() + 1e-3

    monkeypatch.setattr(cpu_bf16, "native_bf16", lambda: False)
    ids = prm.tokenizer("2 + 3 = 5.", return_tensors="pt")["input_ids"]
    logits, _ = prm(ids, None, torch.tensor([ids.shape[1] - 1]), torch.tensor([0, 1]))
    logits.float().sum().backward()
    grad = prm.backbone.layers[0].mlp.down_proj.weight.grad
    assert grad is not None and grad.dtype == torch.bfloat16 and grad.abs().sum() > 0
