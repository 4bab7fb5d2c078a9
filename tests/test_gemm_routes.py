"""GEMM routes (fastprm.models.gemm_routes): bf16 matmuls as fp32 GEMMs (fastprm.models.cpu_bf16) and
linear layers through oneDNN with packed weights (fastprm.models.onednn_linear), against torch's own."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastprm.models import PRM, gemm_routes, onednn_linear
from fastprm.models.cpu_bf16 import Fp32Matmuls
from fastprm.models.gemm_routes import (
    available_gemm_routes,
    check_gemm_route,
    default_gemm_route,
    route_gemms,
)

needs_onednn = pytest.mark.skipif(
    not onednn_linear.available(torch.float32), reason="torch was built without oneDNN"
)


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


def test_default_route_is_fp32_gemms_only_for_bf16_on_cpus_without_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    assert default_gemm_route(cpu, torch.float32) == "torch"
    monkeypatch.setattr(gemm_routes, "native_bf16", lambda: True)
    assert default_gemm_route(cpu, torch.bfloat16) == "torch"
    monkeypatch.setattr(gemm_routes, "native_bf16", lambda: False)
    assert default_gemm_route(cpu, torch.bfloat16) == "fp32"
    assert default_gemm_route(torch.device("cuda"), torch.bfloat16) == "torch"


def test_routes_are_checked_by_name_and_by_what_runs_here():
    cpu = torch.device("cpu")
    assert "fp32" in available_gemm_routes(cpu, torch.bfloat16)
    assert "fp32" not in available_gemm_routes(cpu, torch.float32)
    assert available_gemm_routes(torch.device("cuda"), torch.bfloat16) == ["torch"]
    with pytest.raises(ValueError, match="gemm_route must be one of torch, onednn, fp32, got 'blas'"):
        check_gemm_route("blas", cpu, torch.float32)
    with pytest.raises(ValueError, match=r"gemm_route 'fp32' cannot run a torch\.float32 model on cpu"):
        check_gemm_route("fp32", cpu, torch.float32)


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [0, 1, 7, 300])
def test_onednn_linear_matches_torch(dtype, rows):
    if not onednn_linear.available(dtype):
        pytest.skip(f"oneDNN cannot run {dtype} GEMMs on this CPU")
    torch.manual_seed(0)
    layer = nn.Linear(96, 40).to(dtype)
    x = torch.randn(2, rows, 96).to(dtype)
    with torch.inference_mode():
        got = onednn_linear.linear(layer, x)
        expected = F.linear(x, layer.weight, layer.bias)
    assert got.shape == expected.shape == (2, rows, 40) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


@needs_onednn
def test_onednn_packed_weight_follows_weight_changes():
    """A packed weight is rebuilt after the weight changes in place (an optimizer step) or is replaced."""
    torch.manual_seed(0)
    layer = nn.Linear(16, 8, bias=False)
    x = torch.randn(5, 16)
    with torch.no_grad():
        first = onednn_linear.linear(layer, x)
        layer.weight.mul_(2)
        torch.testing.assert_close(onednn_linear.linear(layer, x), 2 * first)
        layer.weight = nn.Parameter(torch.zeros(8, 16))
        assert onednn_linear.linear(layer, x).abs().max() == 0


@needs_onednn
def test_onednn_route_falls_back_to_torch_where_autograd_needs_the_result():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    with route_gemms(model, "onednn"):
        model(torch.randn(3, 8)).sum().backward()
    assert model[0].weight.grad is not None
    assert "forward" not in vars(model[0])  # the layer's own forward again


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prm_scores_agree_across_routes(qwen_prm_dir, dtype):
    """Every route available here scores like torch's kernels: 1e-5 in fp32, bf16 rounding in bf16; in every
    layout."""
    rows = [("What is 2 + 3?", ["2 + 3 = 5.", "The answer is 5."]), ("Is 7 prime?", ["Yes, 7 is prime."])]
    prm = PRM.from_pretrained(qwen_prm_dir, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    expected = _step_probs(prm, rows, gemm_route="torch", layout="rows")
    for route in available_gemm_routes(prm.device, dtype):
        for layout in ("rows", "packed", "padded"):
            got = _step_probs(prm, rows, gemm_route=route, layout=layout)
            torch.testing.assert_close(got, expected, rtol=0, atol=tol, msg=f"{route} {layout}")


def _step_probs(prm, rows, **options):
    return torch.tensor([p for s in prm.score(*zip(*rows), **options) for p in s.step_scores])


def test_bf16_prm_scores_like_fp32_math_and_trains(qwen_prm_dir, monkeypatch):
    """A bf16 PRM under the mode is as close to fp32 math on the same (bf16) weights as torch's bf16 kernels
    are, and backward works through it with bf16 gradients."""
    rows = [("What is 2 + 3?", ["2 + 3 = 5.", "The answer is 5."]), ("Is 7 prime?", ["Yes, 7 is prime."])]
    reference = _step_probs(PRM.from_pretrained(qwen_prm_dir, dtype=torch.bfloat16).float(), rows)
    prm = PRM.from_pretrained(qwen_prm_dir, dtype=torch.bfloat16)
    with_mode = _step_probs(prm, rows, gemm_route="fp32")
    stock = _step_probs(prm, rows, gemm_route="torch")
    assert (with_mode - reference).abs().max() <= 2 * (stock - reference).abs().max() + 1e-3

    monkeypatch.setattr(gemm_routes, "native_bf16", lambda: False)  # training takes the default route
    ids = prm.tokenizer("2 + 3 = 5.", return_tensors="pt")["input_ids"]
    logits, _ = prm(ids, None, torch.tensor([ids.shape[1] - 1]), torch.tensor([0, 1]))
    logits.float().sum().backward()
    grad = prm.backbone.layers[0].mlp.down_proj.weight.grad
    assert grad is not None and grad.dtype == torch.bfloat16 and grad.abs().sum() > 0


@pytest.mark.parametrize("user_value", [None, "7"])
def test_onednn_primitive_cache_is_bounded_unless_the_user_set_it(user_value):
    """Scoring gives oneDNN a new row count per row or batch; its cache of one primitive per shape is capped
    at fastprm's default before any forward, and a user's own setting is kept."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if user_value is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = user_value
    code = "import os, fastprm.models.prm; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (user_value or str(onednn_linear.PRIMITIVE_CACHE_CAPACITY))
