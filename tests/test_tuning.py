"""Per-machine calibration of the Scorer (fastprm.tuning): the cache, the environment switches, the measured
table and choice, and that every choice scores within its layout's bound."""

import json

import pytest
import torch

from fastprm.cli import main
from fastprm.models import PRM
from fastprm.scoring import Scorer
from fastprm.tuning import calibration as calibrate_module
from fastprm.tuning.calibration import (
    LAYOUT_CANDIDATES,
    calibrate,
    calibration_key,
    calibration_rows,
    fallback_plan,
    shallow_backbone,
    tuned_plan,
)
from fastprm.tuning.plan import ScoringPlan, cache_file, pinned_choices, tune_mode

ROWS = [
    ("What is 2 + 3?", ["2 + 3 = 5.", "The answer is 5."]),
    ("Is 7 prime?", ["Yes, 7 is prime."]),
    ("What is 4 * 6?", ["4 * 6 = 24.", "So 24.", "Done."]),
]


@pytest.fixture(autouse=True)
def quick_calibration(monkeypatch):
    """Small workloads: the tests check what is measured and chosen, not how precisely."""
    monkeypatch.setattr(calibrate_module, "MIN_TOKENS", 512)
    monkeypatch.setattr(calibrate_module, "MAX_TOKENS", 1024)
    monkeypatch.setattr(calibrate_module, "REPEATS", 1)


