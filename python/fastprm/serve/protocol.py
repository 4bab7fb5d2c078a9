"""Request bodies of the server's endpoints, checked field by field, and the shapes of their responses.

- ``/v1/score`` (fastprm's own): ``{"rows": [{"problem", "steps", "id"?}]}`` -> per row what ``fastprm
  score`` writes under ``scores``.
- ``/get_reward`` (OpenRLHF's remote reward protocol, as its ``remote_rm_fn`` posts it): ``{"query": [prompt
  + response], "prompts": [prompt], "labels": [...]}`` -> ``{"rewards", "scores", "extra_logs"}``, each a
  list with one float per query (OpenRLHF concatenates ``extra_logs`` values per sample).
- ``/pooling`` (vLLM's, ``task: token_classify``): ``{"model"?, "input": text | [text] | ids | [ids]}`` ->
  per input one ``[P(bad), P(good)]`` row per step separator, in vLLM's response shape (checked against a
  recorded exchange with vLLM 0.32's server, ``tests/fixtures/vllm_pooling.json``).

Every error is vLLM's (OpenAI's) error object ``{"error": {"message", "type", "param", "code"}}``, whose
``param`` names the field, e.g. ``rows[3].steps``. A string with a lone surrogate escape (``"\\ud800"``) is
refused by the JSON parser itself: 400.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..io import json_safe
from ..rl.text import QueryMismatch, query_rows

ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    413: "RequestTooLargeError",
    422: "ValidationError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class RequestError(Exception):
    """A request the server answers with an error: ``status`` (HTTP), a message, and the field it is about."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers

    @property
    def kind(self) -> str:
        return ERROR_TYPES.get(self.status, "Error")

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param)


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """The JSON error object of every error response."""
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "Error"),
            "param": param,
            "code": status,
        }
    }


# -- request bodies ---------------------------------------------------------------------------------------


class ScoreRow(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    problem: str
    steps: list[str]
    id: str | int | None = None


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    rows: list[ScoreRow]


class RewardRequest(BaseModel):
    # OpenRLHF's client may send more than these; labels are taken and not used (outcome rewards are the
    # trainer's).
    model_config = ConfigDict(extra="allow", strict=True)
    query: list[str]
    prompts: list[str] | None = None
    labels: list[Any] | None = None
    return_step_scores: bool = False


class PoolingRequest(BaseModel):
    # vLLM accepts (and ignores) fields it does not use; so does this server.
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    input: Any
    task: str | None = None
    encoding_format: str = "float"


def parse(model: type[BaseModel], body: bytes) -> Any:
    """``body`` as ``model``: 400 when it is not JSON, 422 naming the first bad field otherwise."""
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        first = errors[0]
        if first["type"] == "json_invalid":
            raise RequestError(400, f"the body is not valid JSON: {first['msg']}") from None
        where = field_path(first["loc"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise RequestError(422, f"{where}: {first['msg']}{more}", where) from None


def field_path(loc: tuple) -> str:
    """pydantic's error location as a field path: ('rows', 3, 'steps') -> 'rows[3].steps'."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "body"


def check_rows(count: int, limit: int, field: str) -> None:
    if count > limit:
        raise RequestError(
            413, f"{field}: {count} rows exceed the server's limit of {limit} per request", field
        )


# -- /get_reward ------------------------------------------------------------------------------------------


def reward_rows(
    request: RewardRequest, split_steps: str, problem_regex: str | None = None
) -> tuple[list[str], list[list[str]]]:
    """(problem, steps) of each query (:func:`fastprm.rl.text.query_rows`: the response is the query after
    its prompt; the problem the prompt's last chat user turn, or ``problem_regex``'s group). A response with
    no step gives an empty list (the caller scores nothing for it)."""
    if request.prompts is None:
        raise RequestError(
            422, "prompts: required, to split each query into its prompt and response", "prompts"
        )
    if len(request.prompts) != len(request.query):
        raise RequestError(
            422, f"prompts: {len(request.prompts)} prompts for {len(request.query)} queries", "prompts"
        )
    if request.labels is not None and len(request.labels) != len(request.query):
        raise RequestError(
            422, f"labels: {len(request.labels)} labels for {len(request.query)} queries", "labels"
        )
    try:
        return query_rows(request.query, request.prompts, split_steps, problem_regex)
    except QueryMismatch as err:
        raise RequestError(
            422, f"query[{err.index}]: does not start with prompts[{err.index}]", f"query[{err.index}]"
        ) from None


def reward_response(
    scores: list[dict | None], aggregate: str, empty_reward: float, step_scores: bool
) -> dict:
    """OpenRLHF's reward response from per-query scores (None: no step). ``rewards`` and ``scores`` are the
    aggregate P(good) in [0, 1] (``empty_reward`` where nothing was scored or the model gave NaN)."""
    rewards = []
    for s in scores:
        value = None if s is None else s[aggregate]
        rewards.append(empty_reward if value is None else value)
    out = {
        "rewards": rewards,
        "scores": rewards,
        "extra_logs": {
            "prm_steps": [0.0 if s is None else float(len(s["step_scores"])) for s in scores],
            "prm_unscored": [float(s is None or s[aggregate] is None) for s in scores],
        },
    }
    if step_scores:
        out["step_scores"] = [[] if s is None else s["step_scores"] for s in scores]
    return out


# -- /pooling ---------------------------------------------------------------------------------------------


def pooling_inputs(
    request: PoolingRequest, model_name: str, vocab_size: int
) -> tuple[list[str] | None, list[list[int]] | None]:
    """(texts, None) or (None, token id lists) of a vLLM pooling request, checked as vLLM checks them."""
    if request.model is not None and request.model != model_name:
        raise RequestError(404, f"The model `{request.model}` does not exist.", "model")
    if request.task not in (None, "token_classify"):
        raise RequestError(
            400, f"Unsupported task: {request.task!r} Supported tasks: ['token_classify']", "task"
        )
    if request.encoding_format != "float":
        raise RequestError(
            400,
            f"encoding_format: only 'float' is served, got {request.encoding_format!r}",
            "encoding_format",
        )
    value = request.input
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RequestError(
            422,
            "input: a string, a list of strings, a list of token ids or a list of token-id lists",
            "input",
        )
    if all(isinstance(v, str) for v in value):
        return value, None
    if all(_is_id(v) for v in value):
        value = [value]
    for i, ids in enumerate(value):
        if not isinstance(ids, list) or not ids or not all(_is_id(t) and t < vocab_size for t in ids):
            raise RequestError(
                422, f"input[{i}]: expected a non-empty list of token ids in [0, {vocab_size})", f"input[{i}]"
            )
    return None, value


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def pooling_response(model_name: str, step_scores: list[list[float]], tokens: int) -> dict:
    """vLLM's pooling response: per input its steps' [P(bad), P(good)] rows."""
    data = [
        {"index": i, "object": "pooling", "data": json_safe([[1.0 - p, p] for p in probs])}
        for i, probs in enumerate(step_scores)
    ]
    return {
        "id": f"pooling-{uuid.uuid4().hex[:16]}",
        "object": "list",
        "created": int(time.time()),
        "model": model_name,
        "data": data,
        "usage": {
            "prompt_tokens": tokens,
            "total_tokens": tokens,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
    }
