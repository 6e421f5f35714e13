"""Prometheus metrics of the edge: requests, errors, latency and TTFB by dialect/provider."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["EdgeMetrics"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("dialect", "provider")
        self.requests = Counter("codeswitch_requests", "Requests answered",
                                (*labels, "status"), registry=self.registry)
        self.errors = Counter("codeswitch_errors", "Requests answered with an error",
                              (*labels, "status"), registry=self.registry)
        self.latency = Histogram("codeswitch_request_duration_seconds",
                                 "Time from request received to last byte sent", labels,
                                 buckets=_BUCKETS, registry=self.registry)
        self.ttfb = Histogram("codeswitch_time_to_first_byte_seconds",
                              "Time from request received to first body byte sent", labels,
                              buckets=_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("codeswitch_in_flight_requests", "Requests in flight",
                               registry=self.registry)

    def observe(self, dialect: str, provider: str | None, status: int, latency: float,
                ttfb: float | None) -> None:
        p = provider or "-"
        code = str(status)
        self.requests.labels(dialect, p, code).inc()
        if status >= 400:
            self.errors.labels(dialect, p, code).inc()
        self.latency.labels(dialect, p).observe(latency)
        if ttfb is not None:
            self.ttfb.labels(dialect, p).observe(ttfb)

    def render(self) -> bytes:
        return generate_latest(self.registry)
