"""Bounded memory of the pure alerts engine: what it keeps per request is bounded by its
windows' spans and the history's span and count, packed, and given back when traffic stops.

The leak this guards against: the engine's history (the samples a rule added later is seeded
from) held each request as a ``Sample`` tuple with its own decoded strings, floats and ints,
~470 bytes, for an hour: 100,000 requests grew the alerts worker by ~45 MB."""

from __future__ import annotations

import gc
import math
import random
import tracemalloc
from collections import deque
from collections.abc import Iterator

from schemas.events import RequestCompleted, Usage, decode_event, encode_event
from workers.alerts._windows import (
    CountWindow,
    History,
    QuantileWindow,
    Sample,
    SumWindow,
    Window,
)
from workers.alerts.rules import Engine, Rule

T0 = 1735689600.0
RATE = 200.0  # requests per second of event time
MODELS = ["claude-sonnet-4-5", "gpt-4o", "gpt-5", "gemini-2.5-pro"]


def events(start: int, n: int) -> Iterator[RequestCompleted]:
    """Requests as the worker gets them: decoded from bytes (fresh strings, floats and ints for
    every event), unique ids, 50 users."""
    for i in range(start, start + n):
        model = MODELS[i % 4]
        ev = RequestCompleted(
            id=f"ev{i:012d}", ts=T0 + i / RATE, request_id=f"req{i:016x}", dialect="anthropic",
            model=model, upstream_model=model, provider=f"p{i % 3}", status=500 if i % 17 else 200,
            duration_ms=10.0 + i % 997, ttfb_ms=None if i % 11 == 0 else 5.0 + i % 13,
            user=f"user{i % 50}", usage=Usage(input_tokens=100 + i % 50, output_tokens=i % 30))
        yield decode_event(encode_event(ev))  # type: ignore[misc]


def rules() -> list[Rule]:
    return [
        Rule(name="errors", metric="error_rate", threshold=99.0, window_s=60.0),
        Rule(name="slow", metric="latency_p95", threshold=900.0, window_s=60.0),
        Rule(name="first-byte", metric="ttfb_p95", threshold=100.0, window_s=30.0,
             scope="provider:p1"),
        Rule(name="spend", metric="cost", threshold=1e6, window_s=120.0, scope="model:gpt-*"),
        Rule(name="quiet", metric="no_traffic", minutes=1.0),
    ]


def retained(e: Engine) -> dict[str, int]:
    """Entries the engine holds: history samples, and per window the live and allocated ones."""
    out = {"history": len(e._history)}
    for scope_name, scope in e._scopes.items():
        for (kind, span), w in scope.windows.items():
            out[f"{scope_name}/{kind}/{span:g}"] = w.n
            out[f"{scope_name}/{kind}/{span:g} columns"] = len(w.times)
    return out


def feed(e: Engine, start: int, n: int) -> None:
    for i, ev in enumerate(events(start, n)):
        e.observe(ev)
        if i % 200 == 0:
            e.tick(ev.ts)


def test_200k_requests_keep_a_bounded_packed_state() -> None:
    history_max = 50_000
    half = 100_000
    e = Engine(history_s=3600.0, history_max=history_max, new_epoch=lambda: "e0")
    e.set_rules(rules(), T0)
    feed(e, 0, half)
    first = retained(e)
    feed(e, half, half)
    second = retained(e)

    # the history is capped by count (50,000 < an hour at 200/s); each window by rate x span
    assert first["history"] == second["history"] == history_max
    for key, n in second.items():
        if key.endswith("columns"):
            live = second[key.removesuffix(" columns")]
            assert n <= max(2 * live, 1024 + live), (key, n, live)  # evicted prefix compacted
        elif key != "history":
            span = float(key.rsplit("/", 1)[1])
            assert n <= RATE * span, (key, n)
    # after a long rest the tick empties and shrinks everything
    e.tick(T0 + 2 * half / RATE + 3601.0)
    rested = retained(e)
    assert rested["history"] == 0
    assert all(n == 0 for n in rested.values()), rested


