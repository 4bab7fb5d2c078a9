"""The server's Prometheus metrics (``GET /metrics``), kept in a registry of their own per app, so that two
apps in one process (tests) never share counts."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Each counter's *_created timestamp series would double the exposition for nothing a dashboard reads.
disable_created_metrics()

# Batches hold 1 to thousands of rows; latencies run from milliseconds (a short row) to minutes (a full queue
# on a CPU).
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServerMetrics:
    """Counters, gauges and histograms of one server, all prefixed ``fastprm_``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fastprm_requests", "HTTP requests answered, by endpoint and status code", ["endpoint", "status"],
            registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "fastprm_errors", "requests answered with an error, by kind", ["kind"], registry=r
        )
        self.rows = Counter("fastprm_rows", "rows scored", ["endpoint"], registry=r)
        self.tokens = Counter("fastprm_tokens", "tokens of the rows scored", ["endpoint"], registry=r)
        self.cancelled = Counter(
            "fastprm_cancelled_requests", "requests whose client left before their batch", registry=r
        )
        self.queue_depth = Gauge("fastprm_queue_depth", "requests waiting for a batch", registry=r)
        self.batch_requests = Histogram(
            "fastprm_batch_requests", "requests per scoring batch", buckets=ROW_BUCKETS, registry=r
        )
        self.batch_rows = Histogram(
            "fastprm_batch_rows", "rows per scoring batch", buckets=ROW_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "fastprm_batch_tokens", "tokens per scoring batch", buckets=TOKEN_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "fastprm_batch_seconds", "model time per scoring batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.model_batches = Counter(
            "fastprm_model_batches", "scoring batches, by model copy (0: the server's own)", ["model"],
            registry=r,
        )  # fmt: skip
        self.model_seconds = Counter(
            "fastprm_model_busy_seconds", "time spent scoring, by model copy", ["model"], registry=r
        )
        self.latency = Histogram(
            "fastprm_request_seconds", "request latency, body received to response ready", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip

    def batch(self, model: int, requests: int, rows: int, tokens: int, seconds: float) -> None:
        """Records one scoring batch of model copy ``model`` (the batcher's ``on_batch``)."""
        self.model_batches.labels(str(model)).inc()
        self.model_seconds.labels(str(model)).inc(seconds)
        self.batch_requests.observe(requests)
        self.batch_rows.observe(rows)
        self.batch_tokens.observe(tokens)
        self.batch_seconds.observe(seconds)

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)
