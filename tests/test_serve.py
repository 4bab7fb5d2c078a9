"""``fastprm serve`` as users run it: a real server process on a free port, real HTTP.

Scores equal ``prm.score``; concurrent requests come back to the right callers; every bad input gets its
status and a JSON error naming the field; auth; queue limits; a client that leaves; drain on SIGTERM;
``/metrics``; and ``/pooling`` / ``/get_reward`` against recorded vLLM and OpenRLHF exchanges.
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import checkpoints

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

FIXTURES = Path(__file__).parent / "fixtures"
MODEL_NAME = "tiny-prm"  # the name the recorded vLLM exchange was served under
PROBLEMS = [
    "What is 2 + 3?",
    "Compute 7 * 6.",
    "A train travels 60 km in 1.5 hours. What is its average speed?",
    "Solve for x: 3x - 4 = 11.",
]
SOLUTIONS = [
    ["2 + 3 = 5.", "The answer is 5."],
    ["7 * 6 = 42.", "So the answer is 42.", "Done."],
    ["Speed is distance over time.", "60 / 1.5 = 40.", "The answer is 40 km/h."],
    ["Add 4 to both sides: 3x = 15.", "Divide by 3: x = 5."],
]


@pytest.fixture(scope="module")
def serve_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve_prm")
    checkpoints.write_qwen25_math_prm_head64(path)
    return path


@pytest.fixture(scope="module")
def offline(serve_dir):
    from fastprm import PRM

    return PRM.from_pretrained(serve_dir, dtype=torch.float32)


class Server:
    """``python -m fastprm serve`` in a subprocess; ``url`` once it prints that it is ready."""

    def __init__(self, model: Path, *options: str):
        command = [sys.executable, "-m", "fastprm", "serve", "--model", str(model), "--dtype", "fp32"]
        command += ["--port", "0", "--served-model-name", MODEL_NAME, *options]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
        self.log: list[str] = []
        ready = threading.Event()
        self.url = None

        def read():
            for line in self.process.stderr:
                self.log.append(line)
                if "ready on http://" in line:
                    self.url = line.split("ready on ")[1].strip()
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(180) or self.url is None:
            self.process.kill()
            raise AssertionError("server did not start:\n" + "".join(self.log))

    def stop(self) -> int:
        """SIGTERM (a drain) and the exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def metric(self, name: str, headers=None) -> float:
        """A series of ``/metrics`` (``name{labels}`` as exposed), or the sum of every series of a metric
        given by its bare name."""
        total = 0.0
        for line in httpx.get(self.url + "/metrics", headers=headers).text.splitlines():
            if line and not line.startswith("#"):
                series, value = line.rsplit(" ", 1)
                if series == name or ("{" not in name and series.split("{")[0] == name):
                    total += float(value)
        return total


@pytest.fixture(scope="module")
def server(serve_dir):
    s = Server(
        serve_dir, "--max-wait-ms", "50", "--max-rows", "16", "--max-request-bytes", "20000",
        "--max-request-tokens", "3000", "--max-length", "400",
    )  # fmt: skip
    yield s
    assert s.stop() == 0


def post(server, path, body=None, **kw):
    if body is not None:
        kw["json"] = body
    return httpx.post(server.url + path, timeout=120, **kw)


