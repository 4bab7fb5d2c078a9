"""``fastprm serve``: an HTTP scoring server (the ``fastprm[serve]`` extra: FastAPI, uvicorn, prometheus_client).

One model, fixed at start-up, behind four kinds of endpoint: fastprm's own ``/v1/score``, OpenRLHF's remote
reward protocol (``/get_reward``), vLLM's ``/pooling`` for step classification, and ``/health`` +
``/metrics``. Requests flow one way:

    HTTP body -> :mod:`.protocol` (parse, check, name the bad field) -> tokenized rows ->
    :class:`.batcher.DynamicBatcher` (one model thread; rows of concurrent requests scored together) ->
    :class:`~fastprm.scoring.Scorer` -> per-request results -> the endpoint's response shape.

Modules: :mod:`.config` (the server's settings), :mod:`.protocol` (request parsing and response shapes),
:mod:`.batcher` (the queue and model thread), :mod:`.metrics` (Prometheus), :mod:`.app` (the ASGI app).
"""
