"""Deterministic synthetic event log for the ledger tests and bench: realistic request traffic
over the three dialects (fallbacks, errors, cache and reasoning usage, users and sessions),
plus circuit and alert facts."""

from __future__ import annotations

import random
from collections.abc import Iterator

from schemas.events import (
    AlertFired,
    AlertResolved,
    AttemptFinished,
    CircuitChanged,
    Event,
    RequestCompleted,
    Usage,
)
from schemas.subjects import attempt_subject, response_subject

__all__ = ["generate", "subject_of"]

_MODELS = [
    ("anthropic", "anthropic-main", "claude-sonnet-4-5-20250929"),
    ("anthropic", "anthropic-main", "claude-haiku-4-5-20251001"),
    ("openai_responses", "openai", "gpt-5-codex"),
    ("openai_chat", "openai", "gpt-4.1-mini"),
    ("gemini", "gemini", "gemini-2.5-pro"),
    ("gemini", "gemini", "gemini-2.5-flash"),
    ("openai_chat", "local", "llama-3.3-70b"),  # unpriced
]
_USERS = ["alice", "bob", "carol", None]


def subject_of(event: Event) -> str:
    match event:
        case AttemptFinished():
            return attempt_subject(event.dialect, event.provider)
        case RequestCompleted():
            return response_subject(event.dialect, event.provider)
        case CircuitChanged():
            return f"provider.circuit.{event.provider}.{event.state}"
        case AlertFired():
            return f"alert.fired.{event.rule}"
        case AlertResolved():
            return f"alert.resolved.{event.rule}"
    return "admin.unknown"


def _usage(rng: random.Random, dialect: str) -> Usage:
    inp = rng.randint(50, 4000)
    out = rng.randint(10, 2000)
    reasoning = rng.randint(0, out) if rng.random() < 0.4 else 0
    if dialect == "anthropic":
        cr = rng.randint(0, 60_000) if rng.random() < 0.7 else 0
        cw = rng.randint(0, 5000) if rng.random() < 0.3 else 0
    else:
        cr, cw = (rng.randint(0, 30_000) if rng.random() < 0.5 else 0), 0
    return Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=cr,
                 cache_write_tokens=cw, reasoning_tokens=reasoning)


def generate(requests: int, *, seed: int = 7, start: float = 1_760_000_000.0,
             span_s: float = 30 * 86400.0) -> Iterator[Event]:
    """About 2.1 events per request, in time order."""
    rng = random.Random(seed)
    step = span_s / max(requests, 1)
    ts = start
    for n in range(requests):
        ts += rng.uniform(0.2, 1.8) * step
        dialect, provider, model = _MODELS[rng.randrange(len(_MODELS))]
        rid = f"r{seed:02d}{n:09d}"
        user = _USERS[n % len(_USERS)]
        session = f"s{n // 25:06d}" if user else None
        stream = rng.random() < 0.8
        attempts = 1
        if rng.random() < 0.05:  # a fallback attempt that failed before the first byte
            attempts = 2
            yield AttemptFinished(
                id=f"a{rid}1", ts=ts, request_id=rid, attempt=1, dialect=dialect,
                provider="backup", provider_dialect="openai_chat", model=model,
                upstream_model=model, stream=stream, outcome="fallback", status=529,
                error_class="http_5xx", error_message="overloaded", started_at=ts - 0.3,
                duration_ms=300.0,
            )
        failed = rng.random() < 0.03
        usage = None if failed else _usage(rng, dialect)
        ttfb = None if failed else rng.uniform(150, 2500)
        duration = rng.uniform(300, 30_000)
        done = ts + duration / 1000
        yield AttemptFinished(
            id=f"a{rid}{attempts}", ts=done, request_id=rid, attempt=attempts, dialect=dialect,
            provider=provider, provider_dialect=dialect, model=model, upstream_model=model,
            stream=stream, outcome="failed" if failed else "ok",
            status=500 if failed else 200, error_class="http_5xx" if failed else None,
            started_at=ts, ttfb_ms=ttfb, duration_ms=duration, usage=usage,
        )
        yield RequestCompleted(
            id=f"q{rid}", ts=done, request_id=rid, dialect=dialect, model=model,
            provider=provider, provider_dialect=dialect, upstream_model=model, stream=stream,
            status=500 if failed else 200, error_class="http_5xx" if failed else None,
            received_at=ts, ttfb_ms=ttfb, duration_ms=duration, usage=usage,
            attempts=attempts, finish_reason=None if failed else "end_turn", user=user,
            session=session, client="claude-code" if dialect == "anthropic" else "sdk",
            bytes_in=rng.randint(500, 200_000), bytes_out=rng.randint(100, 50_000),
        )
        if n % 5000 == 2500:
            yield CircuitChanged(id=f"c{rid}", ts=done, provider="backup", state="open",
                                 previous="closed", failures=5, reason="5 failures in 60s")
            yield AlertFired(id=f"f{rid}", ts=done, rule="error-rate", metric="error_rate",
                             value=0.12, threshold=0.1, comparison=">", window_s=300)
        if n % 5000 == 3000:
            yield CircuitChanged(id=f"h{rid}", ts=done, provider="backup", state="closed",
                                 previous="half_open")
            yield AlertResolved(id=f"v{rid}", ts=done, rule="error-rate", metric="error_rate",
                                value=0.01, fired_id=f"fr{seed:02d}{n - 500:09d}")