def assert_error(response, status, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error


def close(a, b, tol=1e-6):
    return (a is None and b is None) or abs(a - b) <= tol


def post_concurrently(url: str, rows: list[tuple[str, list[str]]]) -> list:
    """Posts every (problem, steps) row at once, each as its own /v1/score request with its index as id."""

    async def send_all():
        async with httpx.AsyncClient(timeout=120) as client:
            calls = [
                client.post(url + "/v1/score", json={"rows": [{"problem": p, "steps": steps, "id": i}]})
                for i, (p, steps) in enumerate(rows)
            ]
            return await asyncio.gather(*calls)

    return asyncio.run(send_all())


def check_one_row_each(responses: list, expected: list) -> None:
    """Each response is 200 with its own row (by id), whose step scores equal ``expected`` (1e-6)."""
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        got = response.json()["rows"][0]
        assert got["id"] == i
        assert all(close(a, b) for a, b in zip(got["step_scores"], expected[i].step_scores, strict=True))


# -- scores ------------------------------------------------------------------------------------------------


def test_scores_equal_prm_score(server, offline):
    rows = [{"problem": p, "steps": s, "id": i} for i, (p, s) in enumerate(zip(PROBLEMS, SOLUTIONS))]
    body = post(server, "/v1/score", {"rows": rows}).json()
    expected = offline.score(PROBLEMS, SOLUTIONS)
    assert body["model"] == MODEL_NAME and len(body["rows"]) == len(rows)
    for i, (got, want) in enumerate(zip(body["rows"], expected)):
        want = want.to_dict()
        assert got["id"] == i
        assert set(got) - {"id"} == set(want)
        assert all(close(a, b) for a, b in zip(got["step_scores"], want["step_scores"], strict=True))
        for key in ("min", "prod", "mean", "last"):
            assert close(got[key], want[key]), key
        assert got["first_error"] == want["first_error"]


def test_concurrent_requests_come_back_to_their_callers(server, offline):
    """48 requests at once, each one row (problems and steps varied so every answer differs), interleaved
    over the same few problems; each caller gets its own row's scores, and batches held several requests."""
    rows = []
    for i in range(48):
        p = i % len(PROBLEMS)
        rows.append((PROBLEMS[p], [*SOLUTIONS[p][:2], f"Check number {i}."]))
    expected = offline.score([r[0] for r in rows], [r[1] for r in rows])
    batches_before = server.metric("fastprm_batch_requests_count")
    check_one_row_each(post_concurrently(server.url, rows), expected)
    batches = server.metric("fastprm_batch_requests_count") - batches_before
    assert batches < len(rows)  # dynamic batching put several requests in one scoring call


def test_metrics_count_what_was_sent(server):
    name = 'fastprm_rows_total{endpoint="/v1/score"}'
    rows_before, requests_before = (
        server.metric(name),
        server.metric('fastprm_requests_total{endpoint="/v1/score",status="200"}'),
    )
    errors_before = server.metric('fastprm_errors_total{kind="ValidationError"}')
    post(server, "/v1/score", {"rows": [{"problem": p, "steps": s} for p, s in zip(PROBLEMS, SOLUTIONS)]})
    post(server, "/v1/score", {"rows": [{"problem": "x"}]})
    assert server.metric(name) - rows_before == len(PROBLEMS)
    assert server.metric('fastprm_requests_total{endpoint="/v1/score",status="200"}') - requests_before == 1
    assert server.metric('fastprm_errors_total{kind="ValidationError"}') - errors_before == 1
    text = httpx.get(server.url + "/metrics").text
    for family in ("fastprm_queue_depth", "fastprm_batch_rows_bucket", "fastprm_request_seconds_bucket"):
        assert family in text


def test_health_and_models(server):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["id"] == MODEL_NAME


def test_model_workers_score_alike_and_a_lost_worker_costs_no_request(serve_dir, offline):
    """--model-workers 2: a worker process beside the server's own model; concurrent requests are answered by
    both, equal to offline scores; after the worker is SIGKILLed every request is still answered right (the
    batch it held goes to the server's model), /health says one model is left, and SIGTERM still drains."""
    s = Server(serve_dir, "--model-workers", "2", "--max-wait-ms", "20", "--max-batch-tokens", "300")
    rows = [
        (PROBLEMS[i % len(PROBLEMS)], [*SOLUTIONS[i % len(PROBLEMS)][:2], f"Check {i}."]) for i in range(32)
    ]
    expected = offline.score([r[0] for r in rows], [r[1] for r in rows])
    try:
        assert httpx.get(s.url + "/health").json()["models_live"] == 2
        check_one_row_each(post_concurrently(s.url, rows), expected)
        for model in ("0", "1"):  # both copies scored batches
            assert s.metric(f'fastprm_model_batches_total{{model="{model}"}}') > 0
        children = Path(f"/proc/{s.process.pid}/task/{s.process.pid}/children").read_text().split()
        workers = [c for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(workers) == 1
        os.kill(int(workers[0]), signal.SIGKILL)
        check_one_row_each(post_concurrently(s.url, rows), expected)
        assert httpx.get(s.url + "/health").json() == {"status": "ok", "model": MODEL_NAME, "models_live": 1}
        assert any("model worker 1" in line and "exited" in line for line in s.log)
    finally:
        assert s.stop() == 0


# -- bad input: each gets its status and a JSON error naming the field; the server goes on ----------------


def test_malformed_json_is_400(server):
    assert_error(
        post(server, "/v1/score", content=b'{"rows": [', headers={"content-type": "application/json"}), 400
    )
    assert_error(post(server, "/get_reward", content=b"\xff\xfe"), 400)


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "rows"),
        ({"rows": "abc"}, "rows"),
        ({"rows": [{"problem": "p"}]}, "rows[0].steps"),
        ({"rows": [{"problem": "p", "steps": ["a"]}, {"problem": 3, "steps": ["a"]}]}, "rows[1].problem"),
        ({"rows": [{"problem": "p", "steps": ["a", 5]}]}, "rows[0].steps[1]"),
        ({"rows": [{"problem": "p", "steps": ["a"], "extra": 1}]}, "rows[0].extra"),
        ({"rows": [{"problem": "p", "steps": []}]}, "rows[0]"),
        ([1, 2], "body"),
    ],
)
def test_wrong_types_and_missing_fields_are_422_naming_the_field(server, body, param):
    assert_error(post(server, "/v1/score", body), 422, param)


