"""Hand-fused decoder layers (fastprm.models.fused_layers) against transformers' own layer forward.

fp32 results agree within 1e-5; bf16 ones within two units of bf16's last place (the kernels round where
transformers rounds, so in practice they agree bit for bit on these models), except where the SwiGLU rounds
less: in the oneDNN route's GEMM post-ops, and in fastprm's SwiGLU GEMM (bf16 MLPs without biases on CPUs with
AVX512-BF16, any route). There both bf16 forwards are held against the fp32 forward of the same weights, and
the fused one must be as close to it as transformers' is. Covered: Qwen2, Llama (with
attention and MLP biases) and Mistral, with and without the step-row last layer, packed rows, one row after a
prefix cache, packed rows after per-row prefix spans (sessions), every GEMM route, batch composition, autograd
(the fused path is off) and Qwen3 (left unfused).
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from fastprm import _native
from fastprm.models import CONVENTIONS, PRM
from fastprm.models import fused_layers as fl
from fastprm.models.gemm_routes import available_gemm_routes
from fastprm.models.heads import LinearHead
from fastprm.packing import pack_rows, pad_rows
from fastprm.scoring import Scorer
from fastprm.tuning import calibrate
from fastprm.tuning.plan import ScoringPlan, pinned_choices

pytestmark = pytest.mark.skipif(_native.native is None, reason="the C++ extension is not built")

# head_dim 16: a width the attention kernel takes on AVX2 and AVX-512
SMALL = dict(
    vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128,
)  # fmt: skip
BACKBONES = {
    "qwen2": dict(model_type="qwen2", **SMALL),
    "llama": dict(model_type="llama", attention_bias=True, mlp_bias=True, **SMALL),
    "mistral": dict(model_type="mistral", **SMALL),
}
ROWS = [[5, 9, 2, 7, 7, 1], [3], [4, 4, 8, 1, 2, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [6, 2]]
ENDS = [[0, 3, 5], [0], [1, 16], [0, 1]]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2**-6, atol=2**-6)}


def _prm(config: dict, dtype=torch.float32) -> PRM:
    torch.manual_seed(0)
    prm = PRM.from_config(config, tokenizer=None, convention=CONVENTIONS["token-classification"], dtype=dtype)
    prm.head = LinearHead(config["hidden_size"], 2).to(dtype)
    for p in prm.parameters():  # random norm weights and biases, not ones and zeros
        p.data.add_(torch.randn_like(p) * 0.1)
    return prm.eval()


def _count_fused_calls():
    return mock.patch.object(fl, "rotary_cpu_", wraps=fl.rotary_cpu_)  # once per fused layer call


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_equals_transformers(name, dtype):
    prm = _prm(BACKBONES[name], dtype)
    b = pack_rows(ROWS, ENDS)
    layers = SMALL["num_hidden_layers"]
    with torch.inference_mode():
        for route in available_gemm_routes(prm.device, dtype):
            kw = dict(position_ids=b.position_ids, gemm_route=route)
            with _count_fused_calls() as calls:
                full = prm.hidden_states(b.input_ids, fused=True, **kw)
                at_rows = prm.step_hidden_states(b.input_ids, b.step_index, fused=True, **kw)
            assert calls.call_count == 2 * layers
            want = prm.hidden_states(b.input_ids, **kw)
            want_at_rows = prm.step_hidden_states(b.input_ids, b.step_index, **kw)
            mlp = prm.backbone.layers[0].mlp
            rounds_once = route == "onednn" or fl.own_swiglu_gemm(mlp.gate_proj, mlp.up_proj)
            if dtype == torch.bfloat16 and rounds_once:
                exact = _prm(BACKBONES[name], torch.float32)
                reference = exact.hidden_states(b.input_ids, position_ids=b.position_ids)
                _as_close_as(full, want, reference)
                _as_close_as(at_rows, want_at_rows, reference[:, b.step_index])
                continue
            torch.testing.assert_close(full, want, **TOL[dtype])
            torch.testing.assert_close(at_rows, want_at_rows, **TOL[dtype])


def _as_close_as(got: torch.Tensor, want: torch.Tensor, exact: torch.Tensor) -> None:
    """``got`` (bf16) errs from the fp32 ``exact`` no more than ``want`` (bf16) does, at most and on average
    (a quarter of a bf16 unit of slack on the average: both are a handful of roundings apart)."""
    got_err, want_err = ((t.float() - exact).abs() for t in (got, want))
    assert got_err.max() <= want_err.max() * 1.25, (got_err.max(), want_err.max())
    assert got_err.mean() <= want_err.mean() + 2**-10, (got_err.mean(), want_err.mean())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_gemm_where_the_cpu_has_it(dtype):
    """MLPs without biases run fastprm's SwiGLU GEMM on an ISA that has it in their dtype (fp32: AVX-512,
    bf16: AVX512-BF16, without AMX) and the route's GEMMs on any other; the merged weights follow a change of
    the selected ISA (tests pin each), and the kernel's forward is as close to the fp32 forward as the
    others' are (fp32: within 1e-5)."""
    prm = _prm(BACKBONES["qwen2"], dtype)
    biased = _prm(BACKBONES["llama"], dtype)
    b = pack_rows(ROWS, ENDS)
    results = {}
    before = _native.native.selected_isa()
    try:
        for isa in _native.available_isas():
            _native.native.set_isa(isa)
            with torch.inference_mode():
                results[isa] = prm.hidden_states(b.input_ids, position_ids=b.position_ids, fused=True)
                biased.hidden_states(b.input_ids, position_ids=b.position_ids, fused=True)
            if dtype == torch.float32:
                own = isa in ("avx512", "avx512_bf16")
            else:
                own = isa == "avx512_bf16" and "amx_bf16" not in fl.cpu_description()[1]
            for model, expected in ((prm, own), (biased, False)):
                merged = fl.merged_weights(model.backbone.layers[0], packed=False)
                assert (merged.swiglu_weights is not None) == expected, (
                    isa,
                    model.backbone.config.model_type,
                )
    finally:
        _native.native.set_isa(before)
    exact = _prm(BACKBONES["qwen2"]).hidden_states(b.input_ids, position_ids=b.position_ids)
    for got in results.values():
        if dtype == torch.float32:
            torch.testing.assert_close(got, exact, **TOL[dtype])
        elif "avx512_bf16" in results:
            _as_close_as(results["avx512_bf16"], got, exact)


