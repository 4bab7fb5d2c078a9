"""Scoring and labelling on a local Ray cluster (``fastprm.distributed``): the same rows as one process,
JSONL and Parquet in and out, bad rows, and a worker killed mid-run.

Real ProcessBench rows in shuffled shards, a tiny random checkpoint in the Qwen2.5-Math-PRM format, a
``ray.init(num_cpus=2)`` cluster shared by the module.
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
import psutil  # noqa: E402  (a dependency of Ray)

import checkpoints  # noqa: E402
from fastprm.cli import main  # noqa: E402

PROCESSBENCH = checkpoints.DATA / "processbench"
SCORE_OPTIONS = ["--dtype", "fp32", "--truncation", "drop-steps", "--quiet"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """240 real ProcessBench rows (GSM8K and MATH) shuffled into 3 JSONL shards of unequal size, with a
    malformed line and a row with no steps in the second; ``all.jsonl``: the shards one after another."""
    rows = []
    for subset in ("gsm8k", "math"):
        rows += json.loads(checkpoints.require(PROCESSBENCH / f"{subset}.json").read_text())[:120]
    random.Random(0).shuffle(rows)
    folder = tmp_path_factory.mktemp("shards")
    (folder / "in").mkdir()
    lines = [json.dumps(r) for r in rows]
    lines.insert(130, "{not json")
    lines.insert(131, json.dumps({"id": "no-steps", "problem": "1+1?", "steps": []}))
    cuts = [0, 50, 180, len(lines)]
    for k in range(3):
        (folder / "in" / f"s{k}.jsonl").write_text("".join(x + "\n" for x in lines[cuts[k] : cuts[k + 1]]))
    (folder / "all.jsonl").write_text("".join(x + "\n" for x in lines))
    return folder


@pytest.fixture(scope="module")
def one_process(shards, qwen_prm_dir):
    """``fastprm score`` of all the rows in one process: the output every Ray run must equal."""
    out = shards / "one.jsonl"
    assert main(["score", "--model", str(qwen_prm_dir), "--input", str(shards / "all.jsonl"), "--output",
                 str(out), "--skip-bad-rows", *SCORE_OPTIONS]) == 0  # fmt: skip
    return [json.loads(line) for line in out.read_text().splitlines()]


def ray_score(model, src, dst, *extra) -> int:
    return main(["score", "--ray", "--model", str(model), "--input", str(src), "--output", str(dst),
                 *SCORE_OPTIONS, *extra])  # fmt: skip


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    """Row for row: the input fields equal, step scores within 1e-6; bad rows by reason (the file named
    differs: a shard on Ray, all.jsonl in one process)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if "error" in w:
            assert g["error"].split(": ", 1)[1] == w["error"].split(": ", 1)[1]
            continue
        assert {k: v for k, v in g.items() if k != "scores"} == {k: v for k, v in w.items() if k != "scores"}
        gs, ws = g["scores"], w["scores"]
        assert gs["first_error"] == ws["first_error"] and gs["steps_dropped"] == ws["steps_dropped"]
        assert len(gs["step_scores"]) == len(ws["step_scores"])
        for a, b in zip(
            gs["step_scores"] + [gs["min"], gs["mean"]], ws["step_scores"] + [ws["min"], ws["mean"]]
        ):
            assert math.isclose(a, b, rel_tol=0, abs_tol=1e-6), (g.get("id"), a, b)


def read_jsonl_shards(folder: Path) -> list[dict]:
    return [
        json.loads(line) for f in sorted(folder.glob("part-*.jsonl")) for line in f.read_text().splitlines()
    ]


