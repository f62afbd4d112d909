"""Prometheus metrics of one service, named `<service>_...`, kept in a registry of their own.

In the engine/front split (serving.supervisor) every process writes its samples into PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode, chosen when it is imported) and /metrics reads them all (`exposition`):
counters and histograms add up over the processes, and each gauge says how (`multiprocess_mode`).
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """Every metric a service exports. One instance per app, so tests can run several apps in one process."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        p, r = service, self.registry
        self.requests = Counter(
            f"{p}_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.request_seconds = Histogram(
            f"{p}_request_duration_seconds",
            "Total time per request.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            f"{p}_queue_wait_seconds", "Time an item waited in the batch queue.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.preprocess_seconds = Histogram(
            f"{p}_preprocess_seconds", "Preprocessing time per item.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            f"{p}_inference_seconds", "Model forward time per batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.postprocess_seconds = Histogram(
            f"{p}_postprocess_seconds", "Postprocessing time per batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(f"{p}_batch_size", "Items per executed batch.", buckets=BATCH_BUCKETS, registry=r)
        self.inflight = Gauge(
            f"{p}_inflight_requests", "Prediction requests being handled.", registry=r, multiprocess_mode="livesum"
        )
        self.loop_lag = Gauge(
            f"{p}_event_loop_lag_seconds",
            "The event loop's worst lateness since the previous scrape (every answer waits that long; split: the "
            "worst front's, over its last second).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.queue_depth = Gauge(
            f"{p}_queue_depth", "Items waiting in the batch queue.", registry=r, multiprocess_mode="livesum"
        )
        self.stages = Counter(
            f"{p}_stage_started",
            "Prediction work begun, by stage (admitted: a queue slot reserved; body, fetch, preprocess): a request "
            "refused at admission begins none of them.",
            ["stage"],
            registry=r,
        )
        self.rejected = Counter(f"{p}_rejected", "Items refused or dropped, by reason.", ["reason"], registry=r)
        self.fetches = Counter(
            f"{p}_fetch",
            "Image URL fetches by outcome: ok, or the error's code (url_forbidden, upstream_unavailable, "
            "upstream_timeout, overloaded, fetch_failed, payload_too_large, invalid_request). Only services that fetch "
            "URLs count any.",
            ["outcome"],
            registry=r,
        )
        self.connections = Gauge(
            f"{p}_open_connections",
            "HTTP connections open (bounded by MAX_CONNECTIONS per front process).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ready = Gauge(
            f"{p}_ready",
            "1 when the model is loaded and warm and the server is not draining (split: every live process is).",
            registry=r,
            multiprocess_mode="livemin",
        )
        # A gauge of value 1 with the bundle as labels (what an Info metric exports; Info has no multiprocess mode).
        self.model_info = Gauge(
            f"{p}_model_info",
            "The loaded model bundle.",
            ["name", "version", "device", "precision"],
            registry=r,
            multiprocess_mode="max",
        )

    def exposition(self) -> tuple[bytes, str]:
        """The /metrics body and its content type: this registry, or every process's samples in the split."""
        if multiprocess():
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def multiprocess() -> bool:
    """True when prometheus-client writes samples to PROMETHEUS_MULTIPROC_DIR (set by serving.supervisor)."""
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ
