"""Throughput of alert evaluation with 50 rules (not a test).

    .venv/bin/python bench/bench_alerts.py                 # the pure engine
    .venv/bin/python bench/bench_alerts.py --nats          # + the worker end to end over NATS

Engine: events are built up front, then timed through ``Engine.observe`` (every event) plus
``Engine.tick`` once per second of event time, with 50 rules: the 10 metrics x 5 scopes (all,
two providers, a model glob, a user) over 1-10 minute windows. Traffic is 200 requests per
second of event time, so a 5-minute window holds ~60,000 samples.

--nats: an embedded nats-server; the worker is started once (creating its durable consumers),
stopped, the events are published while it is down, and the worker is started again and timed
until its consumer's ack floor reaches the last event: fetch + decode + evaluate + ack.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

import msgspec

from runtime import bus, names
from runtime.natsd import EmbeddedNats
from schemas.events import RequestCompleted, Usage, encode_event
from schemas.subjects import response_subject
from workers.alerts import service
from workers.alerts.rules import Engine, Rule

SCOPES = ["all", "provider:main", "provider:backup", "model:claude-*", "user:alice"]
THRESHOLDS = {
    "error_rate": (">", 5.0), "request_rate": ("<", 60.0), "latency_p50": (">", 8000.0),
    "latency_p95": (">", 20000.0), "latency_p99": (">", 30000.0), "ttfb_p95": (">", 2500.0),
    "cost": (">", 50.0), "tokens": (">", 5e7), "circuit_open": (">", 0.0),
    "no_traffic": (">", 0.0),
}


def rules() -> list[Rule]:
    out = []
    # the 10 request/circuit metrics x 5 scopes, as measured since the start; quota_used_pct is
    # moved only by QuotaUsed facts (rare, one per user and quota update), not by requests
    for i, (metric, scope) in enumerate((m, s) for m in THRESHOLDS for s in SCOPES):
        comparison, threshold = THRESHOLDS[metric]
        out.append(Rule(name=f"r{i:02d}", metric=metric, scope=scope, comparison=comparison,
                        threshold=threshold, window_s=(60.0, 300.0, 600.0)[i % 3],
                        minutes=5.0, min_samples=20, cooldown_s=600.0))
    assert len(out) == 50
    return out


def events(n: int, rate: float, start: float, seed: int = 1) -> list[RequestCompleted]:
    rnd = random.Random(seed)
    models = [("claude-sonnet-4-5", "main"), ("claude-opus-4-1", "main"),
              ("gpt-4o-mini", "backup"), ("gemini-2.5-flash", "aux")]
    out = []
    for i in range(n):
        model, provider = rnd.choices(models, weights=[6, 1, 3, 2])[0]
        error = rnd.random() < 0.03
        ttfb = rnd.lognormvariate(6.5, 0.5)
        out.append(RequestCompleted(
            id=f"b{i:08d}", ts=start + i / rate, request_id=f"q{i:08d}",
            dialect=rnd.choice(["anthropic", "openai_chat", "gemini"]), model=model,
            provider=provider, upstream_model=model, stream=True,
            status=502 if error else 200, error_class="http_5xx" if error else None,
            ttfb_ms=None if error else ttfb, duration_ms=ttfb + rnd.lognormvariate(8.3, 0.8),
            usage=None if error else Usage(input_tokens=rnd.randint(500, 30000),
                                           output_tokens=rnd.randint(20, 3000)),
            user=rnd.choice(["alice", "bob", "ci", "dave"]),
        ))
    return out


def bench_engine(n: int, rate: float) -> float:
    evs = events(n, rate, start=1_735_689_600.0)
    engine = Engine()
    engine.set_rules(rules(), now=evs[0].ts)
    transitions = 0
    next_tick = evs[0].ts + 1.0
    started = time.perf_counter()
    for ev in evs:
        if ev.ts >= next_tick:
            transitions += len(engine.tick(next_tick))
            next_tick += 1.0
        transitions += len(engine.observe(ev))
    elapsed = time.perf_counter() - started
    print(f"engine: {n} events, 50 rules, {transitions} transitions in {elapsed:.2f}s "
          f"= {n / elapsed:,.0f} events/s")
    return n / elapsed


async def bench_worker(n: int, rate: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        server.start()
        try:
            nc = await bus.connect(server.url, name="bench")
            await bus.wait_ready(nc)
            js = nc.jetstream()
            await bus.ensure_all(js)
            kv = await js.key_value(names.RULES_BUCKET)
            for rule in rules():
                await kv.put(rule.name, msgspec.json.encode(rule))
            stop = asyncio.Event()
            first = asyncio.create_task(service.run(server.url, Path(tmp), stop))
            while True:  # consumers created
                try:
                    await js.consumer_info(names.EVENTS_STREAM, names.ALERTS_EVAL_DURABLE)
                    break
                except Exception:
                    await asyncio.sleep(0.05)
            stop.set()
            await first
            evs = events(n, rate, start=time.time() - n / rate)
            for ev in evs:  # core publish: the stream captures it; no per-message ack wait
                await nc.publish(response_subject(ev.dialect, ev.provider), encode_event(ev))
            await nc.flush()
            last = 0
            while last < n:
                last = (await js.stream_info(names.EVENTS_STREAM)).state.last_seq
                await asyncio.sleep(0.05)
            stop = asyncio.Event()
            started = time.perf_counter()
            worker = asyncio.create_task(service.run(server.url, Path(tmp), stop))
            while True:
                info = await js.consumer_info(names.EVENTS_STREAM, names.ALERTS_EVAL_DURABLE)
                if info.ack_floor and info.ack_floor.stream_seq >= last:
                    break
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - started
            stop.set()
            await worker
            await nc.close()
        finally:
            server.stop()
    print(f"worker over NATS: {n} events, 50 rules in {elapsed:.2f}s (incl. startup) "
          f"= {n / elapsed:,.0f} events/s")
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000, help="events")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s of event time")
    parser.add_argument("--nats", action="store_true", help="also the worker over NATS")
    args = parser.parse_args()
    bench_engine(args.n, args.rate)
    if args.nats:
        asyncio.run(bench_worker(args.n, args.rate))


if __name__ == "__main__":
    main()
