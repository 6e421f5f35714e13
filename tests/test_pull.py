"""runtime.pull.BatchPuller against a real JetStream: batches in order with the next one
prefetched, and drain() leaving nothing in flight when a consumer stops."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.js import api

from runtime.pull import BatchPuller


async def _stream(nc: NATS, n: int) -> None:
    js = nc.jetstream()
    await js.add_stream(name="PULLT", subjects=["pullt.>"])
    await js.add_consumer("PULLT", api.ConsumerConfig(
        durable_name="c", ack_policy=api.AckPolicy.ALL, max_ack_pending=10_000))
    for i in range(n):
        await nc.publish(f"pullt.{i}", str(i).encode())
    await nc.flush()


async def test_batches_in_order_then_drain_leaves_nothing_in_flight(nc: NATS) -> None:
    await _stream(nc, 3000)
    puller = await BatchPuller(nc, "PULLT", "c", batch=1000, expires=1.0).start()
    seen: list[int] = []
    first = await puller.fetch()
    seen += [int(m.data) for m in first]
    # the next batch was asked for as soon as the first one completed (prefetch); drain
    # returns it, and asks for nothing more
    rest = await puller.drain()
    seen += [int(m.data) for m in rest]
    assert seen == list(range(2000))
    await rest[-1].ack_sync()  # confirmed by the server before the consumer is inspected
    info = await nc.jetstream().consumer_info("PULLT", "c")
    # everything delivered was handed to us and acked; the rest was never sent anywhere
    assert info.num_ack_pending == 0
    assert info.num_pending == 3000 - len(seen)
    assert await puller.drain() == []
    await puller.close()


async def test_closing_without_drain_leaves_a_batch_in_flight(nc: NATS) -> None:
    """What drain() prevents: the prefetched batch went to an inbox nobody reads, and with
    AckPolicy.ALL the next ack of a later message would acknowledge it unseen."""
    await _stream(nc, 3000)
    puller = await BatchPuller(nc, "PULLT", "c", batch=1000, expires=1.0).start()
    first = await puller.fetch()
    await first[-1].ack_sync()
    await asyncio.sleep(0.3)  # the prefetched batch arrives in the buffer meanwhile
    await puller.close()
    await nc.flush()
    info = await nc.jetstream().consumer_info("PULLT", "c")
    # prefetched up to high_water (2 batches), all of it sent to an inbox nobody reads now
    assert info.num_ack_pending == 2000 and info.num_pending == 0


def test_before_gap_stops_at_a_lost_delivery_and_ignores_redeliveries() -> None:
    from types import SimpleNamespace
    from typing import Any

    from runtime.pull import before_gap

    def msgs(*cseqs: int) -> Any:
        return [SimpleNamespace(reply=f"$JS.ACK.CS_EVENTS.c.1.{100 + c}.{c}.0.0") for c in cseqs]

    assert before_gap(msgs(1, 2, 3), 0) == (3, 3)  # a new consumer: 1 first
    assert before_gap(msgs(2, 3), 0) == (0, 0)  # its first delivery lost
    assert before_gap(msgs(7, 8), None) == (2, 8)  # bound again: the first is not judged
    assert before_gap(msgs(4, 5, 7, 8), 3) == (2, 5)  # 6 never came
    assert before_gap(msgs(4, 2, 5), 3) == (3, 5)  # 2 is a redelivery, not a jump
    assert before_gap([], 3) == (0, 3)
