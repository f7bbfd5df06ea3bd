"""The service's Prometheus metrics (prometheus_client), in a registry of its own so that /metrics shows these."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("shoal_requests", "HTTP requests answered, by endpoint and status code", ["endpoint", "code"], registry=r)
        self.latency = Histogram("shoal_request_seconds", "Time from a request's arrival to its answer", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("shoal_batch_samples", "Samples per batch sent to a replica", buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("shoal_queue_depth", "Requests accepted and waiting for a replica", registry=r)
        self.replicas_ready = Gauge("shoal_replicas_ready", "Replicas with the model loaded", registry=r)
        self.restarts = Counter("shoal_replica_restarts", "Replicas restarted after dying", registry=r)
        self.retried = Counter("shoal_retried_requests", "Requests sent again after their replica died", registry=r)
        self.rejected = Counter("shoal_rejected_requests", "Requests refused because the queue was full", registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