def test_padded_rows():
    prm = _prm(BACKBONES["qwen2"])
    b = pad_rows(ROWS, ENDS, pad_id=0)
    with torch.inference_mode():
        want = prm.step_hidden_states(b.input_ids, b.step_index, b.attention_mask)
        with _count_fused_calls() as calls:
            got = prm.step_hidden_states(b.input_ids, b.step_index, b.attention_mask, fused=True)
    assert calls.call_count == SMALL["num_hidden_layers"]
    torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("name", BACKBONES)
def test_one_row_after_a_prefix_cache(name):
    """The ``rows`` layout: a row after a transformers cache of its prompt (the layer updates the cache)."""
    prm = _prm(BACKBONES[name])
    ids = torch.tensor([ROWS[2]])
    rows = torch.tensor([3, 9])
    with torch.inference_mode():
        want = prm.step_hidden_states(ids[:, 5:], rows, prefix=prm.prefix_cache(ids[:, :5]))
        with _count_fused_calls() as calls:
            cache = prm.prefix_cache(ids[:, :5], fused=True)
            got = prm.step_hidden_states(ids[:, 5:], rows, prefix=cache, fused=True)
        assert calls.call_count == 2 * SMALL["num_hidden_layers"]
        assert cache.get_seq_length() == 5  # left as it was
    torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("route", ["torch", "onednn"])
def test_packed_rows_after_prefix_spans(route):
    """Rows continuing per-row spans of captured keys and values (what sessions and problem-shared packed
    scoring run), captured by fused layers and read by them, equal the unfused path."""
    prm = _prm(BACKBONES["qwen2"])
    if route not in available_gemm_routes(prm.device, prm.dtype):
        pytest.skip(f"no {route} route here")
    prompts = [[1, 2, 3, 4], [7, 8]]
    results = []
    with torch.inference_mode():
        for fused in (False, True):
            _, prefix = prm.packed_step_hidden_states(
                prompts, [[], []], capture=True, gemm_route=route, fused=fused
            )
            hidden, _ = prm.packed_step_hidden_states(
                [ROWS[0], ROWS[2], ROWS[3]],
                [ENDS[0], ENDS[2], ENDS[3]],
                prefix=prefix,
                prefix_spans=[(0, 4), (4, 6), (0, 4)],
                gemm_route=route,
                fused=fused,
            )
            results.append(hidden)
    torch.testing.assert_close(results[1], results[0], **TOL[torch.float32])


