"""The ledger service against a real nats-server: live projection, queries over NATS,
replay (into a file and with the atomic swap), retention carry-over, kill -9 mid-batch."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from runtime import bus
from runtime.natsd import EmbeddedNats
from schemas.events import encode_event
from tests.ledger.conftest import (
    ask,
    assert_same_tables,
    dump,
    publish,
    recorded,
    wait_caught_up,
)
from tests.ledger.eventgen import generate, subject_of
from workers.ledger import service
from workers.ledger.store import Store

REPO = Path(__file__).resolve().parents[2]


def synthetic(requests: int, seed: int = 3) -> list[tuple[str, bytes]]:
    return [(subject_of(e), encode_event(e)) for e in generate(requests, seed=seed)]


@contextlib.asynccontextmanager
async def ledger(url: str, home: Path, **kw: object) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(url, home, stop, **kw))  # type: ignore[arg-type]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def replay(nc: NATS, params: dict[str, object]) -> dict[str, object]:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    job = await ask(nc, "replay", {**params, "progress": inbox})
    phases = []
    while job["state"] == "running":
        job = __import__("json").loads((await sub.next_msg(timeout=30)).data)
        phases.append(job["phase"])
    await sub.unsubscribe()
    assert job["state"] == "done", job
    job["phases"] = phases
    return job  # type: ignore[no-any-return]


async def test_live_projection_and_queries(nc: NATS, nats_server: EmbeddedNats,
                                           tmp_path: Path) -> None:
    events = recorded("ledger_basic.jsonl")
    await publish(nc, events)
    await publish(nc, events)  # the same ids again: JetStream de-duplicates them
    async with ledger(nats_server.url, tmp_path / "home"):
        status = await wait_caught_up(nc, len(events))
        assert status["tables"] == {"requests": 5, "attempts": 6, "circuit_transitions": 2,
                                    "alert_history": 3, "audit": 1, "sessions": 3,
                                    "deleted_sessions": 0}
        o = await ask(nc, "overview")
        assert (o["requests"], o["errors"], o["unpriced_requests"]) == (5, 1, 1)
        assert o["cost"] == pytest.approx(0.18475)
        by_model = await ask(nc, "breakdown", {"by": "model"})
        assert by_model[0]["key"] == "gemini-2.5-pro"
        log = await ask(nc, "log", {"provider": "openai", "limit": 5})
        assert [r["request_id"] for r in log] == ["req-2"]
        assert len(await ask(nc, "series", {"bucket": "hour"})) == 3
        assert len(await ask(nc, "heatmap", {"tz_offset_s": 0})) == 2
        assert len(await ask(nc, "alerts")) == 3
        fired = await ask(nc, "alert_history", {"since": None, "rule": "error-rate", "limit": 1})
        assert [a["kind"] for a in fired] == ["resolved"]
        assert len(await ask(nc, "circuits", {"provider": "openai-backup"})) == 2
        prices = await ask(nc, "prices")
        assert prices["unpriced"] == [{"provider": "local", "model": "llama-3.3-70b",
                                       "requests": 1, "total_tokens": 600}]
        bad = await nc.request("cs.ledger.breakdown", b'{"by": "colour"}', timeout=5)
        assert b'"ok":false' in bad.data
        # events published while it runs are folded in too
        await publish(nc, synthetic(200))
        status = await wait_caught_up(nc, len(events) + 200 * 2)
        assert status["lag"] == 0 or status["state"]["last_seq"] >= len(events) + 400


async def test_replay_into_a_file_equals_the_live_projection(
        nc: NATS, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    home = tmp_path / "home"
    events = recorded("ledger_basic.jsonl") + synthetic(1500)
    await publish(nc, events)
    await asyncio.sleep(0.05)
    since = time.time()  # --since is stream time: when the events reached CS_EVENTS
    later = synthetic(100, seed=11)
    await publish(nc, later)
    total = len(events) + len(later)
    async with ledger(nats_server.url, home, batch=300):
        await wait_caught_up(nc, total)
        job = await replay(nc, {"into": str(tmp_path / "copy.duckdb")})
        assert job["events"] == total and not job["swap"]
        window = await replay(nc, {"since": since, "into": str(tmp_path / "window.duckdb")})
        assert window["events"] == len(later)
    assert_same_tables(home / "ledger.duckdb", tmp_path / "copy.duckdb")
    win = dump(tmp_path / "window.duckdb")["requests"]
    assert len(win) == 100 and min(r[0] for r in win) > len(events)


async def test_replay_swap_while_events_arrive_and_retention_carry_over(
        nc: NATS, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = recorded("ledger_basic.jsonl") + synthetic(800, seed=4)
    await publish(nc, first)
    async with ledger(nats_server.url, home, batch=200):
        await wait_caught_up(nc, len(first))
        before = await ask(nc, "overview")
        # retention dropped the oldest events: they now exist only in the projection
        await nc.jetstream().purge_stream("CS_EVENTS", seq=101)
        more = synthetic(600, seed=5)
        publishing = asyncio.create_task(publish(nc, more))
        job = await replay(nc, {})
        await publishing
        assert job["swap"] and job["carried_before_seq"] == 101 and job["older_rows"] > 0
        assert "swap" in job["phases"]
        total = len(first) + len(more)
        await wait_caught_up(nc, total)
        after = await ask(nc, "overview")
        assert after["requests"] == before["requests"] + 600
        status = await ask(nc, "status")
        assert status["state"]["carried_before_seq"] == 101
        assert status["state"]["replay_from_seq"] == 101
    assert (home / "ledger.duckdb.bak").exists()
    # the rebuilt-and-swapped file equals a projection that never stopped: build one by
    # replaying the (purged) stream plus the rows below seq 101 from the backup
    async with ledger(nats_server.url, tmp_path / "ref", durable="ref"):
        await wait_caught_up(nc, total)
    ref, live = dump(tmp_path / "ref" / "ledger.duckdb"), dump(home / "ledger.duckdb")
    old = dump(home / "ledger.duckdb.bak")
    for table, rows in live.items():
        if table == "sessions":  # derived from the requests: checked below
            continue
        expected = sorted([r for r in old[table] if r[0] < 101] + ref[table])
        assert rows == expected, table
    # sessions: what the swapped file's requests give (carried and replayed ones together)
    shutil.copy(home / "ledger.duckdb", tmp_path / "again.duckdb")
    with Store(tmp_path / "again.duckdb") as again:
        ids = [r[0] for r in again.con.execute("SELECT DISTINCT session FROM requests "
                                               "WHERE session IS NOT NULL").fetchall()]
        again.con.execute("BEGIN")
        again.refresh_sessions(ids, 0)  # from the first request on
        again.con.execute("COMMIT")
    assert dump(tmp_path / "again.duckdb")["sessions"] == live["sessions"]


def _spawn(url: str, home: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "workers.ledger.service", "--nats-url", url,
         "--home", str(home), "--batch", "250"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


async def test_kill_9_mid_batch_then_restart_gives_identical_tables(
        nc: NATS, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    events = synthetic(6000, seed=9)
    await publish(nc, events)
    home = tmp_path / "crashy"
    proc = _spawn(nats_server.url, home)
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while True:  # kill it while it is folding batches in, not before, not after
            with contextlib.suppress(Exception):
                status = await ask(nc, "status", timeout=1)
                if 0 < status["state"]["last_seq"] < len(events) - 2000:
                    break
            assert asyncio.get_running_loop().time() < deadline, "ledger never started"
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = status["state"]["last_seq"]
        proc = _spawn(nats_server.url, home)
        status = await wait_caught_up(nc, len(events), timeout=60)
        assert status["state"]["last_seq"] == len(events) > killed_at
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    async with ledger(nats_server.url, tmp_path / "steady", durable="steady"):
        await wait_caught_up(nc, len(events))
    assert_same_tables(home / "ledger.duckdb", tmp_path / "steady" / "ledger.duckdb")


async def test_price_overrides_from_kv_apply_to_new_events(
        nc: NATS, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    events = recorded("ledger_basic.jsonl")
    local = next(e for e in events if b'"req-4"' in e[1] and b"RequestCompleted" in e[1])
    kv = await nc.jetstream().key_value("cs_settings")
    async with ledger(nats_server.url, tmp_path / "home"):
        await publish(nc, [local])
        await wait_caught_up(nc, 1)
        await kv.put("ledger.prices", b'{"providers": {"local": {"default": '
                                      b'{"input": 1.0, "output": 2.0}}}}')
        for _ in range(100):
            table = (await ask(nc, "prices"))["prices"]
            if any(p["source"] == "provider:local" for p in table):
                break
            await asyncio.sleep(0.05)
        # another request (one request id is one row: the ledger folds facts by request id)
        again = local[1].replace(b'"0005q"', b'"0005z"').replace(b'"req-4"', b'"req-4b"')
        await publish(nc, [(local[0], again)])
        await wait_caught_up(nc, 2)
        log = await ask(nc, "log", {"provider": "local"})
        assert [r["cost"] for r in log] == [pytest.approx((500 * 1.0 + 100 * 2.0) / 1e6), None]


async def test_a_recreated_stream_sets_the_old_projection_aside(
        nc: NATS, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    home = tmp_path / "home"
    events = recorded("ledger_basic.jsonl")
    await publish(nc, events)
    async with ledger(nats_server.url, home):
        await wait_caught_up(nc, len(events))
    js = nc.jetstream()
    await js.delete_stream("CS_EVENTS")
    await bus.ensure_all(js)
    await publish(nc, events[:4])  # seq 1..4 again, in a new stream
    async with ledger(nats_server.url, home):
        status = await wait_caught_up(nc, 4)
        assert status["tables"]["requests"] == 1 and status["state"]["last_seq"] == 4
    assert len(list(home.glob("ledger.duckdb.orphaned-*"))) == 1


async def test_a_delivery_lost_in_transit_is_read_again(nc: NATS, nats_server: EmbeddedNats,
                                                        tmp_path: Path) -> None:
    """A delivery the ledger never receives (lost while NATS reconnects, or with a cluster
    node) must not be acked by the acks of what follows (AckPolicy ALL): the ledger sees the
    gap in the consumer's sequence and reads again from its own position. Here the delivery
    is taken from its consumer by another subscriber, which never acks it."""
    from runtime import names

    home = tmp_path / "home"
    first = synthetic(20, seed=5)
    await publish(nc, first)
    js = nc.jetstream()
    async with ledger(nats_server.url, home):
        await wait_caught_up(nc, (await js.stream_info(names.EVENTS_STREAM)).state.last_seq)
        durable = (home / service.DURABLE_FILE).read_text().strip()
        thief = await js.pull_subscribe_bind(durable, names.EVENTS_STREAM)
        # only the requests' facts: whichever is taken, the request count says if it is lost
        second = [e for e in synthetic(20, seed=6) if e[0].startswith("llm.response.")]
        assert len(second) == 20
        stolen = []
        for _ in range(5):
            # the thief's pull request waits behind the ledger's; when that one expires
            # (0.5 s) the thief's is first in line for the next message
            theft = asyncio.ensure_future(thief.fetch(1, timeout=3))
            await asyncio.sleep(0.8)
            await publish(nc, second[:1])
            with contextlib.suppress(Exception):
                stolen = await theft
            if stolen:
                break
            second = second[1:]  # the ledger had this one
        assert stolen, "the thief got no delivery"
        assert stolen[0].subject.startswith("llm.response.")
        await publish(nc, second[1:])
        total = (await js.stream_info(names.EVENTS_STREAM)).state.last_seq
        status = await wait_caught_up(nc, total)
        assert status["state"]["last_seq"] >= total
        await asyncio.sleep(1.0)  # any late fold
        assert (await ask(nc, "overview"))["requests"] == 40  # none missing
        await thief.unsubscribe()
