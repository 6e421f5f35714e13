"""How many requests past an RPM limit two edges admit when they are hit at the same instant
(edge/ratelimit_bus.py counts across edges with core-NATS notes, no lock).

    .venv/bin/python bench/ratelimit_crossing.py               # 20 rounds of each shape
    .venv/bin/python bench/ratelimit_crossing.py --rounds 50 --burst 32

Real nats-server, one router, two edges (the test harness of tests/e2e), the fake Anthropic
upstream. Each round uses a new key with ``rpm`` = ``--rpm``:

- crossing: the window is filled to one short of the limit (requests alternating between the
  edges, each seen by both), then one request on each edge at the same instant: the extra
  admitted is 0 or 1 (the issue's bound: one per additional edge);
- burst: ``--burst`` requests on each edge at the same instant on an empty window: how many
  past the limit pass before the notes cross.

Prints the extras per round and their distribution.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codeswitch import users as u
from codeswitch.audit import AdminLog
from runtime.natsd import EmbeddedNats
from schemas.users import Limits
from tests.e2e.conftest import provider_for
from tests.e2e.gateway import EdgeThread, Gateway, run_nats
from tests.fakes.upstream import FakeUpstream

BODY = {"model": "claude-sonnet-4-5", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--rpm", type=int, default=5)
    ap.add_argument("--burst", type=int, default=8, help="requests per edge in a burst")
    args = ap.parse_args(argv)

    nats = EmbeddedNats(Path(tempfile.mkdtemp(prefix="cs-rl-")) / "nats")
    nats.start()
    fake = FakeUpstream("anthropic").start()
    gw = Gateway(nats.url)
    second = EdgeThread(nats.url)
    edges = [gw.edge, second]
    try:
        gw.add_provider(provider_for(fake))
        run_nats(nats.url, lambda nc: u.add_user(nc, AdminLog(nc), "bench"))
        clients = [httpx.Client(base_url=e.url, timeout=30,
                                limits=httpx.Limits(max_connections=256)) for e in edges]

        def new_key(name: str) -> tuple[str, str]:
            key, secret = run_nats(nats.url, lambda nc: u.create_key(
                nc, AdminLog(nc), "bench", name=name, limits=Limits(rpm=args.rpm)))
            deadline = time.monotonic() + 5
            while not all(key.id in e.app.directory.keys for e in edges):
                assert time.monotonic() < deadline
                time.sleep(0.002)
            return key.id, secret

        def post(i: int, secret: str) -> int:
            return clients[i].post("/v1/messages", json=BODY, headers={
                "x-api-key": secret, "anthropic-version": "2023-06-01"}).status_code

        def counted(kid: str, n: int) -> None:
            deadline = time.monotonic() + 5
            while not all(e.app.ratelimits.core.rates.requests_in(f"k:{kid}", time.time())
                          >= n for e in edges):
                assert time.monotonic() < deadline
                time.sleep(0.002)

        crossing: list[int] = []
        burst: list[int] = []
        with concurrent.futures.ThreadPoolExecutor(2 * args.burst) as pool:
            for r in range(args.rounds):
                kid, secret = new_key(f"c{r}-{os.getpid()}")
                for i in range(args.rpm - 1):
                    assert post(i % 2, secret) == 200
                counted(kid, args.rpm - 1)
                got = list(pool.map(lambda i, s=secret: post(i, s), [0, 1]))
                crossing.append(got.count(200) - 1)
                kid, secret = new_key(f"b{r}-{os.getpid()}")
                got = list(pool.map(lambda i, s=secret: post(i % 2, s),
                                    range(2 * args.burst)))
                burst.append(got.count(200) - args.rpm)
        for c in clients:
            c.close()
    finally:
        second.stop()
        gw.stop()
        fake.stop()
        nats.stop()
    load = os.getloadavg()[0]
    print(f"2 edges, rpm {args.rpm}, {args.rounds} rounds, load {load:.1f}")
    print(f"crossing (1 request per edge at once, window one short): extras {crossing}")
    print(f"  distribution {dict(sorted(collections.Counter(crossing).items()))}, "
          f"max {max(crossing)}")
    print(f"burst ({args.burst} per edge at once, empty window): extras {burst}")
    print(f"  distribution {dict(sorted(collections.Counter(burst).items()))}, "
          f"max {max(burst)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
