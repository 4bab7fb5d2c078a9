"""The ASGI app of ``fastprm serve``: endpoints, limits, auth, metrics, around one :class:`Scorer`.

The event loop only reads bodies, checks them and writes responses. Tokenizing runs on one helper thread
(the tokenizer is not safe to share between threads) and scoring on the batcher's model threads (the
server's model and any worker processes'), so a long batch never delays another client's 4xx or ``/health``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..io import one_line
from ..tokenization import RowError, RowTooLong
from .batcher import Draining, DynamicBatcher, Job, QueueFull
from .config import ServeConfig
from .metrics import ServerMetrics
from .protocol import (
    PoolingRequest,
    RequestError,
    RewardRequest,
    ScoreRequest,
    check_rows,
    error_body,
    parse,
    pooling_inputs,
    pooling_response,
    reward_response,
    reward_rows,
)

if TYPE_CHECKING:
    from ..scoring import Scorer
    from ..tokenization import TokenizedSolution
    from .workers import ModelWorker

logger = logging.getLogger("fastprm.serve")
OPEN_PATHS = frozenset({"/health"})  # answered without the API key (load balancers probe it)


class ClientGone(Exception):
    """The client disconnected before its result was ready."""


class ScoringService:
    """One model behind the endpoints: its scorer, the tokenizer thread, the batcher and the metrics.

    Args:
        scorer: the model and how it runs (layout, GEMM route, truncation, threshold); it also tokenizes.
        config: limits and protocol options.
        workers: more copies of the same model in worker processes, scoring batches beside ``scorer``;
            closed with the service.
    """

    def __init__(self, scorer: Scorer, config: ServeConfig, workers: Sequence[ModelWorker] = ()):
        self.scorer = scorer
        self.config = config
        self.workers = list(workers)
        self.metrics = ServerMetrics()
        self.batcher = DynamicBatcher(
            [scorer.score_tokenized, *(worker.score_tokenized for worker in self.workers)],
            config.max_batch_tokens,
            config.max_wait_ms / 1000,
            config.max_queue,
            on_batch=self.metrics.batch,
        )
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        self.tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="fastprm-tokenize")
        self.draining = False

    def close(self) -> None:
        """Scores what is queued, then stops the threads and the worker processes."""
        self.draining = True
        self.batcher.close()
        self.tokenizer_thread.shutdown()
        for worker in self.workers:
            worker.close()

    # -- the steps of a request ---------------------------------------------------------------------------

    async def tokenize(self, work: Callable[[], Any]) -> Any:
        """``work()`` on the tokenizer thread."""
        return await asyncio.get_running_loop().run_in_executor(self.tokenizer_thread, work)

    def step_rows(
        self, problems: list[str], solutions: list[list[str]], names: list[str]
    ) -> list[TokenizedSolution]:
        """Tokenized rows; a bad row is a 422 (413 when too long) naming the row by ``names[row]``."""
        try:
            rows = self.scorer.tokenizer(problems, solutions)
        except RowError as err:
            status = 413 if isinstance(err, RowTooLong) else 422
            raise RequestError(status, f"{names[err.row]}: {err.reason}", names[err.row]) from None
        self.check_tokens(rows)
        return rows

    def check_tokens(self, rows: list[TokenizedSolution]) -> None:
        tokens = sum(len(r.input_ids) for r in rows)
        if tokens > self.config.max_request_tokens:
            raise RequestError(
                413,
                f"the request's {tokens} tokens exceed the server's limit of {self.config.max_request_tokens}",
            )

    async def score(self, request: Request, rows: list[TokenizedSolution]) -> list:
        """Per-row :class:`~fastprm.scoring.SolutionScores`, scored in the next batch of the model thread."""
        if not rows:
            return []
        loop = asyncio.get_running_loop()
        result: asyncio.Future = loop.create_future()

        def settle(value: list | BaseException) -> None:
            if not result.done():
                result.set_result(value)

        job = Job(
            rows, sum(len(r.input_ids) for r in rows), lambda value: loop.call_soon_threadsafe(settle, value)
        )
        try:
            self.batcher.submit(job)
        except QueueFull:
            raise RequestError(503, "the queue is full; retry later", headers={"Retry-After": "1"}) from None
        except Draining:
            raise RequestError(503, "the server is shutting down") from None
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not result.done():
            job.cancelled = True  # dropped unless its batch has started
            self.metrics.cancelled.inc()
            raise ClientGone()
        value = result.result()
        if isinstance(value, BaseException):
            raise RequestError(500, f"scoring failed: {one_line(value)}")
        return value

    async def answer(
        self, endpoint: str, request: Request, work: Callable[[bytes], Awaitable[dict]]
    ) -> Response:
        """Runs one request through ``work`` (body -> JSON response) and turns what it raises into the error
        response; counts it in the metrics."""
        start = time.perf_counter()
        try:
            if self.draining:
                raise RequestError(503, "the server is shutting down")
            body = await read_body(request, self.config.max_request_bytes)
            response: Response = JSONResponse(await work(body))
        except RequestError as err:
            self.metrics.errors.labels(err.kind).inc()
            response = JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        except ClientGone:
            response = Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        except (
            Exception
        ) as err:  # a bug: logged with its traceback; the client gets a 500, the server goes on
            logger.exception("%s failed", endpoint)
            self.metrics.errors.labels("InternalServerError").inc()
            response = JSONResponse(error_body(500, f"internal error: {one_line(err)}"), status_code=500)
        self.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    def count(self, endpoint: str, rows: list[TokenizedSolution]) -> None:
        self.metrics.rows.labels(endpoint).inc(len(rows))
        self.metrics.tokens.labels(endpoint).inc(sum(len(r.input_ids) for r in rows))

    # -- endpoints ----------------------------------------------------------------------------------------

    async def v1_score(self, request: Request, body: bytes) -> dict:
        parsed = parse(ScoreRequest, body)
        check_rows(len(parsed.rows), self.config.max_rows, "rows")
        problems, solutions = [r.problem for r in parsed.rows], [r.steps for r in parsed.rows]
        names = [f"rows[{i}]" for i in range(len(problems))]
        rows = await self.tokenize(lambda: self.step_rows(problems, solutions, names))
        scores = await self.score(request, rows)
        self.count("/v1/score", rows)
        out = []
        for r, s in zip(parsed.rows, scores):
            out.append({**({"id": r.id} if r.id is not None else {}), **s.to_dict()})
        return {
            "object": "score",
            "model": self.config.model_name,
            "rows": out,
            "usage": {"prompt_tokens": sum(len(r.input_ids) for r in rows)},
        }

    async def get_reward(self, request: Request, body: bytes) -> dict:
        parsed = parse(RewardRequest, body)
        check_rows(len(parsed.query), self.config.max_rows, "query")
        problems, solutions = reward_rows(parsed, self.config.split_steps, self.config.problem_regex)
        with_steps = [i for i, steps in enumerate(solutions) if steps]
        rows = await self.tokenize(
            lambda: self.step_rows(
                [problems[i] for i in with_steps],
                [solutions[i] for i in with_steps],
                [f"query[{i}]" for i in with_steps],
            )
        )
        scores = await self.score(request, rows)
        self.count("/get_reward", rows)
        per_query: list[dict | None] = [None] * len(problems)
        for i, s in zip(with_steps, scores):
            per_query[i] = s.to_dict() if s.step_scores else None
        return reward_response(
            per_query,
            self.config.aggregate,
            self.config.empty_reward,
            self.config.return_step_scores or parsed.return_step_scores,
        )

    async def pooling(self, request: Request, body: bytes) -> dict:
        parsed = parse(PoolingRequest, body)
        step_tokenizer = self.scorer.tokenizer
        if len(step_tokenizer.separator_ids) != 1:
            raise RequestError(
                400, f"/pooling finds steps by one separator token; this model's separator "
                f"{step_tokenizer.convention.separator!r} has {len(step_tokenizer.separator_ids)}"
            )  # fmt: skip
        texts, ids = pooling_inputs(parsed, self.config.model_name, len(self.scorer.prm.tokenizer))
        check_rows(len(texts or ids), self.config.max_rows, "input")
        rows, kept = await self.tokenize(lambda: self._pooling_rows(texts, ids))
        scores = await self.score(request, [rows[i] for i in kept])
        self.count("/pooling", [rows[i] for i in kept])
        per_input: list[list[float]] = [[] for _ in rows]
        for i, s in zip(kept, scores):
            per_input[i] = s.step_scores
        return pooling_response(self.config.model_name, per_input, sum(len(r.input_ids) for r in rows))

    def _pooling_rows(self, texts: list[str] | None, ids: list[list[int]] | None):
        """Every input as a row (text tokenized as vLLM does: special tokens in the text are parsed, which is
        how a pooling client marks its steps) and the indices of those with a step."""
        from ..tokenization import TokenizedSolution

        if texts is not None:
            ids = self.scorer.prm.tokenizer(texts)["input_ids"]
        separator = self.scorer.tokenizer.separator_ids[0]
        rows, kept = [], []
        for i, row_ids in enumerate(ids):
            if separator not in row_ids:  # vLLM answers such an input with no rows
                rows.append(TokenizedSolution(list(row_ids), []))
                continue
            try:
                rows.append(self.scorer.tokenizer.from_ids(row_ids, i))
            except RowError as err:
                status = 413 if isinstance(err, RowTooLong) else 422
                raise RequestError(status, f"input[{i}]: {err.reason}", f"input[{i}]") from None
            kept.append(i)
        self.check_tokens(rows)
        return rows, kept

    def health(self) -> Response:
        if self.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not self.batcher.alive:
            return JSONResponse({"status": "model thread stopped"}, status_code=503)
        return JSONResponse(
            {"status": "ok", "model": self.config.model_name, "models_live": self.batcher.live_models}
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; 413 as soon as it is known to exceed ``limit`` bytes (declared or received)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body's {declared} bytes exceed the server's limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body exceeds the server's limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (after the body, the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class BearerAuth:
    """ASGI middleware: every path but :data:`OPEN_PATHS` needs ``Authorization: Bearer <key>``. The header is
    compared through SHA-256 digests with :func:`hmac.compare_digest`, so neither its bytes nor its length
    show in the time taken. The key is never logged."""

    def __init__(self, app, key: str):
        self.app = app
        self.expected = hashlib.sha256(f"Bearer {key}".encode()).digest()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if hmac.compare_digest(hashlib.sha256(given).digest(), self.expected):
            return await self.app(scope, receive, send)
        response = JSONResponse(
            error_body(401, "a valid 'Authorization: Bearer <key>' header is required"),
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


def create_app(service: ScoringService) -> FastAPI:
    """The FastAPI app serving ``service``; closing the app (lifespan end) drains the service."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await asyncio.get_running_loop().run_in_executor(None, service.close)

    app = FastAPI(title="fastprm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):  # unknown paths, wrong methods
        return JSONResponse(error_body(err.status_code, str(err.detail)), status_code=err.status_code)

    def endpoint(path: str, handler: Callable[[Request, bytes], Awaitable[dict]]) -> None:
        async def route(request: Request) -> Response:
            return await service.answer(path, request, lambda body: handler(request, body))

        app.add_api_route(path, route, methods=["POST"], name=path)

    endpoint("/v1/score", service.v1_score)
    endpoint("/get_reward", service.get_reward)
    endpoint("/pooling", service.pooling)

    @app.get("/health")
    async def health() -> Response:
        return service.health()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type=service.metrics.content_type)

    @app.get("/v1/models")
    async def models() -> dict:  # what OpenAI-style clients ask first
        return {
            "object": "list",
            "data": [{"id": service.config.model_name, "object": "model", "owned_by": "fastprm"}],
        }

    if service.config.api_key is not None:
        app.add_middleware(BearerAuth, key=service.config.api_key)
    return app