def test_a_row_does_not_depend_on_its_batch():
    prm = _prm(BACKBONES["qwen2"])
    with torch.inference_mode():
        b = pack_rows(ROWS, ENDS)
        together = prm.step_hidden_states(b.input_ids, b.step_index, position_ids=b.position_ids, fused=True)
        alone = []
        for r, e in zip(ROWS, ENDS):
            one = pack_rows([r], [e])
            alone.append(
                prm.step_hidden_states(
                    one.input_ids, one.step_index, position_ids=one.position_ids, fused=True
                )
            )
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("route", ["torch", "onednn", "fp32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows_per_slice", [1, 5])
def test_mlp_in_slices_of_rows_equals_one_slice(monkeypatch, route, dtype, rows_per_slice):
    """The MLP runs over cache-sized slices of rows (the last one ragged here: 26 tokens); a row's result
    does not depend on the slice it lands in, within the batch-invariance bound of the dtype (a GEMM of
    other row counts may sum in another order)."""
    prm = _prm(BACKBONES["llama"], dtype)
    if route not in available_gemm_routes(prm.device, prm.dtype):
        pytest.skip(f"no {route} route for {dtype} here")
    b = pack_rows(ROWS, ENDS)
    results = []
    with torch.inference_mode():
        for chunk_bytes in (1 << 30, rows_per_slice * SMALL["intermediate_size"] * dtype.itemsize):
            monkeypatch.setattr(fl, "MLP_CHUNK_BYTES", chunk_bytes)
            hidden, _ = prm.packed_step_hidden_states(ROWS, ENDS, gemm_route=route, fused=True)
            results.append(hidden)
    assert (
        fl.mlp_chunk_rows(SMALL["intermediate_size"], dtype.itemsize) == rows_per_slice < b.input_ids.numel()
    )
    torch.testing.assert_close(results[1], results[0], **TOL[dtype])


def test_off_under_autograd_and_restored():
    prm = _prm(BACKBONES["qwen2"])
    b = pack_rows(ROWS, ENDS)
    with _count_fused_calls() as calls:
        hidden = prm.step_hidden_states(b.input_ids, b.step_index, position_ids=b.position_ids, fused=True)
    assert calls.call_count == 0 and hidden.requires_grad
    hidden.sum().backward()
    assert prm.backbone.layers[0].self_attn.q_proj.weight.grad is not None
    assert all("forward" not in layer.__dict__ for layer in prm.backbone.layers)


def test_merged_weights_follow_weight_changes():
    prm = _prm(BACKBONES["llama"])
    b = pack_rows(ROWS, ENDS)
    kw = dict(position_ids=b.position_ids)
    with torch.inference_mode():
        prm.hidden_states(b.input_ids, fused=True, **kw)
    with torch.no_grad():
        prm.backbone.layers[1].self_attn.k_proj.bias.add_(1.0)
        prm.backbone.layers[1].mlp.up_proj.weight.mul_(2.0)
    with torch.inference_mode():
        got = prm.hidden_states(b.input_ids, fused=True, **kw)
        want = prm.hidden_states(b.input_ids, **kw)
    torch.testing.assert_close(got, want, **TOL[torch.float32])


def test_qwen3_runs_unfused():
    """Qwen3's per-head q / k norms are not fused: its layers run transformers' forward."""
    config = dict(model_type="qwen3", head_dim=16, **SMALL)
    prm = _prm(config)
    assert not fl.fusable(prm.backbone)
    with fl.fused_layers(prm.backbone, "torch") as count:
        assert count == 0


def test_scorer_and_sessions_with_fused_layers(qwen_prm_dir):
    prm = PRM.from_pretrained(qwen_prm_dir, dtype=torch.float32)
    problems = ["Add 2 and 3. <|im_end|>", "Add 2 and 3. <|im_end|>", "What is 4 * 5?"]
    solutions = [["2 + 3 = 5", "So 5."], ["2 + 3 = 6"], ["4 * 5 = 20", "20"]]
    for layout in ("rows", "packed"):
        want = prm.score(problems, solutions, layout=layout, fused=False, gemm_route="torch")
        got = prm.score(problems, solutions, layout=layout, fused=True, gemm_route="torch")
        for w, g in zip(want, got):
            torch.testing.assert_close(
                torch.tensor(g.step_scores), torch.tensor(w.step_scores), atol=1e-5, rtol=0
            )
    session = prm.session(problems[0], fused=True)
    assert session.fused and session.fork().fused
    scores = [session.add_step(step) for step in solutions[0]]
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(want[0].step_scores), atol=1e-5, rtol=0)


def test_plan_field_pin_and_exclusions(monkeypatch, qwen_prm_dir):
    monkeypatch.setenv("FASTPRM_TUNE_PIN", "fused=1,layout=packed")
    assert pinned_choices() == {"fused": True, "layout": "packed"}
    monkeypatch.setenv("FASTPRM_TUNE_PIN", "fused=maybe")
    with pytest.raises(ValueError, match="fused must be 0 or 1"):
        pinned_choices()
    with pytest.raises(ValueError, match="compile and fused"):
        ScoringPlan("packed", 1024, "torch", compile=True, fused=True).check()
    assert "fused layers" in ScoringPlan("packed", 1024, "torch", fused=True).describe()
    monkeypatch.delenv("FASTPRM_TUNE_PIN")
    prm = PRM.from_pretrained(qwen_prm_dir, dtype=torch.float32)
    assert Scorer(prm, compile=True, layout="rows", batch_tokens=64, gemm_route="torch").plan.fused is False


def test_calibration_measures_fused_layers(qwen_prm_dir):
    prm = PRM.from_pretrained(qwen_prm_dir, dtype=torch.float32)
    record = calibrate(prm, progress=False, save=False)
    (entry,) = [e for e in record["table"] if e["phase"] == "fused"]
    assert entry["seconds"] > 0 and entry["unfused_seconds"] > 0
    layouts = [e for e in record["table"] if e["phase"] in ("layout", "confirm")]
    assert layouts and all(e["fused"] for e in layouts)  # measured as they will run
    assert record["plan"]["fused"] == (entry["seconds"] * 1.02 < entry["unfused_seconds"])
    assert record["key"]["plan_format"] == 2
    assert all("forward" not in layer.__dict__ for layer in prm.backbone.layers)
