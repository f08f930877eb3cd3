"""The Prometheus metrics of one app (``GET /metrics``), in a registry of its own so that
several apps in one process (tests) never clash."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The Prometheus metrics of one app (its own registry, so apps never clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("lastlayer_requests", "Embedding requests by status and model",
                                ["status", "model"], registry=self.registry)
        self.latency = Histogram("lastlayer_request_seconds", "Embedding request latency",
                                 registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch = Histogram("lastlayer_batch_texts", "Texts per batch run on the model",
                               registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.queue = Gauge("lastlayer_queue_texts", "Texts waiting for a batch",
                           registry=self.registry)