@pytest.fixture
def tuning_on(tmp_path, monkeypatch):
    """Calibration on, cached in a fresh folder."""
    monkeypatch.setenv("FASTPRM_TUNE", "auto")
    monkeypatch.setenv("FASTPRM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTPRM_TUNE_PIN", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def prm(qwen_prm_dir):
    return PRM.from_pretrained(qwen_prm_dir, dtype=torch.float32)


def _no_calibration(*args, **kwargs):
    raise AssertionError("calibrated although a cached or given plan exists")


def test_first_use_calibrates_and_caches_then_reads_the_cache(prm, tuning_on, monkeypatch):
    plan = Scorer(prm).plan
    path = cache_file(calibration_key(prm))
    record = json.loads(path.read_text())
    assert path.is_relative_to(tuning_on) and ScoringPlan.from_dict(record["plan"]) == plan
    layouts = [e for e in record["table"] if e["phase"] == "layout"]
    assert [(e["layout"], e["batch_tokens"]) for e in layouts] == list(LAYOUT_CANDIDATES)
    assert (plan.layout, plan.batch_tokens) == _winner(record)
    gemm = {e["gemm_route"]: e["seconds"] for e in record["table"] if e["phase"] == "gemm"}
    assert plan.gemm_route == min(gemm, key=gemm.get)

    monkeypatch.setattr(calibrate_module, "calibrate", _no_calibration)
    assert Scorer(prm).plan == plan


def test_the_key_holds_the_machine_and_the_model_shape(prm):
    key = calibration_key(prm)
    assert key["threads"] == torch.get_num_threads() and key["dtype"] == "float32"
    assert key["backbone"]["hidden_size"] == prm.backbone.config.hidden_size
    assert key["backbone"]["num_hidden_layers"] == prm.backbone.config.num_hidden_layers
    assert key["cpu"] and key["torch"] == torch.__version__


def test_given_choices_need_no_calibration(prm, tuning_on, monkeypatch):
    monkeypatch.setattr(calibrate_module, "calibrate", _no_calibration)
    scorer = Scorer(prm, layout="padded", batch_tokens=512, gemm_route="torch", compile=False, fused=False)
    assert scorer.plan == ScoringPlan("padded", 512, "torch", False)


def test_tune_off_uses_the_fallback_plan(prm, monkeypatch):
    monkeypatch.setenv("FASTPRM_TUNE", "off")
    monkeypatch.setattr(calibrate_module, "calibrate", _no_calibration)
    assert Scorer(prm).plan == fallback_plan(prm) == ScoringPlan("rows", 16384, "torch")


def test_retune_measures_again_once_per_process(prm, tuning_on, monkeypatch):
    Scorer(prm)
    calls = []
    real = calibrate_module.calibrate
    monkeypatch.setattr(calibrate_module, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(calibrate_module, "_retuned", set())
    monkeypatch.setenv("FASTPRM_TUNE", "retune")
    Scorer(prm)
    Scorer(prm)
    assert len(calls) == 1


def test_an_unreadable_or_foreign_cache_file_is_measured_again(prm, tuning_on):
    Scorer(prm)
    path = cache_file(calibration_key(prm))
    for text in ("{not json", json.dumps({"key": {"cpu": "another"}, "plan": {}})):
        path.write_text(text)
        Scorer(prm)
        assert ScoringPlan.from_dict(json.loads(path.read_text())["plan"])


def test_pins_replace_measured_choices_and_are_checked(prm, tuning_on, monkeypatch):
    monkeypatch.setenv("FASTPRM_TUNE_PIN", "layout=padded, batch_tokens=999,compile=0")
    plan = Scorer(prm).plan
    assert (plan.layout, plan.batch_tokens, plan.compile) == ("padded", 999, False)
    monkeypatch.setenv("FASTPRM_TUNE_PIN", "layout=packed")
    record = json.loads(cache_file(calibration_key(prm)).read_text())
    packed = [e for e in record["table"] if e["phase"] == "layout" and e["layout"] == "packed"]
    assert Scorer(prm).plan.batch_tokens == min(packed, key=lambda e: e["seconds"])["batch_tokens"]
    for pin, message in [
        ("layout=diagonal", "layout must be one of rows, packed, padded, got 'diagonal'"),
        ("batch_tokens=-3", "batch_tokens must be a positive integer, got '-3'"),
        ("compile=maybe", "compile must be 0 or 1, got 'maybe'"),
        ("speed=11", "'speed=11' is not one of"),
        ("gemm_route=fp32", "gemm_route 'fp32' cannot run a torch.float32 model"),
    ]:
        monkeypatch.setenv("FASTPRM_TUNE_PIN", pin)
        with pytest.raises(ValueError, match=message):
            Scorer(prm)


def test_tune_mode_is_checked(monkeypatch):
    monkeypatch.setenv("FASTPRM_TUNE", "sometimes")
    with pytest.raises(ValueError, match="FASTPRM_TUNE must be one of auto, off, retune, got 'sometimes'"):
        tune_mode()
    monkeypatch.setenv("FASTPRM_TUNE_PIN", "")
    assert pinned_choices() == {}


def _winner(record: dict) -> tuple[str, int]:
    """The (layout, batch_tokens) a calibration record's table says wins: the shallow phase's fastest, unless
    the full-depth confirmation ran another CONFIRM_MARGIN times faster."""
    shallow = min((e for e in record["table"] if e["phase"] == "layout"), key=lambda e: e["seconds"])
    confirmed = [e for e in record["table"] if e["phase"] == "confirm"]
    winner = shallow
    if confirmed:
        fastest = min(confirmed, key=lambda e: e["seconds"])
        if fastest["seconds"] * calibrate_module.CONFIRM_MARGIN < confirmed[0]["seconds"]:
            winner = fastest
    return winner["layout"], winner["batch_tokens"]


@pytest.mark.parametrize("margin", [1.0, 1.05, float("inf")])
def test_close_candidates_are_confirmed_at_full_depth(prm, monkeypatch, margin):
    """Each layout's fastest candidate of the shallow phase runs again through every layer; that run
    overturns the shallow winner when another candidate runs CONFIRM_MARGIN times faster (1: any faster one
    wins; infinite: the shallow winner always stays)."""
    monkeypatch.setattr(calibrate_module, "CALIBRATION_DEPTH", 1)
    monkeypatch.setattr(calibrate_module, "CONFIRM_WITHIN", float("inf"))  # always close enough
    monkeypatch.setattr(calibrate_module, "CONFIRM_MARGIN", margin)
    record = calibrate(prm, progress=False, save=False)
    confirmed = [e for e in record["table"] if e["phase"] == "confirm"]
    shallow = sorted((e for e in record["table"] if e["phase"] == "layout"), key=lambda e: e["seconds"])
    fastest = {}
    for e in shallow:
        fastest.setdefault(e["layout"], (e["layout"], e["batch_tokens"]))
    assert [(e["layout"], e["batch_tokens"]) for e in confirmed] == list(fastest.values())
    plan = (record["plan"]["layout"], record["plan"]["batch_tokens"])
    assert plan == _winner(record)
    if margin == 1.0:
        best = min(confirmed, key=lambda e: e["seconds"])
        assert plan == (best["layout"], best["batch_tokens"])
    if margin == float("inf"):
        assert plan == (shallow[0]["layout"], shallow[0]["batch_tokens"])


def test_calibration_leaves_the_model_as_it_was(prm):
    layers, depth = len(prm.backbone.layers), prm.backbone.config.num_hidden_layers
    options = {"layout": "rows", "batch_tokens": 64, "gemm_route": "torch", "compile": False}
    before = [s.step_scores for s in prm.score(*zip(*ROWS), **options)]
    record = calibrate(prm, progress=False, save=False)
    assert "path" not in record and record["depth"] == 2
    assert len(prm.backbone.layers) == layers and prm.backbone.config.num_hidden_layers == depth
    assert [s.step_scores for s in prm.score(*zip(*ROWS), **options)] == before


def test_shallow_backbone_runs_the_first_layers_only(prm):
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        full = prm.hidden_states(ids)
        with shallow_backbone(prm.backbone, 1):
            assert len(prm.backbone.layers) == 1
            shallow = prm.hidden_states(ids)
        assert torch.equal(prm.hidden_states(ids), full)
    assert not torch.allclose(shallow, full)


def test_calibration_rows_look_like_prm_inputs():
    rows = calibration_rows(vocab_size=100, n_tokens=3000)
    assert sum(len(r.input_ids) for r in rows) >= 3000
    assert len({tuple(r.input_ids[: r.template_length]) for r in rows}) == 1  # one shared header
    for r in rows:
        assert r.step_ends[-1] == len(r.input_ids) - 1 and r.step_ends[0] >= r.prompt_length
        assert all(0 <= i < 100 for i in r.input_ids)


def test_every_candidate_scores_within_its_layout_bound(prm, tuning_on):
    """Whatever the calibration picks, scores match the fallback plan's to 1e-5 in fp32."""
    expected = [s.step_scores for s in Scorer(prm, **vars(fallback_plan(prm))).score(*zip(*ROWS))]
    for layout, budget in LAYOUT_CANDIDATES:
        got = Scorer(prm, layout=layout, batch_tokens=budget).score(*zip(*ROWS))
        for g, e in zip(got, expected):
            assert g.step_scores == pytest.approx(e, abs=1e-5)


def test_fastprm_tune_prints_the_table_and_caches_the_choice(qwen_prm_dir, tuning_on, capsys):
    assert main(["tune", "--model", str(qwen_prm_dir), "--dtype", "fp32", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "GEMM route" in out and "GFLOP/s" in out and "tokens/s" in out and "<- chosen" in out
    assert "chosen:" in out and str(tuning_on) in out
    assert main(["tune", "--model", str(qwen_prm_dir), "--dtype", "fp32", "--quiet", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert ScoringPlan.from_dict(record["plan"]) and record["peak_rss_mb"] > 0


def test_tuned_plan_reads_the_environment_each_call(prm, tuning_on, monkeypatch):
    measured = tuned_plan(prm, progress=False)
    monkeypatch.setenv("FASTPRM_TUNE_PIN", "gemm_route=torch")
    assert tuned_plan(prm, progress=False).gemm_route == "torch"
    monkeypatch.setenv("FASTPRM_TUNE", "off")
    assert tuned_plan(prm, progress=False).layout == "rows"
    assert measured.check() is None


def test_torch_threads_are_capped_at_the_cores_given(monkeypatch):
    from fastprm import machine

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(machine, "usable_cpus", lambda: 1)
        torch.set_num_threads(2)
        assert machine.fit_threads_to_cores() == 1
        monkeypatch.setattr(machine, "usable_cpus", lambda: 64)
        assert machine.fit_threads_to_cores() == 1  # fewer threads than cores: left as set
    finally:
        torch.set_num_threads(before)
    assert machine.peak_rss_mb() > 0


def test_compile_is_measured_through_the_whole_backbone_against_eager(prm):
    record = calibrate(prm, include_compile=True, progress=False, save=False)
    (entry,) = [e for e in record["table"] if e["phase"] == "compile"]
    assert "error" not in entry, entry.get("error")
    assert entry["compile_seconds"] > 0 and entry["seconds"] > 0 and entry["eager_seconds"] > 0
    faster = entry["seconds"] * calibrate_module.COMPILE_MARGIN < entry["eager_seconds"]
    assert record["plan"]["compile"] == faster
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in prm.backbone.modules())
