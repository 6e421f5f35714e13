"""Ledger benchmarks (not a test): projection throughput, replay of 1M events from JetStream,
and query latency over 1M requests.

    .venv/bin/python bench/bench_ledger.py                 # everything, ~3-6 minutes
    .venv/bin/python bench/bench_ledger.py --only queries  # projection | replay | queries

Targets (issue 5): projection >= 50,000 events/s; replay of 1,000,000 events <= 60 s; overview
and hourly series <= 100 ms p50 over 1,000,000 requests. Numbers depend on the machine; note
its core count and load next to any result you quote.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import bus
from runtime.natsd import EmbeddedNats
from schemas.events import encode_event
from schemas.prices import PriceBook
from tests.ledger.eventgen import generate, subject_of
from workers.ledger import queries
from workers.ledger.projection import Rows, project
from workers.ledger.replay import fold, read_stream
from workers.ledger.store import Store


def _encoded(requests: int, seed: int = 1) -> list[tuple[str, bytes]]:
    return [(subject_of(e), encode_event(e)) for e in generate(requests, seed=seed)]


def _fill(store: Store, events: list[tuple[str, bytes]], batch: int, book: PriceBook,
          start_seq: int = 1) -> None:
    for k in range(0, len(events), batch):
        rows = Rows()
        for i, (subject, data) in enumerate(events[k:k + batch], start=start_seq + k):
            rows.add(project(i, subject, data, book))
        store.apply(rows)


def bench_projection(tmp: Path, requests: int) -> None:
    events = _encoded(requests)
    book = PriceBook()
    t = time.perf_counter()
    for i, (subject, data) in enumerate(events, start=1):
        project(i, subject, data, book)
    pure = len(events) / (time.perf_counter() - t)
    print(f"projection (decode + rows, pure):      {pure:>10,.0f} events/s  ({len(events):,})")
    for batch in (1000, 5000):
        path = tmp / f"proj-{batch}.duckdb"
        with Store(path) as store:
            t = time.perf_counter()
            _fill(store, events, batch, book)
            rate = len(events) / (time.perf_counter() - t)
        print(f"projection + DuckDB apply, batch {batch:>5}: {rate:>10,.0f} events/s  "
              "(sequential)")
    for batch in (1000, 5000):
        rate = asyncio.run(_pipelined(tmp / f"pipe-{batch}.duckdb", events, batch, book))
        print(f"projection + DuckDB apply, batch {batch:>5}: {rate:>10,.0f} events/s  "
              "(pipelined, as the service folds)")


async def _pipelined(path: Path, events: list[tuple[str, bytes]], batch: int,
                     book: PriceBook) -> float:
    async def batches() -> AsyncIterator[list[tuple[int, str, bytes]]]:
        for k in range(0, len(events), batch):
            yield [(k + i + 1, s, d) for i, (s, d) in enumerate(events[k:k + batch])]

    executor = ThreadPoolExecutor(1)
    store = Store(path)
    t = time.perf_counter()
    done = await fold(batches(), store, lambda: book, executor)
    rate = done / (time.perf_counter() - t)
    executor.submit(store.close).result()
    executor.shutdown()
    return rate


async def _publish(nc: object, events: list[tuple[str, bytes]]) -> None:
    js = nc.jetstream()  # type: ignore[attr-defined]
    for n, (subject, data) in enumerate(events):
        await js.publish_async(subject, data, headers={"Nats-Msg-Id": f"bench-{n}"})
        if n % 20_000 == 0:
            await js.publish_async_completed()
    await js.publish_async_completed()


async def bench_replay(tmp: Path, events_n: int) -> None:
    server = EmbeddedNats(tmp / "nats", log_file=tmp / "nats.log")
    server.start()
    try:
        nc = await bus.connect(server.url, name="bench")
        await bus.wait_ready(nc)
        await bus.ensure_all(nc.jetstream())
        events = _encoded(events_n // 2 + 1)[:events_n]
        t = time.perf_counter()
        await _publish(nc, events)
        print(f"published {len(events):,} events in {time.perf_counter() - t:.1f} s (setup)")
        del events
        book = PriceBook()
        executor = ThreadPoolExecutor(1)
        store = Store(tmp / "replay.duckdb")
        t = time.perf_counter()
        done = await fold(read_stream(nc, until_seq=events_n), store, lambda: book, executor)
        elapsed = time.perf_counter() - t
        executor.submit(store.close).result()
        print(f"replay {done:,} events from JetStream into a fresh file: {elapsed:.1f} s "
              f"({done / elapsed:,.0f} events/s)")
        await nc.close()
    finally:
        server.stop()


def bench_queries(tmp: Path, requests: int, runs: int) -> None:
    path = tmp / "queries.duckdb"
    book = PriceBook()
    t = time.perf_counter()
    with Store(path) as store:
        chunk = 100_000
        seq = 1
        for part in range(0, requests, chunk):
            events = _encoded(min(chunk, requests - part), seed=100 + part // chunk)
            _fill(store, events, 5000, book, start_seq=seq)
            seq += len(events)
        n = store.con.execute("SELECT count(*) FROM requests").fetchone()[0]  # type: ignore[index]
    print(f"built {n:,} requests ({seq - 1:,} events) in {time.perf_counter() - t:.0f} s")
    with Store(path, read_only=True) as store:
        con = store.con
        f = queries.Filter()
        last = con.execute("SELECT max(ts) FROM requests").fetchone()[0]  # type: ignore[index]
        week = queries.Filter(since=last - 7 * 86400)
        cases = {
            "overview (all)": lambda: queries.overview(con, f),
            "hourly series (all)": lambda: queries.series(con, f, "hour"),
            "overview (last 7 days)": lambda: queries.overview(con, week),
            "hourly series (last 7 days)": lambda: queries.series(con, week, "hour"),
            "daily series": lambda: queries.series(con, f, "day"),
            "breakdown by model": lambda: queries.breakdown(con, f, "model"),
            "breakdown by session": lambda: queries.breakdown(con, f, "session"),
            "request log (50, provider filter)": lambda: queries.request_log(
                con, queries.Filter(provider="openai"), 50),
            "heatmap": lambda: queries.heatmap(con, f),
        }
        for name, fn in cases.items():
            fn()  # warm
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1000)
            print(f"{name:<36} p50 {statistics.median(times):7.1f} ms   "
                  f"max {max(times):7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["projection", "replay", "queries"])
    parser.add_argument("--projection-requests", type=int, default=100_000)
    parser.add_argument("--replay-events", type=int, default=1_000_000)
    parser.add_argument("--query-requests", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}  load: {os.getloadavg()[0]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    try:
        if args.only in (None, "projection"):
            bench_projection(tmp, args.projection_requests)
        if args.only in (None, "replay"):
            asyncio.run(bench_replay(tmp, args.replay_events))
        if args.only in (None, "queries"):
            bench_queries(tmp, args.query_requests, args.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