def test_lone_surrogate_is_400(server):
    raw = b'{"rows": [{"problem": "ok", "steps": ["a"]}, {"problem": "bad \\ud800", "steps": ["a"]}]}'
    assert_error(post(server, "/v1/score", content=raw), 400)


def test_limits_are_413(server):
    too_many = {"rows": [{"problem": "p", "steps": ["a"]}] * 17}
    assert_error(post(server, "/v1/score", too_many), 413, "rows")
    too_big = {"rows": [{"problem": "p" * 30000, "steps": ["a"]}]}
    assert_error(post(server, "/v1/score", too_big), 413)
    long_row = {"rows": [{"problem": "p", "steps": ["a"]}, {"problem": "one two " * 300, "steps": ["a"]}]}
    assert_error(post(server, "/v1/score", long_row), 413, "rows[1]")
    many_tokens = {"rows": [{"problem": "one two " * 90, "steps": ["a"]}] * 16}
    assert_error(post(server, "/v1/score", many_tokens), 413)
    assert post(server, "/v1/score", {"rows": [{"problem": "p", "steps": ["a"]}]}).status_code == 200


def test_unknown_paths_and_methods_get_json_errors(server):
    assert_error(httpx.get(server.url + "/nope"), 404)
    assert_error(httpx.get(server.url + "/v1/score"), 405)


def test_bad_requests_do_not_disturb_good_ones(server, offline):
    """Good and bad requests sent together: the good ones get their scores, the bad ones their errors."""
    good = {"rows": [{"problem": PROBLEMS[0], "steps": SOLUTIONS[0]}]}
    bodies = [good, {"rows": [{"problem": 1}]}, good, b"{", good]

    async def send_all():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *[
                    client.post(server.url + "/v1/score", content=b) if isinstance(b, bytes)
                    else client.post(server.url + "/v1/score", json=b)
                    for b in bodies
                ]
            )  # fmt: skip

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200, 422, 200, 400, 200]
    want = offline.score(PROBLEMS[:1], SOLUTIONS[:1])[0].step_scores
    for r in responses[::2]:
        assert all(close(a, b) for a, b in zip(r.json()["rows"][0]["step_scores"], want, strict=True))


# -- protocols --------------------------------------------------------------------------------------------


def vllm_fixture():
    return json.loads((FIXTURES / "vllm_pooling.json").read_text())


