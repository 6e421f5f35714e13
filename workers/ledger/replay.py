"""Reading CS_EVENTS for a rebuild: an ordered, ephemeral, ack-less pull consumer.

``read_stream`` yields batches of ``(seq, subject, data)`` in stream order from a start sequence
(or a start time) up to and including ``until_seq``. It is "ordered" the way the NATS ordered
consumer is: the consumer sequence must grow by one per message, and on any gap (a lost
message, a server restart) the consumer is recreated from the last stream sequence seen + 1.
Nothing is acked (AckPolicy NONE), so a replay never disturbs the live durable consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import NamedTuple

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api

from runtime.names import EVENTS_STREAM
from runtime.pull import BatchPuller, parse_reply
from schemas.prices import PriceBook
from workers.ledger.projection import Rows, project
from workers.ledger.store import Store

__all__ = ["StreamBounds", "fold", "read_stream", "stream_bounds"]

log = logging.getLogger("codeswitch.ledger.replay")

Message = tuple[int, str, bytes]


class StreamBounds(NamedTuple):
    first_seq: int
    last_seq: int
    first_ts: float | None  # event-log time of the oldest message still held
    messages: int


async def stream_bounds(js: JetStreamContext, stream: str = EVENTS_STREAM) -> StreamBounds:
    info = await js.stream_info(stream)
    st = info.state
    first_ts: float | None = None
    if st.messages:
        try:
            msg = await js.get_msg(stream, seq=st.first_seq)
            stored = getattr(msg, "time", None)
            first_ts = stored.timestamp() if stored is not None else None
        except Exception:  # a raced purge: the bound is only informative
            first_ts = None
    return StreamBounds(st.first_seq, st.last_seq, first_ts, st.messages)


async def _consumer(nc: NATS, js: JetStreamContext, stream: str, *, start_seq: int | None,
                    start_time: float | None, batch: int) -> BatchPuller:
    if start_time is not None:
        config = js_api.ConsumerConfig(
            deliver_policy=js_api.DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.datetime.fromtimestamp(start_time, datetime.UTC),
        )
    elif start_seq and start_seq > 1:
        config = js_api.ConsumerConfig(
            deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq)
    else:
        config = js_api.ConsumerConfig(deliver_policy=js_api.DeliverPolicy.ALL)
    config.ack_policy = js_api.AckPolicy.NONE
    config.inactive_threshold = 30.0
    config.mem_storage = True
    config.num_replicas = 1
    info = await js.add_consumer(stream, config)
    return await BatchPuller(nc, stream, info.name, batch=batch, expires=1.0).start()


async def read_stream(nc: NATS, *, until_seq: int, start_seq: int | None = None,
                      start_time: float | None = None, batch: int = 5000,
                      stream: str = EVENTS_STREAM,
                      idle_timeout: float = 3.0) -> AsyncIterator[list[Message]]:
    """Batches of (seq, subject, data) from the start up to ``until_seq`` inclusive.

    Ends early when the stream has nothing more (num_pending 0, or nothing within
    ``idle_timeout``): messages up to ``until_seq`` may have been deleted."""
    if until_seq <= 0 or (start_seq is not None and start_seq > until_seq):
        return
    js = nc.jetstream()
    puller = await _consumer(nc, js, stream, start_seq=start_seq, start_time=start_time,
                             batch=batch)
    expected_cseq = 1
    last_sseq = (start_seq or 1) - 1
    idle_since = time.monotonic()
    try:
        while True:
            msgs = await puller.fetch()
            if not msgs:
                if time.monotonic() - idle_since > idle_timeout:
                    return
                continue
            idle_since = time.monotonic()
            out: list[Message] = []
            done = False
            pending = 1
            for m in msgs:
                sseq, cseq, pending = parse_reply(m.reply)
                if cseq != expected_cseq:  # gap in delivery: restart after the last one seen
                    log.warning("replay: consumer sequence %d, expected %d; resetting",
                                cseq, expected_cseq)
                    await puller.close()
                    puller = await _consumer(nc, js, stream, start_seq=last_sseq + 1,
                                             start_time=None, batch=batch)
                    expected_cseq = 1
                    pending = 1
                    break
                expected_cseq += 1
                if sseq > until_seq:
                    done = True
                    break
                last_sseq = sseq
                out.append((sseq, m.subject, m.data))
                if sseq == until_seq:
                    done = True
                    break
            if out:
                yield out
            if done or pending == 0:
                return
    finally:
        await puller.close()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, puller.consumer)


async def fold(batches: AsyncIterator[list[Message]], store: Store, prices: Callable[[], PriceBook],
               executor: Executor,
               on_batch: Callable[[Rows], Awaitable[None]] | None = None) -> int:
    """Project each batch and apply it to ``store`` on ``executor`` (the store's thread), one
    transaction per batch; the next batch is projected while the previous one commits.
    Returns the number of messages folded in."""
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[bool] | None = None
    total = 0
    async for batch in batches:
        rows = Rows()
        book = prices()
        for seq, subject, data in batch:
            rows.add(project(seq, subject, data, book))
        if pending is not None:
            await pending
        pending = loop.run_in_executor(executor, store.apply, rows)
        total += rows.count
        if on_batch is not None:
            await on_batch(rows)
    if pending is not None:
        await pending
    return total
