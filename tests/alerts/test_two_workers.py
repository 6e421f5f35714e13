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
