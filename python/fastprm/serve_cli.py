"""``fastprm serve``: loads the model, warms it up, then serves :mod:`fastprm.serve` under uvicorn until
SIGTERM or Ctrl-C, which drain it: no new connection is accepted, every request already received is
answered, then the process exits 0."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

from .cli import load_scorer
from .io import one_line

LOOPBACK = "127.0.0.1"


def serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .serve.app import ScoringService, create_app
        from .serve.config import ServeConfig
        from .serve.server import DrainingServer
        from .serve.workers import ModelWorker, warm_up
    except ImportError as err:
        raise SystemExit(
            f"fastprm serve needs the serve extra ({one_line(err)}): pip install 'fastprm[serve]'"
        ) from None
    api_key = _api_key(args)
    if not Path(args.model).is_dir():
        raise SystemExit(f"fastprm serve: --model {args.model}: no such folder")
    try:
        config = ServeConfig(
            model_name=args.served_model_name or Path(args.model).resolve().name,
            api_key=api_key,
            max_batch_tokens=args.max_batch_tokens,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            max_request_bytes=args.max_request_bytes,
            max_rows=args.max_rows,
            max_request_tokens=args.max_request_tokens,
            split_steps=args.split_steps,
            problem_regex=args.problem_regex,
            aggregate=args.aggregate,
            empty_reward=args.empty_reward,
            return_step_scores=args.return_step_scores,
        )
    except ValueError as err:
        raise SystemExit(f"fastprm serve: {err}") from None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    threads = _threads_per_model(args.model_workers)
    _say(f"loading {args.model}")
    scorer = load_scorer(args, "serve")
    warm_up(scorer)
    _say(f"model ready ({scorer.plan.describe()})")
    workers = []
    try:
        # One at a time: a worker calibrating its plan must not time itself against another one loading.
        for index in range(1, args.model_workers):
            workers.append(ModelWorker(args, threads, index))
            _say(f"model worker {index} of {args.model_workers - 1} ready ({workers[-1].plan})")
    except RuntimeError as err:
        for worker in workers:
            worker.close()
        raise SystemExit(f"fastprm serve: {err}") from None
    if not _is_loopback(args.host) and api_key is None:
        _say(f"warning: listening on {args.host} without --api-key: anyone who can reach it can use it")
    service = ScoringService(scorer, config, workers)
    server = DrainingServer(
        service,
        uvicorn.Config(
            create_app(service),
            host=args.host,
            port=args.port,
            log_level="info",
            access_log=args.access_log,
            timeout_graceful_shutdown=None,  # a drain finishes every received request, however long
        ),
        on_ready=lambda host, port: _say(f"ready on http://{host}:{port}"),
    )
    server.run()
    if server.started:
        _say("drained; exiting")
        return 0
    return 1  # uvicorn could not start (e.g. the port is taken); it has said why


def _threads_per_model(models: int) -> int:
    """Splits the cores torch may use among ``models`` copies of the model and sets this process's share."""
    import torch

    from .machine import fit_threads_to_cores

    cores = fit_threads_to_cores()
    threads = max(1, cores // models)
    if models > cores:
        _say(f"warning: {models} model copies on {cores} cores: they will contend for them")
    if models > 1:
        torch.set_num_threads(threads)
        _say(f"{models} model copies, {threads} torch thread(s) each")
    return threads


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file is None:
        return args.api_key
    try:
        key = Path(args.api_key_file).read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise SystemExit(f"fastprm serve: --api-key-file {args.api_key_file}: {one_line(err)}") from None
    if not key:
        raise SystemExit(f"fastprm serve: --api-key-file {args.api_key_file} is empty")
    return key


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _say(message: str) -> None:
    print(f"fastprm serve: {message}", file=sys.stderr, flush=True)
