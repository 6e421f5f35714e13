"""Prometheus metrics of the edge: requests, errors, latency and TTFB by dialect/provider.

Counted in plain dicts on the request path; ``prometheus_client`` (with the WSGI and HTTP
servers its exposition module imports: 1.9 MB in every edge) is imported at the first
``/metrics`` scrape only, to render what was counted in its text format (``render``).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any

__all__ = ["EdgeMetrics"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _Histogram:
    """One label set's observations: a count per bucket (the last one +Inf) and their sum."""

    __slots__ = ("counts", "created", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.total = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # prometheus_client's rule: the first bucket whose upper bound is >= value
        self.counts[bisect_left(_BUCKETS, value)] += 1
        self.total += value


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it (``floatToGoString``)."""
    from prometheus_client.utils import floatToGoString

    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


class EdgeMetrics:
    def __init__(self) -> None:
        # (dialect, provider, status) -> [count, created]
        self.requests: dict[tuple[str, str, str], list[float]] = {}
        self.errors: dict[tuple[str, str, str], list[float]] = {}
        # (dialect, provider) -> observations
        self.latency: dict[tuple[str, str], _Histogram] = {}
        self.ttfb: dict[tuple[str, str], _Histogram] = {}
        self._registry: Any = None

    def observe(self, dialect: str, provider: str | None, status: int, latency: float,
                ttfb: float | None) -> None:
        p = provider or "-"
        key = (dialect, p, str(status))
        _count(self.requests, key)
        if status >= 400:
            _count(self.errors, key)
        pair = (dialect, p)
        hist = self.latency.get(pair)
        if hist is None:
            hist = self.latency[pair] = _Histogram()
        hist.observe(latency)
        if ttfb is not None:
            hist = self.ttfb.get(pair)
            if hist is None:
                hist = self.ttfb[pair] = _Histogram()
            hist.observe(ttfb)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_Collector(self))
        return bytes(generate_latest(self._registry))


def _count(table: dict[tuple[str, str, str], list[float]], key: tuple[str, str, str]) -> None:
    entry = table.get(key)
    if entry is None:
        table[key] = [1, time.time()]
    else:
        entry[0] += 1


class _Collector:
    """What ``EdgeMetrics`` counted, as the metric families the prometheus_client objects it
    replaces produced (same names, help, labels, buckets, ``_created`` samples)."""

    def __init__(self, metrics: EdgeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.samples import Sample

        m = self.metrics
        labels = ["dialect", "provider"]
        for name, doc, table in (
                ("codeswitch_requests", "Requests answered", m.requests),
                ("codeswitch_errors", "Requests answered with an error", m.errors)):
            family = CounterMetricFamily(name, doc, labels=[*labels, "status"])
            for key, (count, created) in list(table.items()):
                family.add_metric(list(key), count, created=created)
            yield family
        bounds = [_le(b) for b in _BUCKETS] + ["+Inf"]
        for name, doc, hists in (
                ("codeswitch_request_duration_seconds",
                 "Time from request received to last byte sent", m.latency),
                ("codeswitch_time_to_first_byte_seconds",
                 "Time from request received to first body byte sent", m.ttfb)):
            histogram = HistogramMetricFamily(name, doc, labels=labels)
            for pair, hist in list(hists.items()):
                cumulative: list[tuple[str, float]] = []
                running = 0.0
                for bound, n in zip(bounds, hist.counts, strict=True):
                    running += n
                    cumulative.append((bound, running))
                histogram.add_metric(list(pair), cumulative, hist.total)
                named = dict(zip(labels, pair, strict=True))
                histogram.samples.append(Sample(f"{name}_created", named, hist.created))
            yield histogram
        yield GaugeMetricFamily("codeswitch_in_flight_requests", "Requests in flight", value=0)
