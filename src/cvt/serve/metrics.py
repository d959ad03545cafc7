"""Prometheus series of one server, in a registry of its own (several apps can live in one process: tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    """The series ``/metrics`` exposes (names prefixed ``cvt_``)."""

    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cvt_requests", "HTTP requests answered, by route and status code", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "cvt_request_seconds", "time from request to response, by route", ["route"], buckets=_LATENCY, registry=r
        )
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch})
        self.batch_size = Histogram(
            "cvt_batch_size", "images per model batch (real ones, not padding)", buckets=buckets, registry=r
        )
        self.batch_seconds = Histogram(
            "cvt_batch_seconds", "model time per batch (forward pass)", buckets=_LATENCY, registry=r
        )
        self.queue_seconds = Histogram(
            "cvt_queue_seconds", "time an image waited for its batch to start", buckets=_LATENCY, registry=r
        )
        self.queue_depth = Gauge("cvt_queue_depth", "images waiting for a batch", registry=r)
        self.in_flight = Gauge("cvt_requests_in_flight", "admitted requests not yet answered", registry=r)
