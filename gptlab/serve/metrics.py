"""Prometheus metrics for ``GET /metrics`` (text exposition format, via ``prometheus_client``).

Each server has its own registry, so several servers in one process (tests, benchmarks) never share
counts. Names follow Prometheus' conventions (``_total`` counters, ``_seconds`` histograms):

* ``gptlab_requests_total{method,route,status}``: HTTP requests answered;
* ``gptlab_prompt_tokens_total``, ``gptlab_generation_tokens_total``: tokens read and written;
* ``gptlab_time_to_first_token_seconds``: request arrival to its first generated token;
* ``gptlab_time_per_output_token_seconds``: the time between tokens of a sequence, after the first;
* ``gptlab_request_duration_seconds{route}``: arrival to the last byte of the answer;
* ``gptlab_queue_depth``, ``gptlab_running_sequences``, ``gptlab_slots``: the engine right now.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gptlab.serve.engine import Engine

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Routes are labels as written in the app, never raw paths: a scan of random URLs must not create series.
ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/models/{id}", "/v1/completions", "/v1/chat/completions")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The server's counters and histograms, and gauges read from ``engine`` at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("gptlab_requests", "HTTP requests answered, by route and status",
                                ["method", "route", "status"], registry=r)
        self.prompt_tokens = Counter("gptlab_prompt_tokens", "Prompt tokens of generation requests", registry=r)
        self.generation_tokens = Counter("gptlab_generation_tokens", "Tokens generated", registry=r)
        self.time_to_first_token = Histogram("gptlab_time_to_first_token_seconds",
                                             "Seconds from a request's arrival to its first generated token",
                                             buckets=_LATENCY_BUCKETS, registry=r)
        self.time_per_output_token = Histogram("gptlab_time_per_output_token_seconds",
                                               "Seconds per generated token after the first, per sequence",
                                               buckets=_TOKEN_BUCKETS, registry=r)
        self.duration = Histogram("gptlab_request_duration_seconds", "Seconds from arrival to the end of the answer",
                                  ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        Gauge("gptlab_queue_depth", "Sequences waiting for a slot", registry=r).set_function(
            lambda: engine.stats()["waiting"])
        Gauge("gptlab_running_sequences", "Sequences being decoded", registry=r).set_function(
            lambda: engine.stats()["active"])
        Gauge("gptlab_slots", "Sequences the engine decodes together at most", registry=r).set(engine.max_batch)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request (``route`` is one of :data:`ROUTES`, or ``other``)."""
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(route).observe(seconds)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
