"""The quota worker reads the event log without acks (its position is its fold's): a delivery
lost in transit (NATS reconnecting, a cluster node lost) would never come again, and that
request's spend would be missing from every budget. It sees the jump in its consumer's
sequence, folds what precedes it and reads again from its fold's position."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from nats.aio.client import Client as NATS

from runtime import names
from runtime.natsd import EmbeddedNats
from schemas.events import encode_event
from schemas.subjects import response_subject
from tests.quota.test_fold import fact, tokens
from workers.quota.service import QuotaService


async def test_a_delivery_lost_in_transit_is_folded_all_the_same(
        nc: NATS, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    js = nc.jetstream()
    now = time.time()
    sent = 0

    async def publish(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            ev = fact(f"r{sent}", 100, at=now, n=sent)
            sent += 1
            await js.publish(response_subject("anthropic", "main"), encode_event(ev),
                             headers={"Nats-Msg-Id": ev.id})

    service = QuotaService(nats_server.url, tmp_path / "home", expires=0.5)
    await service.startup()
    stop = asyncio.Event()
    loop = asyncio.create_task(service.main_loop(stop))
    try:
        await publish(10)
        fold = service.fold
        assert fold is not None

        async def folded(n: int) -> None:
            deadline = time.monotonic() + 10
            while tokens(fold, "user.u1") < 100 * n:
                assert time.monotonic() < deadline, tokens(fold, "user.u1")
                await asyncio.sleep(0.05)

        await folded(10)
        thief = await js.pull_subscribe_bind(service.durable, names.EVENTS_STREAM)
        stolen = []
        for _ in range(8):
            # the thief's pull waits behind the worker's; when that one expires (0.5 s) the
            # thief's is first in line for the next fact
            theft = asyncio.ensure_future(thief.fetch(1, timeout=3))
            await asyncio.sleep(0.8)
            await publish(1)
            with contextlib.suppress(Exception):
                stolen = await theft
            if stolen:
                break
        assert stolen, "the thief got no delivery"
        await thief.unsubscribe()
        await publish(5)  # what follows shows the gap
        await folded(sent)  # every request counted, the stolen one too
        await asyncio.sleep(0.5)
        assert tokens(fold, "user.u1") == 100 * sent  # and none twice
    finally:
        stop.set()
        await loop
        await service.shutdown()
