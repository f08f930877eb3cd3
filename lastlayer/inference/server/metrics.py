"""The Prometheus metrics of one app (``GET /metrics``), in a registry of its own so that
several apps in one process (tests) never clash.

Besides the requests, batches and queue, the adapters' residency (``Embedder.stats()``,
read at each scrape): resident adapters, the bytes their heads use and the budget, hits,
misses, evictions, and the load-latency histogram of cold heads.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily


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

    def watch(self, embedder) -> None:
        """Export ``embedder.stats()`` (the adapters' residency) at every scrape."""
        self.registry.register(_Residency(embedder))


class _Residency:
    """A collector reading ``Embedder.stats()`` when Prometheus scrapes."""

    def __init__(self, embedder) -> None:
        self.embedder = embedder

    def describe(self):
        return []  # read at scrape time only (nothing to check at registration)

    def collect(self):
        stats = self.embedder.stats()
        gauges = (("lastlayer_adapters_registered", "Adapters registered", "registered"),
                  ("lastlayer_adapters_resident", "Adapters whose head is in memory",
                   "resident"),
                  ("lastlayer_adapter_memory_bytes", "Bytes the resident heads use",
                   "bytes_used"),
                  ("lastlayer_adapter_working_memory_bytes",
                   "Bytes running mixed batches gather for their rows' LoRA factors",
                   "working_bytes"),
                  ("lastlayer_adapter_memory_budget_bytes",
                   "adapter_memory (absent: no budget)", "budget"))
        for name, doc, key in gauges:
            if stats[key] is not None:
                yield GaugeMetricFamily(name, doc, value=stats[key])
        for name, doc, key in (("lastlayer_adapter_hits", "Adapter lookups found resident",
                                "hits"),
                               ("lastlayer_adapter_misses", "Adapter lookups that had to load",
                                "misses"),
                               ("lastlayer_adapter_evictions", "Heads dropped for the budget",
                                "evictions"),
                               ("lastlayer_adapter_load_failures", "Head builds that failed",
                                "load_failures")):
            yield CounterMetricFamily(name, doc, value=stats[key])
        buckets = [(_bound(bound), count) for bound, count in stats["load_buckets"]]
        yield HistogramMetricFamily("lastlayer_adapter_load_seconds",
                                    "Time to build a cold adapter's head", buckets=buckets,
                                    sum_value=stats["load_seconds_sum"])


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