def test_jsonl_shards_equal_one_process_row_for_row(
    cluster, shards, one_process, qwen_prm_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    assert ray_score(qwen_prm_dir, shards / "in", out, "--num-workers", "2", "--batch-rows", "16",
                     "--skip-bad-rows") == 0  # fmt: skip
    got = read_jsonl_shards(out)
    assert_same_rows(got, one_process)
    bad = [r for r in got if "error" in r]
    assert [re.match(r"(.*?:\d+): ", r["error"]).group(1) for r in bad] == [
        f"{shards}/in/s1.jsonl:{n}" for n in (81, 82)
    ]
    assert not list(tmp_path.glob("*.partial"))


def test_parquet_in_and_out(cluster, shards, one_process, qwen_prm_dir, tmp_path):
    """Parquet shards in (the JSONL shards' good rows), Parquet shards out with the same rows; a row that
    has no steps is recorded with its Parquet row number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "in"
    src.mkdir()
    for f in sorted((shards / "in").glob("*.jsonl")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.startswith('{"')]
        pq.write_table(pa.Table.from_pylist(rows), src / f"{f.stem}.parquet")
    out = tmp_path / "out"
    assert (
        ray_score(qwen_prm_dir, src, out, "--num-workers", "2", "--batch-rows", "32", "--skip-bad-rows") == 0
    )
    table = pq.read_table(out)  # every shard has one schema: read as one table
    got = table.to_pylist()
    bad = [r for r in got if r["error"] is not None]
    assert [b["error"].split(": ", 1)[0] for b in bad] == [f"{src}/s1.parquet:81"]
    assert bad[0]["id"] == "no-steps" and bad[0]["scores"] is None
    want = [r for r in one_process if "error" not in r]
    assert_same_rows([{k: v for k, v in r.items() if k != "error"} for r in got if r["error"] is None], want)


def test_a_bad_row_stops_the_run_naming_its_shard_and_line(cluster, shards, qwen_prm_dir, tmp_path):
    with pytest.raises(SystemExit) as stop:
        ray_score(qwen_prm_dir, shards / "in", tmp_path / "out", "--batch-rows", "64")
    message = str(stop.value)
    assert message.startswith(f"fastprm score: {shards}/in/s1.jsonl:81: Expecting property name")
    assert f"{tmp_path / 'out'} was not written" in message
    assert not (tmp_path / "out").exists()


def actor_pids(name: str) -> list[int]:
    """Processes of Ray actors running ``name`` (Ray titles them ``ray::MapWorker(MapBatches(name))``)."""
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        if any(name in part for part in p.info["cmdline"] or ()):
            pids.append(p.pid)
    return pids


def test_a_killed_worker_is_replaced_and_every_row_written_once(
    cluster, shards, one_process, qwen_prm_dir, tmp_path
):
    """SIGKILL one scoring actor once the first shard is on disk: Ray restarts it and retries its batch;
    the output holds every row once and equals the one-process output."""
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_one_actor_mid_run():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            partial = list(tmp_path.glob("out.*.partial"))
            pids = actor_pids("ScoreFileRows")
            if partial and list(partial[0].glob("part-*")) and pids:
                psutil.Process(pids[0]).kill()
                killed.append(len(list(partial[0].glob("part-*"))))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor_mid_run)
    killer.start()
    try:
        code = ray_score(qwen_prm_dir, shards / "in", out, "--num-workers", "2", "--batch-rows", "8",
                         "--skip-bad-rows")  # fmt: skip
    finally:
        killer.join()
    assert code == 0
    assert killed and killed[0] < len(list(out.glob("part-*"))), "the kill came after the last shard"
    assert_same_rows(read_jsonl_shards(out), one_process)


def test_label_on_ray_equals_one_process(cluster, tmp_path):
    """``fastprm label --ray`` with the scripted generator (seeded per step prefix) writes the rows one
    process writes, the bad row (no reference answer) recorded in its place."""
    from fastprm.synthetic import make_problem

    rng = random.Random(1)
    rows = [r for pid in range(8) for r in make_problem(rng, pid, 3)]
    rows.insert(5, {"problem": "no reference", "steps": ["1+1=2"]})
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [
        "--generator",
        "synthetic",
        "--input",
        str(src),
        "--rollouts",
        "4",
        "--skip-bad-rows",
        "--quiet",
    ]
    assert main(["label", *common, "--output", str(tmp_path / "one.jsonl")]) == 0
    assert main(["label", *common, "--output", str(tmp_path / "out"), "--ray", "--num-workers", "2",
                 "--batch-rows", "5"]) == 0  # fmt: skip
    assert read_jsonl_shards(tmp_path / "out") == [
        json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()
    ]


def test_score_dataset_adds_scores_to_a_ray_dataset(cluster, qwen_prm_dir):
    import torch

    from fastprm.distributed import score_dataset
    from fastprm.models import PRM

    rows = [
        {"id": 0, "problem": "1+1?", "steps": ["1+1=2.", "So 2."]},
        {"id": 1, "problem": "2+2?", "solution": "2+2=5.\n\nSo 5."},
        {"id": 2, "problem": "3+3?", "steps": []},
    ]
    ds = ray.data.from_items(rows)
    got = score_dataset(ds, qwen_prm_dir, split_steps=r"\n\n", skip_bad_rows=True, dtype="float32").take_all()
    prm = PRM.from_pretrained(qwen_prm_dir, dtype=torch.float32)
    want = prm.score(["1+1?", "2+2?"], [["1+1=2.", "So 2."], ["2+2=5.", "So 5."]])
    assert [r["id"] for r in got] == [0, 1, 2]
    for r, w in zip(got, want):
        assert r["error"] is None
        assert r["scores"]["step_scores"] == pytest.approx(w.step_scores, abs=1e-6)
    assert got[1]["steps"] == ["2+2=5.", "So 5."]
    assert got[2]["scores"] is None and "the solution has no steps" in got[2]["error"]
    with pytest.raises(Exception, match="the solution has no steps"):
        score_dataset(ds, qwen_prm_dir, split_steps=r"\n\n", dtype="float32").take_all()
    with pytest.raises(ValueError, match="dtype must name a torch dtype"):
        score_dataset(ds, qwen_prm_dir, dtype="fp32")
    with pytest.raises(ValueError, match="num_workers must be a positive integer"):
        score_dataset(ds, qwen_prm_dir, num_workers=0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input", "{missing}"], "--input {missing}: no such file or folder"),
        (["--output", "{existing}"], "--output {existing} exists; --ray writes a new folder of shards"),
        (["--input", "{empty}"], "--input {empty}: no .jsonl, .json or .parquet files"),
    ],
)
def test_ray_command_errors_name_the_option(qwen_prm_dir, tmp_path, argv, message):
    """Checked before a cluster starts: one line naming the option."""
    (tmp_path / "existing").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "in.jsonl").write_text('{"problem": "1+1?", "steps": ["2"]}\n')
    paths = {name: str(tmp_path / name) for name in ("missing", "existing", "empty")}
    options = {"--input": str(tmp_path / "in.jsonl"), "--output": str(tmp_path / "out")}
    options.update(dict(zip(argv[::2], (a.format(**paths) for a in argv[1::2]))))
    with pytest.raises(SystemExit) as stop:
        main(["score", "--ray", "--model", str(qwen_prm_dir), *[x for kv in options.items() for x in kv]])
    assert str(stop.value) == "fastprm score: " + message.format(**paths)


def test_label_resume_is_refused_on_ray(tmp_path):
    with pytest.raises(SystemExit, match="--resume works in one process only"):
        main(["label", "--generator", "synthetic", "--input", str(tmp_path / "x.jsonl"), "--output",
              str(tmp_path / "out"), "--resume", "--ray"])  # fmt: skip