def test_steady_traffic_allocates_nothing_that_stays() -> None:
    """Once the history is full, more requests replace chunks: traced memory stays flat (it
    grew by ~470 bytes a request with the tuple history)."""
    gc.collect()
    tracemalloc.start()  # from the start: what the first part allocated is freed in the second
    try:
        e = Engine(history_s=3600.0, history_max=8_192, new_epoch=lambda: "e0")
        e.set_rules(rules(), T0)
        feed(e, 0, 15_000)  # windows (60 s at 200/s: 12,000) and history full
        gc.collect()
        mid = tracemalloc.get_traced_memory()[0]
        feed(e, 15_000, 15_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - mid
    finally:
        tracemalloc.stop()
    assert grown < 256 * 1024, grown  # 15,000 requests: a chunk and compaction slack


def test_history_packs_about_45_bytes_per_sample() -> None:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        h = History(3600.0, 1_000_000)
        for ev in events(0, 20_000):
            s = Sample(ev.ts, ev.provider or "", ev.model, ev.user or "", ev.dialect,
                       ev.status >= 500, ev.duration_ms, ev.ttfb_ms, 123456, 789)
            h.add(s, ev.ts)
        gc.collect()
        per_sample = (tracemalloc.get_traced_memory()[0] - before) / len(h)
    finally:
        tracemalloc.stop()
    assert len(h) == 20_000
    assert per_sample < 60, per_sample


def _sample(rnd: random.Random, ts: float) -> Sample:
    return Sample(ts, rnd.choice("ab"), rnd.choice(["m1", "m2"]), rnd.choice(["", "u"]),
                  "openai-chat", rnd.random() < 0.3, rnd.uniform(1, 500),
                  None if rnd.random() < 0.2 else rnd.uniform(1, 50), rnd.randrange(10**12),
                  rnd.randrange(10**6))


def test_history_gives_back_what_a_deque_would() -> None:
    """Same samples, same order, same eviction (by time, and the oldest beyond the count) as
    the ``deque(maxlen=...)`` it replaced, across chunk boundaries and out-of-order stamps."""
    rnd = random.Random(7)
    span, cap = 50.0, 6000
    h = History(span, cap)
    oracle: deque[Sample] = deque(maxlen=cap)
    ts = T0
    for step in range(30_000):
        ts += rnd.expovariate(200.0) if step % 5000 < 4000 else rnd.expovariate(2.0)
        s = _sample(rnd, ts - rnd.uniform(0, 0.05))  # roughly in order, as the log delivers
        now = max(ts, s.ts)
        h.add(s, now)
        oracle.append(s)
        while oracle[0].ts <= now - span:
            oracle.popleft()
        if step % 997 == 0:
            assert list(h) == list(oracle)
            latest = h.latest(lambda x: x.provider == "a")
            want = next((x for x in reversed(oracle) if x.provider == "a"), None)
            assert latest == want
    assert len(h) == len(oracle)
    assert list(h) == list(oracle)
    h.evict(ts + span)
    assert len(h) == 0 and list(h) == [] and not h.chunks


def test_windows_give_back_their_columns_when_empty() -> None:
    rnd = random.Random(3)
    c, s_, q = CountWindow(10.0), SumWindow(10.0, "tokens"), QuantileWindow(10.0, "duration_ms")
    windows: list[Window] = [c, s_, q]
    q.watch(250.0)
    ts = T0
    for _ in range(20_000):
        ts += 0.001
        s = _sample(rnd, ts)
        for w in windows:
            w.add(s, ts)
    assert all(w.n == len(w.times) - w.head and 9_999 <= w.n <= 10_001 for w in windows)
    for w in windows:
        w.evict(ts + 10.0)
    assert all(w.n == 0 and len(w.times) == 0 and len(w.values) == 0 for w in windows)
    assert q.counts[250.0] == [0, 0] and q.percentile(95) == 0.0
    assert c.errors == 0 and c.error_rate() == 0.0
    assert s_.total == 0 and not math.isnan(q.percentile(50))