@pytest.mark.parametrize("name", ["text", "texts", "ids", "ids_batch", "no_task", "no_steps"])
def test_pooling_matches_vllm(server, serve_dir, name):
    """The recorded vLLM 0.32 exchange: the same response shape and usage and, on the same checkpoint
    bits, the same [P(bad), P(good)] rows."""
    fixture = vllm_fixture()
    exchange = fixture["exchanges"][name]
    response = post(server, "/pooling", exchange["request"])
    assert response.status_code == exchange["status"] == 200
    got, want = response.json(), exchange["response"]
    assert set(got) == set(want) | {"created"}
    assert (
        got["object"] == want["object"] and got["model"] == want["model"] and got["id"].startswith("pooling-")
    )
    assert got["usage"] == want["usage"]
    assert [(d["index"], d["object"]) for d in got["data"]] == [
        (d["index"], d["object"]) for d in want["data"]
    ]
    assert [len(d["data"]) for d in got["data"]] == [len(d["data"]) for d in want["data"]]
    if checkpoints.weights_digest(serve_dir) != fixture["checkpoint_sha256"]:
        pytest.skip("this transformers/torch writes other checkpoint bits than the recorded ones")
    for g, w in zip(got["data"], want["data"]):
        for row_g, row_w in zip(g["data"], w["data"]):
            assert len(row_g) == 2 and all(abs(a - b) < 1e-5 for a, b in zip(row_g, row_w))


@pytest.mark.parametrize("name, status", [("bad_model", 404), ("bad_task", 400), ("bad_input", 422)])
def test_pooling_errors(server, name, status):
    """vLLM's error object and, for a wrong model or task, its status; a wrong input type is 422 here
    (vLLM: 400), by this server's rule for wrong types."""
    exchange = vllm_fixture()["exchanges"][name]
    response = post(server, "/pooling", exchange["request"])
    assert_error(response, status)
    assert set(response.json()["error"]) == set(exchange["response"]["error"])


def test_get_reward_matches_the_openrlhf_exchange(server, offline):
    """OpenRLHF's remote_rm_fn request; the keys its trainer reads, per-sample lists; the recorded answer;
    and rewards equal to the min of the offline step scores."""
    fixture = json.loads((FIXTURES / "openrlhf_get_reward.json").read_text())
    response = post(server, "/get_reward", fixture["request"])
    assert response.status_code == 200, response.text
    got = response.json()
    n = len(fixture["request"]["query"])
    assert set(got) == set(fixture["response"])
    assert len(got["rewards"]) == len(got["scores"]) == n
    assert all(isinstance(v, list) and len(v) == n for v in got["extra_logs"].values())
    assert all(close(a, b) for a, b in zip(got["rewards"], fixture["response"]["rewards"]))
    problem = "What is 2 + 3?"
    expected = offline.score([problem], [["2 + 3 = 5.", "The answer is 5."]])[0]
    assert close(got["rewards"][0], expected.min)
    assert got["rewards"][2] == 0.0 and got["extra_logs"]["prm_unscored"][2] == 1.0  # an empty response


def test_get_reward_options_and_errors(server):
    prompt = "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    body = {
        "query": [prompt + "2 + 3 = 5.\n\nThe answer is 5."],
        "prompts": [prompt],
        "return_step_scores": True,
    }
    got = post(server, "/get_reward", body).json()
    assert len(got["step_scores"][0]) == 2 and got["rewards"][0] == min(got["step_scores"][0])
    assert_error(post(server, "/get_reward", {"query": ["x"]}), 422, "prompts")
    assert_error(post(server, "/get_reward", {"query": ["x"], "prompts": ["y"]}), 422, "query[0]")
    assert_error(post(server, "/get_reward", {"query": ["x", "y"], "prompts": ["x"]}), 422, "prompts")
    assert_error(post(server, "/get_reward", {"query": [1], "prompts": ["x"]}), 422, "query[0]")


# -- auth, queue, disconnects, drain: servers of their own ------------------------------------------------


