"""What replicas cost: JetStream publish latency (acked) on a real three-node loopback cluster
for the two streams' shapes — the work queue (memory, work-queue retention) and the event log
(file) — with 1 and with 3 replicas, one publisher at a time and 16 at once.

    .venv/bin/python bench/replicas.py [--n 3000]

Prints p50/p99 per case. Loopback: no network latency, so this shows the replication protocol's
own cost (and the CPU of three servers on one machine); on a LAN add ~2 round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import nats  # noqa: E402
from nats.js import api  # noqa: E402

from tests.cluster.cluster import NatsCluster  # noqa: E402


def _config(name: str, replicas: int, memory: bool) -> api.StreamConfig:
    return api.StreamConfig(
        name=name, subjects=[f"bench.{name}.>"], num_replicas=replicas,
        storage=api.StorageType.MEMORY if memory else api.StorageType.FILE,
        retention=api.RetentionPolicy.WORK_QUEUE if memory else api.RetentionPolicy.LIMITS,
        duplicate_window=120.0)


async def _case(js: object, name: str, n: int, concurrency: int, body: bytes,
                tag: str) -> list[float]:
    lat: list[float] = []
    count = 0

    async def worker() -> None:
        nonlocal count
        while count < n:
            count += 1
            i = count
            t = time.perf_counter()
            await js.publish(f"bench.{name}.x", body,  # type: ignore[attr-defined]
                             headers={"Nats-Msg-Id": f"{name}-{tag}-{i}"})
            lat.append((time.perf_counter() - t) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NatsCluster(Path(tmp), 3).start(wait=False)
        try:
            await cluster.wait_jetstream()
            await _run(cluster, n)
        finally:
            cluster.stop()


async def _run(cluster: NatsCluster, n: int) -> None:
    nc = await nats.connect(cluster.urls.split(","))
    js = nc.jetstream()
    body = b"x" * 1500  # a typical request envelope + small body
    print(f"{'stream':<28}{'replicas':>9}{'publishers':>11}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'msg/s':>9}")
    for memory, label in ((True, "work queue (memory)"), (False, "event log (file)")):
        for replicas in (1, 3):
            name = f"{'WQ' if memory else 'EV'}{replicas}"
            await js.add_stream(_config(name, replicas, memory))
            await _case(js, name, 200, 1, body, "warm")
            for conc in (1, 16):
                t0 = time.perf_counter()
                lat = await _case(js, name, n, conc, body, f"c{conc}")
                rate = n / (time.perf_counter() - t0)
                q = statistics.quantiles(lat, n=100)
                print(f"{label:<28}{replicas:>9}{conc:>11}{q[49]:>9.2f}{q[98]:>9.2f}"
                      f"{rate:>9.0f}")
    await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000)
    asyncio.run(main(parser.parse_args().n))
