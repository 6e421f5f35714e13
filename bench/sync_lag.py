"""Sync lag between two devices: from a request answered on device A to its session listed on
device B (what `codeswitch sessions list` on B asks its ledger), p50/p99.

    .venv/bin/python bench/sync_lag.py [--requests 100] [--interval 0.2] [--cli 5]

Starts a hub (`codeswitch hub`) and two gateways joined to it (`codeswitch up --join`, devices
A and B: three nats-server processes, each with its own data directory, as tests/sync does)
in front of a fake Anthropic upstream. Each round sends one request of a new session to A and
polls B's ledger (`cs.ledger.sessions`, the query behind `sessions list`) every 5 ms until the
session is there: the lag is from A's answer to B's listing, so it covers A's fact publish,
A's event log, the hub's source, B's source and B's ledger fold. ``--cli N`` also times N
rounds with the `codeswitch sessions list --json` command on B (a process start included).
Prints the machine's load average next to the numbers: quote them together.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nats.js.api import DeliverPolicy

from tests.fakes.upstream import FakeUpstream
from tests.sync.harness import CLI, Device, Hub


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def listed_on(b_url: str, session: str, timeout: float) -> tuple[float, float]:
    """When B's event log had A's fact of the session (a subscription on B's CS_EVENTS), and
    when B's ledger listed it."""
    from codeswitch.cli_ledger import _connect, _request
    from runtime.names import EVENTS_STREAM

    nc = await _connect(b_url)
    in_log: list[float] = []

    async def on_fact(msg: object) -> None:
        if session.encode() in msg.data and not in_log:  # type: ignore[attr-defined]
            in_log.append(time.perf_counter())

    sub = await nc.jetstream().subscribe("dev.*.llm.response.>", stream=EVENTS_STREAM,
                                         cb=on_fact, ordered_consumer=True,
                                         deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
    try:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            found = await _request(nc, "sessions", {"limit": 20}, 5)
            if any(s["session"] == session for s in found):
                seen = time.perf_counter()
                for _ in range(200):
                    if in_log:
                        break
                    await asyncio.sleep(0.005)
                return (in_log[0] if in_log else float("nan")), seen
            await asyncio.sleep(0.005)
        raise TimeoutError(f"session {session} not on B within {timeout} s")
    finally:
        await sub.unsubscribe()
        await nc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between rounds")
    ap.add_argument("--cli", type=int, default=5, help="rounds timed with the CLI on B")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cs-sync-lag-"))
    fake = FakeUpstream("anthropic").start()
    hub = Hub(tmp / "hub").start()
    a = Device("A", tmp / "A", hub.join_url, {"SYNC_FAKE_KEY": "sk-a"})
    b = Device("B", tmp / "B", hub.join_url, {"SYNC_FAKE_KEY": "sk-b"})
    try:
        a.start()
        b.start()
        a.cli("provider", "add", "fake", "--dialect", "anthropic", "--base-url",
              fake.base_url, "--api-key", "env:SYNC_FAKE_KEY")
        time.sleep(1.0)
        for _ in range(3):  # warm up both sides
            a.send("warm-" + uuid.uuid4().hex)
        lags: list[float] = []
        log_lags: list[float] = []
        load0 = os.getloadavg()
        for _ in range(args.requests):
            session = "lag-" + uuid.uuid4().hex
            r = a.send(session)
            answered = time.perf_counter()
            assert r.status_code == 200, r.text
            in_log, seen = asyncio.run(listed_on(b.nats_url, session, 30))
            lags.append((seen - answered) * 1000)
            if in_log == in_log:  # not NaN
                log_lags.append((in_log - answered) * 1000)
            time.sleep(args.interval)
        load1 = os.getloadavg()
        cli: list[float] = []
        for _ in range(args.cli):
            session = "lag-cli-" + uuid.uuid4().hex
            assert a.send(session).status_code == 200
            answered = time.perf_counter()
            while True:
                out = subprocess.run([*CLI, "sessions", "list", "--json", "--home",
                                      str(b.home)], capture_output=True, text=True,
                                     env=b.env).stdout
                if session in out:
                    break
            cli.append((time.perf_counter() - answered) * 1000)
        print(f"sync lag A answer -> B's ledger lists the session, {len(lags)} rounds: "
              f"p50 {pct(lags, 50):.0f} ms, p99 {pct(lags, 99):.0f} ms, max {max(lags):.0f} "
              f"ms, mean {statistics.mean(lags):.0f} ms")
        if log_lags:
            print(f"of which A's answer -> the fact in B's event log, {len(log_lags)} rounds: "
                  f"p50 {pct(log_lags, 50):.0f} ms, p99 {pct(log_lags, 99):.0f} ms")
        if cli:
            print(f"with `codeswitch sessions list` on B (process start included), "
                  f"{len(cli)} rounds: p50 {pct(cli, 50):.0f} ms, max {max(cli):.0f} ms")
        print(f"load average before {load0[0]:.1f}, after {load1[0]:.1f} "
              f"({os.cpu_count()} cores)")
    finally:
        for part in (a, b, hub):
            part.stop()
        fake.stop()


if __name__ == "__main__":
    main()