@pytest.fixture(scope="module")
def guarded(serve_dir, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("key") / "key"
    key_file.write_text("s3cret-key\n")
    s = Server(serve_dir, "--api-key-file", str(key_file), "--max-queue", "1", "--max-wait-ms", "1500")
    yield s
    assert s.stop() == 0


def test_api_key(guarded):
    body = {"rows": [{"problem": PROBLEMS[0], "steps": SOLUTIONS[0]}]}
    assert_error(post(guarded, "/v1/score", body), 401)
    assert_error(post(guarded, "/v1/score", body, headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(post(guarded, "/v1/score", body, headers={"Authorization": "s3cret-key"}), 401)
    assert_error(httpx.get(guarded.url + "/metrics"), 401)
    assert httpx.get(guarded.url + "/health").status_code == 200
    assert post(guarded, "/v1/score", body, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
    assert "s3cret-key" not in "".join(guarded.log)


def test_full_queue_is_503_with_retry_after(guarded):
    """--max-queue 1 and a 1.5 s wait: of requests sent together, one waits and the others are refused."""
    headers = {"Authorization": "Bearer s3cret-key"}
    body = {"rows": [{"problem": PROBLEMS[1], "steps": SOLUTIONS[1]}]}

    async def send_all():
        async with httpx.AsyncClient(timeout=120, headers=headers) as client:
            return await asyncio.gather(
                *[client.post(guarded.url + "/v1/score", json=body) for _ in range(6)]
            )

    responses = asyncio.run(send_all())
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["Retry-After"] == "1"
    assert_error(refused, 503)


def test_a_client_that_leaves_costs_nothing(guarded):
    """A request whose client disconnects while it waits for its batch is dropped, and counted."""
    headers = {"Authorization": "Bearer s3cret-key"}
    before = guarded.metric("fastprm_cancelled_requests_total", headers)
    batches_before = guarded.metric("fastprm_batch_requests_count", headers)
    body = json.dumps({"rows": [{"problem": PROBLEMS[2], "steps": SOLUTIONS[2]}]}).encode()
    host, port = guarded.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-key\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        time.sleep(0.3)  # received and queued; its batch waits 1.5 s
    deadline = time.monotonic() + 10
    while (
        guarded.metric("fastprm_cancelled_requests_total", headers) == before and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert guarded.metric("fastprm_cancelled_requests_total", headers) == before + 1
    time.sleep(2)  # past its batch's wait: no batch ran for it
    assert guarded.metric("fastprm_batch_requests_count", headers) == batches_before
    assert httpx.get(guarded.url + "/health").json()["status"] == "ok"


def test_sigterm_drains_queued_requests(serve_dir, offline):
    """Requests queued behind a 2 s batch wait when SIGTERM arrives are all answered, then the process
    exits 0 and the port is closed."""
    s = Server(serve_dir, "--max-wait-ms", "2000")
    results = {}

    def send(i):
        body = {"rows": [{"problem": PROBLEMS[i], "steps": SOLUTIONS[i]}]}
        results[i] = httpx.post(s.url + "/v1/score", json=body, timeout=120)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(PROBLEMS))]
    for t in threads:
        t.start()
    time.sleep(0.8)  # all received, all waiting for the batch
    assert s.stop() == 0
    for t in threads:
        t.join(60)
    expected = offline.score(PROBLEMS, SOLUTIONS)
    for i in range(len(PROBLEMS)):
        assert results[i].status_code == 200
        got = results[i].json()["rows"][0]["step_scores"]
        assert all(close(a, b) for a, b in zip(got, expected[i].step_scores, strict=True))
    assert "drained" in "".join(s.log)
    with pytest.raises(httpx.ConnectError):
        httpx.get(s.url + "/health")


def test_serve_options_are_checked():
    from fastprm.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--model", "x", "--api-key", "a", "--api-key-file", "b"])
    with pytest.raises(SystemExit):
        main(["serve", "--model", "x", "--problem-regex", "no group"])
    with pytest.raises(SystemExit, match="no such folder"):
        main(["serve", "--model", "/nonexistent/model"])
