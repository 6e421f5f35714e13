"""The cluster scenario of issue 15, shared by ``tests/cluster/test_cluster_e2e.py`` (one
round, in CI) and ``bench/cluster.py`` (many rounds): a three-node NATS cluster (real
nats-server processes, every stream with 3 replicas), 2 edges, 3 routers, 2 ledgers and 2
alerts workers as separate processes; under load through both edges, each round kill -9 the
NATS node leading the work queue, one router, one ledger and the active alerts worker, then
bring them back; at the end both ledgers' DuckDB files and the webhooks received."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime import bus, names
from tests.alerts.conftest import Receiver
from tests.chaos.harness import FAST_MIX, LANES, ChaosFakes, Load, Outcome, provider_key
from tests.cluster.cluster import NatsCluster
from tests.cluster.parts import Parts, part_env

__all__ = ["ClusterRun", "run_cluster"]

CLI = [sys.executable, "-m", "codeswitch"]
LANES4 = LANES[:4]  # one lane per dialect, each to its own provider


@dataclass
class ClusterRun:
    outcomes: list[Outcome]
    seen: Counter[str]  # how often the upstreams saw each client request id
    rows: dict[str, list[dict[str, Any]]]  # each ledger's request rows
    pending: dict[str, int]  # each ledger consumer's backlog at the end
    hooks: list[Any]  # webhook bodies received
    rounds: list[str] = field(default_factory=list)  # what each round killed and saw
    alerts_logs: str = ""  # both alerts workers' logs, to show when the webhooks are wrong

    @property
    def complete(self) -> int:
        return sum(o.complete for o in self.outcomes)


def _rows(home: Path) -> list[dict[str, Any]]:
    import duckdb

    from workers.ledger.service import db_path

    con = duckdb.connect(str(db_path(home)), read_only=True)
    try:
        cur = con.execute("SELECT * FROM requests ORDER BY request_id")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


async def _read_until(urls: str, read: Any, what: str, timeout: float = 20.0) -> Any:
    """``await read(js)`` until it gives a value: an election in progress (the previous
    round's may still be settling) or a catching-up replica (direct get) answers with an
    error or nothing for a moment."""
    nc = await bus.connect(urls, name="test", once=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await read(nc.jetstream())
                if value:
                    return value
            except Exception:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s")
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def _leader(urls: str, stream: str) -> str:
    async def read(js: Any) -> str | None:
        info = await js.stream_info(stream)
        return info.cluster.leader if info.cluster is not None else None

    return str(await _read_until(urls, read, f"leader of {stream}"))


async def _active_alerts(urls: str, parts: Parts) -> str:
    """The alerts worker holding the lease (its pid is in the lease's value)."""
    import json

    from workers.alerts.service import LEASE_KEY

    async def read(js: Any) -> str:
        kv = await js.key_value(names.ALERT_STATE_BUCKET)
        return str(json.loads((await kv.get(LEASE_KEY)).value or b"{}")["holder"])

    holder = await _read_until(urls, read, "alerts lease holder")
    pid = int(holder.rpartition(":")[2])
    return next(n for n, p in parts.procs.items() if p.pid == pid and n.startswith("alerts"))


async def _caught_up(urls: str, timeout: float = 60.0) -> dict[str, int]:
    """Until every ledger consumer has nothing pending and the stream stopped growing."""
    nc = await bus.connect(urls, name="test", connect_timeout=2)
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    last, since, pending = -1, time.monotonic(), {}
    try:
        while time.monotonic() < deadline:
            try:
                seq = (await js.stream_info(names.EVENTS_STREAM)).state.last_seq
                pending = {c.name: (c.num_pending or 0) + (c.num_ack_pending or 0)
                           for c in await js.consumers_info(names.EVENTS_STREAM)
                           if names.is_ledger_durable(c.name)}
                if seq != last:
                    last, since = seq, time.monotonic()
                elif len(pending) == 2 and not any(pending.values()) \
                        and time.monotonic() - since > 1.5:
                    return pending
            except Exception:
                pass
            await asyncio.sleep(0.25)
        raise AssertionError(f"ledgers did not catch up: {pending}")
    finally:
        await nc.close()


def run_cluster(tmp_path: Path, hooks: Receiver, *, rounds: int = 1, after: int = 80,
                concurrency: int = 4) -> ClusterRun:
    """Run the scenario; ``after``: complete answers to wait for after each round."""
    with ChaosFakes() as fakes, NatsCluster(tmp_path / "nats", 3) as cluster:
        urls = cluster.urls
        env = part_env({f"CHAOS_KEY_{d.upper().replace('-', '_')}": provider_key(d)
                        for d in fakes.fakes})
        r = subprocess.run([*CLI, "nats", "init", "--replicas", "3", "--nats-url", urls,
                            "--home", str(tmp_path / "cli")],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        for lane in LANES4:
            env_name = f"CHAOS_KEY_{lane.upstream.upper().replace('-', '_')}"
            r = subprocess.run(
                [*CLI, "provider", "add", lane.provider, "--dialect", lane.upstream,
                 "--base-url", fakes.fakes[lane.upstream].base_url,
                 "--api-key", f"env:{env_name}", "--model", lane.model.split("-")[0] + "-*",
                 "--nats-url", urls, "--home", str(tmp_path / "cli")],
                capture_output=True, text=True, env=env, timeout=120)
            assert r.returncode == 0, r.stdout + r.stderr
        # an alert that fires once early in the run and stays firing (no reminders)
        r = subprocess.run(
            [*CLI, "alerts", "add", "busy", "--metric", "request_rate", "--threshold", "5",
             "--window", "5m", "--cooldown", "1h", "--no-remind", "--channel", hooks.url(),
             "--nats-url", urls, "--home", str(tmp_path / "cli")],
            capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr

        parts = Parts(tmp_path, urls, env)
        try:
            for name, part in (("edge1", "edge"), ("edge2", "edge"), ("router1", "router"),
                               ("router2", "router"), ("router3", "router"),
                               ("ledger1", "ledger"), ("ledger2", "ledger"),
                               ("alerts1", "alerts"), ("alerts2", "alerts")):
                parts.start(name, part)
            parts.wait_edges()
            outcomes, rounds_seen = asyncio.run(
                _scenario(cluster, parts, rounds=rounds, after=after, concurrency=concurrency))
            pending = asyncio.run(_caught_up(urls))
            # a notification the killed worker had taken comes back after the notify
            # consumer's ack wait (workers/alerts/service.NOTIFY_ACK_WAIT_S, 10 s): wait for
            # the first, then long enough that a second one would have been sent too
            deadline = time.monotonic() + 30.0
            while not hooks.bodies() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(3.0)
            parts.stop_all()
            alerts_logs = "".join(f"--- {n}.log\n{parts.log(n)[-6000:]}"
                                  for n in ("alerts1", "alerts2"))
            rows = {n: _rows(tmp_path / n) for n in ("ledger1", "ledger2")}
        finally:
            parts.stop_all()
        seen = fakes.seen(outcomes[0].cid.split("-")[1][:7]) if outcomes else Counter()
    return ClusterRun(outcomes=outcomes, seen=seen, rows=rows, pending=pending,
                      hooks=hooks.bodies(), rounds=rounds_seen, alerts_logs=alerts_logs)


async def _scenario(cluster: NatsCluster, parts: Parts, *, rounds: int, after: int,
                    concurrency: int) -> tuple[list[Outcome], list[str]]:
    token = uuid.uuid4().hex[:7]  # + "a"/"b": the 8 hex digits the fakes' tag expects
    loads = [Load(parts.edge_urls[edge], token + tag, concurrency=concurrency, lanes=LANES4,
                  mix=FAST_MIX, keep=True, read_timeout=30.0)
             for edge, tag in (("edge1", "a"), ("edge2", "b"))]
    runs = [asyncio.create_task(load.run()) for load in loads]

    def done() -> int:
        return sum(load.done for load in loads)

    async def until_done(n: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while done() < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    seen_rounds: list[str] = []
    await until_done(40)
    for i in range(rounds):
        router, ledger = f"router{i % 3 + 1}", f"ledger{i % 2 + 1}"
        leader = await _leader(cluster.urls, names.REQUESTS_STREAM)
        node = int(leader.removeprefix("n")) - 1
        t_kill = time.monotonic()
        cluster.kill(node)
        await asyncio.sleep(1.0)
        alerts = await _active_alerts(cluster.urls, parts)
        for name in (router, ledger, alerts):
            parts.kill(name)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(cluster.start_node, node)
        # restarted on their data directories, as Kubernetes or `codeswitch up` would: a
        # router's facts not yet acked when it died wait in its outbox for that
        for name, part in ((router, "router"), (ledger, "ledger"), (alerts, "alerts")):
            parts.start(name, part)
        t_back = time.monotonic()
        await until_done(done() + after)
        after_kill = [o for load in loads for o in load.outcomes if o.t_start > t_kill]
        first_ok = min((o.t_start for o in after_kill if o.complete), default=None)
        slowest = max(((o.t_end or o.t_start) - o.t_start for o in after_kill), default=0.0)
        seen_rounds.append(
            f"round {i + 1}: killed NATS {leader} (work-queue leader), {router}, {ledger}, "
            f"{alerts} (active alerts); back after {t_back - t_kill:.1f} s; first complete "
            f"answer started {(first_ok - t_kill) if first_ok else float('nan'):.2f} s after "
            f"the kill; errors among requests started after it "
            f"{sum(not o.complete for o in after_kill)} of {len(after_kill)}; slowest "
            f"{slowest:.2f} s")
    for load in loads:
        load.stop()
    await asyncio.gather(*runs)
    return [o for load in loads for o in load.outcomes], seen_rounds
