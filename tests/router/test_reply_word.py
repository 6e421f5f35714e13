"""The router's wait for the edge's word on a final message (workers/router/reply.py), on a real
nats-server: an edge that took the final message and died is known within about a second (its
request is then recorded as not delivered before the chaos harness or an operator looks), an
edge that answers late is still heard, and a gone edge is never waited on for the whole
timeout."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas.envelope import ReplyStart
from schemas.subjects import REPLY_PREFIX
from workers.router.reply import ACK_PREFIX, ASK_EDGE_AFTER_S, Reply


async def _router_side(nc: NATS) -> dict[str, asyncio.Future[bool | None]]:
    acks: dict[str, asyncio.Future[bool | None]] = {}

    async def on_ack(msg: Msg) -> None:  # as RouterService._on_ack
        fut = acks.pop(msg.subject.rsplit(".", 1)[-1], None)
        if fut is not None and not fut.done():
            fut.set_result((msg.headers or {}).get("Status") is None and msg.data == b"1")

    await nc.subscribe(f"{ACK_PREFIX}.r1.*", cb=on_ack)
    return acks


async def test_an_edge_that_dies_holding_the_final_message_is_known_within_about_a_second(
        nc: NATS, nats_server: object) -> None:
    acks = await _router_side(nc)
    edge = NATS()
    await edge.connect(nc.connected_url.geturl() if nc.connected_url else "")
    taken = asyncio.Event()

    async def swallow(msg: Msg) -> None:  # takes the answer, then is killed before its word
        taken.set()

    await edge.subscribe(f"{REPLY_PREFIX}.e1.>", cb=swallow)
    await edge.flush()
    reply = Reply(nc, f"{REPLY_PREFIX}.e1.rid1", router="r1", rid="rid1", acks=acks)
    await reply.full(ReplyStart(status=200, headers={}), b"{}")
    await asyncio.wait_for(taken.wait(), 5)
    await edge.close()
    t0 = time.monotonic()
    word = await reply.delivered(timeout=5.0)
    took = time.monotonic() - t0
    assert word is False
    assert took < ASK_EDGE_AFTER_S + 1.0, f"took {took:.2f}s to see the edge was gone"
    assert "rid1" not in acks


async def test_a_slow_edge_is_still_heard_after_the_ping(nc: NATS) -> None:
    acks = await _router_side(nc)
    edge = NATS()
    await edge.connect(nc.connected_url.geturl() if nc.connected_url else "")

    async def late_word(msg: Msg) -> None:
        if msg.subject.endswith(".ping"):
            await msg.respond(b"")
            return

        async def later() -> None:
            await asyncio.sleep(ASK_EDGE_AFTER_S + 0.5)
            await edge.publish(msg.reply, b"1")
        asyncio.get_running_loop().create_task(later())

    await edge.subscribe(f"{REPLY_PREFIX}.e2.>", cb=late_word)
    await edge.flush()
    reply = Reply(nc, f"{REPLY_PREFIX}.e2.rid2", router="r1", rid="rid2", acks=acks)
    await reply.full(ReplyStart(status=200, headers={}), b"{}")
    t0 = time.monotonic()
    assert await reply.delivered(timeout=5.0) is True
    assert ASK_EDGE_AFTER_S < time.monotonic() - t0 < 4.0
    await edge.close()


async def test_no_edge_at_all_is_an_immediate_no(nc: NATS) -> None:
    acks = await _router_side(nc)
    reply = Reply(nc, f"{REPLY_PREFIX}.e3.rid3", router="r1", rid="rid3", acks=acks)
    await reply.full(ReplyStart(status=200, headers={}), b"{}")
    t0 = time.monotonic()
    assert await reply.delivered(timeout=5.0) is False  # NATS: no responders to the final
    assert time.monotonic() - t0 < 0.5


async def test_nothing_final_sent_is_no_word(nc: NATS) -> None:
    reply = Reply(nc, f"{REPLY_PREFIX}.e4.rid4", router="r1", rid="rid4", acks={})
    assert await reply.delivered(timeout=0.2) is None
