"""The edge's /metrics: counted without prometheus_client on the request path, rendered by it
at a scrape exactly as its Counter/Histogram/Gauge objects did (the output users scrape does
not change), and the request path does not import it."""

from __future__ import annotations

import re
import subprocess
import sys

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from edge.metrics import _BUCKETS, EdgeMetrics

OBSERVED = [("anthropic", "main", 200, 0.004, 0.001), ("anthropic", "main", 200, 0.005, None),
            ("openai", None, 502, 2.5, 0.3), ("anthropic", "main", 429, 400.0, 0.02),
            ("gemini", "g", 200, 0.1, 0.1), ("anthropic", "main", 200, 31.0, 7.0)]


def _library_output() -> bytes:
    """What edge/metrics.py rendered before: prometheus_client's own objects."""
    reg = CollectorRegistry()
    labels = ("dialect", "provider")
    requests = Counter("codeswitch_requests", "Requests answered", (*labels, "status"),
                       registry=reg)
    errors = Counter("codeswitch_errors", "Requests answered with an error",
                     (*labels, "status"), registry=reg)
    latency = Histogram("codeswitch_request_duration_seconds",
                        "Time from request received to last byte sent", labels,
                        buckets=_BUCKETS, registry=reg)
    ttfb = Histogram("codeswitch_time_to_first_byte_seconds",
                     "Time from request received to first body byte sent", labels,
                     buckets=_BUCKETS, registry=reg)
    Gauge("codeswitch_in_flight_requests", "Requests in flight", registry=reg)
    for dialect, provider, status, lat, first in OBSERVED:
        p = provider or "-"
        requests.labels(dialect, p, str(status)).inc()
        if status >= 400:
            errors.labels(dialect, p, str(status)).inc()
        latency.labels(dialect, p).observe(lat)
        if first is not None:
            ttfb.labels(dialect, p).observe(first)
    return bytes(generate_latest(reg))


def _without_created_values(text: bytes) -> str:
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", text.decode())


def test_rendered_as_prometheus_client_objects_did() -> None:
    m = EdgeMetrics()
    assert m.render().decode().count("\n") == 5 * 2 + 1  # nothing counted yet: help, type
    for dialect, provider, status, lat, first in OBSERVED:
        m.observe(dialect, provider, status, lat, first)
    mine = m.render()
    assert _without_created_values(mine) == _without_created_values(_library_output())
    assert 'codeswitch_request_duration_seconds_bucket{dialect="anthropic",le="+Inf",' \
           'provider="main"} 4.0' in mine.decode()
    m.observe("openai", None, 200, 0.2, None)  # a second scrape sees the new counts
    assert 'codeswitch_requests_total{dialect="openai",provider="-",status="200"} 1.0' \
        in m.render().decode()


def test_the_request_path_does_not_import_prometheus_client() -> None:
    code = ("import sys, edge.metrics as m; e = m.EdgeMetrics(); "
            "e.observe('anthropic', 'p', 200, 0.1, 0.05); "
            "assert 'prometheus_client' not in sys.modules, 'imported'; e.render(); "
            "assert 'prometheus_client' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
