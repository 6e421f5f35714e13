"""Two alerts workers on one NATS (a cluster's redundancy): one works, the other stands by
(``runtime/lease.py``); a transition is notified exactly once, also when the active one stops
in the middle of a firing alert or dies without a word."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from nats.aio.client import Client as NATS

from runtime import names
from runtime.lease import Lease
from runtime.natsd import EmbeddedNats
from workers.alerts import service

from .conftest import Receiver
from .test_service import Worker, alert_facts, error_rule, publish, put_rule, restart_sequence


async def _kv(nc: NATS):  # type: ignore[no-untyped-def]
    from runtime import bus

    await bus.ensure_all(nc.jetstream())
    return await nc.jetstream().key_value(names.ALERT_STATE_BUCKET)


async def test_one_active_one_standing_by_one_notification_per_transition(
    nats_server: EmbeddedNats, nc: NATS, receiver: Receiver, tmp_path: Path
) -> None:
    facts = await alert_facts(nc)
    await put_rule(nc, error_rule(receiver))
    a = Worker(nats_server.url, tmp_path / "a")
    await a.start(nc)
    b = Worker(nats_server.url, tmp_path / "b")
    b.task = asyncio.create_task(service.run(b.url, b.home, b.stop, tick_s=0.2))
    await asyncio.sleep(0.5)
    kv = await _kv(nc)
    holder = (await kv.get(service.LEASE_KEY)).value
    assert holder is not None and b'"holder"' in holder

    phases = restart_sequence()
    await publish(nc, phases["burst"] + phases["still"])
    deadline = time.monotonic() + 10
    while len(receiver.bodies()) < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # both running for several ticks: still one
    assert [x["kind"] for x in receiver.bodies()] == ["fired"]

    await a.halt()  # a clean stop hands over at once: b restores the firing state
    await publish(nc, phases["recover"])
    deadline = time.monotonic() + 15
    while len(receiver.bodies()) < 2:
        assert time.monotonic() < deadline, receiver.bodies()
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    await b.halt()
    kinds = [x["kind"] for x in receiver.bodies()]
    assert kinds == ["fired", "resolved"], kinds
    assert receiver.bodies()[1]["fired_id"] == receiver.bodies()[0]["alert_id"]
    assert [m.subject.split(".")[1] for m in facts] == ["fired", "resolved"]


async def test_a_silent_holder_is_replaced_after_the_lease(nc: NATS) -> None:
    kv = await _kv(nc)
    first = Lease(kv, "lease.test", holder="elsewhere:1", ttl_s=1.2, renew_s=0.3)
    stop = asyncio.Event()
    assert await first.acquire(stop)
    second = Lease(kv, "lease.test", holder="elsewhere:2", ttl_s=1.2, renew_s=0.3)
    waiting = asyncio.create_task(second.acquire(stop, poll_s=0.1))
    await asyncio.sleep(1.5)
    assert not waiting.done()  # the holder renews: the standby waits
    assert first._renewer is not None
    first._renewer.cancel()  # the holder goes silent (a kill -9 elsewhere)
    t0 = time.monotonic()
    assert await asyncio.wait_for(waiting, 5)
    # silent since its last renewal (at most renew_s before the cancel) for the lease
    assert 1.2 - 0.3 - 0.05 <= time.monotonic() - t0 < 3.0
    # the old holder, back, finds it lost on its next renewal
    first.lost.clear()
    first._renewer = asyncio.create_task(first._renew())
    await asyncio.wait_for(first.lost.wait(), 3)
    await second.release()
    await first.release()


async def test_a_dead_process_of_this_device_is_replaced_at_once(nc: NATS) -> None:
    import subprocess

    from runtime.presence import device_name

    gone = subprocess.Popen(["true"])
    gone.wait()
    kv = await _kv(nc)
    dead = Lease(kv, "lease.test2", holder=f"{device_name()}:{gone.pid}", ttl_s=30,
                 renew_s=1)
    stop = asyncio.Event()
    assert await dead.acquire(stop)
    assert dead._renewer is not None
    dead._renewer.cancel()
    heir = Lease(kv, "lease.test2", ttl_s=30, renew_s=1)
    t0 = time.monotonic()
    assert await asyncio.wait_for(heir.acquire(stop, poll_s=0.1), 5)
    assert time.monotonic() - t0 < 2.0  # not the 30 s lease
    await heir.release()


async def test_a_notification_taken_by_a_killed_worker_is_sent_by_the_next(
    nats_server: EmbeddedNats, nc: NATS, receiver: Receiver, tmp_path: Path
) -> None:
    """The active worker (a process) takes the notification and dies in the middle of the
    webhook (kill -9, no ack, no nak): the next active worker sends it once the notify
    consumer's ack wait has passed, not 30 s later (the cluster test waited that long)."""
    import os
    import signal
    import subprocess
    import sys

    await put_rule(nc, error_rule(receiver, "/slow"))
    receiver.delay["/slow"] = 60.0  # the first delivery hangs until its sender is gone
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    log = tmp_path / "a.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.launch", "alerts", "--nats-url", nats_server.url,
             "--home", str(tmp_path / "a")], stdout=out, stderr=out, env=env,
            start_new_session=True)
    try:
        kv = await _kv(nc)
        deadline = time.monotonic() + 20
        while True:  # until the process holds the lease (its pid in the value)
            try:
                value = (await kv.get(service.LEASE_KEY)).value or b""
            except Exception:
                value = b""
            if f":{proc.pid}\"".encode() in value:
                break
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # its consumers bound, its first tick done
        await publish(nc, restart_sequence()["burst"])
        deadline = time.monotonic() + 20
        while len(receiver.bodies("/slow")) < 1:  # it took the notification, is sending
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    receiver.delay["/slow"] = 0.0
    b = Worker(nats_server.url, tmp_path / "b")
    await b.start(nc)
    try:
        deadline = t_kill + service.NOTIFY_ACK_WAIT_S + 8
        while len(receiver.bodies("/slow")) < 2:
            assert time.monotonic() < deadline, receiver.bodies("/slow")
            await asyncio.sleep(0.05)
        waited = time.monotonic() - t_kill
        await asyncio.sleep(1.0)
    finally:
        await b.halt()
    first, second = receiver.bodies("/slow")
    assert first["kind"] == second["kind"] == "fired"
    assert first["alert_id"] == second["alert_id"]  # the same notification, sent again
    assert waited < 25.0  # the ack wait, not the old 30 s
    print(f"notification sent again {waited:.1f} s after its sender was killed")
