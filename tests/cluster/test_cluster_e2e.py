"""Issue 15 in CI: a three-node NATS cluster (real nats-server processes, streams with 3
replicas), 2 edges, 3 routers and 2 ledgers as separate processes. Under load through both
edges, kill -9 the NATS node that leads the work queue (then bring it back), one router and one
ledger (then restart it): every client gets a complete answer or an error in its dialect, each
ledger's rows match the clients request by request (nothing lost, nothing doubled), and both
ledgers converge to the same rows; of two alerts workers (the active one killed too), one
notification per alert transition. The long version is ``bench/cluster.py``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from runtime import bus, names
from tests.alerts.conftest import Receiver
from tests.chaos.harness import FAST_MIX, LANES, ChaosFakes, Load, analyze, provider_key
from tests.cluster.cluster import NatsCluster
from tests.cluster.parts import Parts, part_env

pytestmark = pytest.mark.timeout(300)
CLI = [sys.executable, "-m", "codeswitch"]
LANES4 = LANES[:4]  # one lane per dialect, each to its own provider


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


async def _leader(urls: str, stream: str) -> str:
    nc = await bus.connect(urls, name="test", once=True)
    try:
        info = await nc.jetstream().stream_info(stream)
        assert info.cluster is not None and info.cluster.leader
        return info.cluster.leader
    finally:
        await nc.close()


async def _active_alerts(urls: str, parts: Parts) -> str:
    """The alerts worker holding the lease (its pid is in the lease's value)."""
    import json

    from workers.alerts.service import LEASE_KEY

    nc = await bus.connect(urls, name="test", once=True)
    try:
        kv = await nc.jetstream().key_value(names.ALERT_STATE_BUCKET)
        holder = json.loads((await kv.get(LEASE_KEY)).value or b"{}")["holder"]
    finally:
        await nc.close()
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


def test_cluster_loses_a_node_a_router_and_a_ledger(tmp_path: Path) -> None:
    hooks = Receiver()
    hooks.thread.start()
    try:
        _run(tmp_path, hooks)
    finally:
        hooks.server.shutdown()
        hooks.server.server_close()


def _run(tmp_path: Path, hooks: Receiver) -> None:
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
            report = asyncio.run(_scenario(cluster, parts, fakes))
            pending = asyncio.run(_caught_up(urls))
            time.sleep(2.0)  # any second notification would have been sent by now
            parts.stop_all()
            rows1, rows2 = _rows(tmp_path / "ledger1"), _rows(tmp_path / "ledger2")
        finally:
            parts.stop_all()

    outcomes, seen, timeline = report
    assert len(pending) == 2  # two ledgers, two consumers of their own
    # two alerts workers, the active one killed mid-run: one notification for the transition
    assert [b["kind"] for b in hooks.bodies()] == ["fired"], hooks.bodies()
    kinds = {o.kind for o in outcomes}
    complete = sum(o.complete for o in outcomes)
    failed = len(outcomes) - complete
    assert len(outcomes) >= 120 and complete >= 100, (
        len(outcomes), complete, timeline, [o.brief() for o in outcomes[:5]],
        outcomes[0].sample[:300])
    for name, rows in (("ledger1", rows1), ("ledger2", rows2)):
        rep = analyze(name, outcomes, rows, seen, None)
        assert not rep.lost, rep.render()
        assert not rep.doubled and not rep.upstream_doubled, rep.render()
        assert not rep.bad_answers, rep.render()  # complete or an error in the dialect
        assert not rep.mismarked, rep.render()
        assert sum(bool(r.get("ok")) for r in rows) == complete, rep.render()
    key = [(r["request_id"], r["status"], r["ok"], r["provider"]) for r in rows1]
    assert key == [(r["request_id"], r["status"], r["ok"], r["provider"]) for r in rows2]
    for o in outcomes:
        if not o.complete:  # shown with -s: which requests failed, and how
            print("error:", o.brief())
    print(f"cluster run: {len(outcomes)} requests, {complete} complete, {failed} errors "
          f"({kinds}); {timeline}")


async def _scenario(cluster: NatsCluster, parts: Parts,
                    fakes: ChaosFakes) -> tuple[list[Any], Any, str]:
    token = uuid.uuid4().hex[:7]  # + "a"/"b": the 8 hex digits the fakes' tag expects
    loads = [Load(parts.edge_urls["edge1"], token + "a", concurrency=4, lanes=LANES4,
                  mix=FAST_MIX),
             Load(parts.edge_urls["edge2"], token + "b", concurrency=4, lanes=LANES4,
                  mix=FAST_MIX)]
    runs = [asyncio.create_task(load.run()) for load in loads]

    async def until_done(n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(load.done for load in loads) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    await until_done(40)
    leader = await _leader(cluster.urls, names.REQUESTS_STREAM)
    node = int(leader.removeprefix("n")) - 1
    t_kill = time.monotonic()
    cluster.kill(node)
    await asyncio.sleep(1.0)
    parts.kill("router1")
    parts.kill("ledger1")
    parts.kill(await _active_alerts(cluster.urls, parts))  # the standby takes over
    await asyncio.sleep(2.0)
    await asyncio.to_thread(cluster.start_node, node)
    # restarted on their data directories, as Kubernetes or `codeswitch up` would: a router's
    # facts not yet acked when it died wait in its outbox (runtime/facts.py) for that
    parts.start("ledger1", "ledger")
    parts.start("router1", "router")
    t_back = time.monotonic()
    base = sum(load.done for load in loads)
    await until_done(base + 80)
    for load in loads:
        load.stop()
    await asyncio.gather(*runs)
    outcomes = [o for load in loads for o in load.outcomes]
    # when the clients got answers again after the node loss
    after = [o for o in outcomes if o.t_start > t_kill]
    first_ok = min((o.t_start for o in after if o.complete), default=None)
    timeline = (f"killed NATS {leader} (work-queue leader), router1, ledger1, the active alerts "
                f"worker; node, router "
                f"and ledger back after "
                f"{t_back - t_kill:.1f} s; first complete answer started "
                f"{(first_ok - t_kill) if first_ok else float('nan'):.2f} s after the kill; "
                f"errors after the kill {sum(not o.complete for o in after)} of {len(after)}; "
                f"slowest answer started after the kill "
                f"{max(((o.t_end or o.t_start) - o.t_start for o in after), default=0):.2f} s")
    # what the upstreams saw (both loads' client ids start with the token)
    return outcomes, fakes.seen(token), timeline
