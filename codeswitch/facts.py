"""Publishing facts to the event log off the request path.

``FactPublisher.emit`` never blocks and never raises: events go into an in-memory queue that a
background task publishes to JetStream with ``Nats-Msg-Id`` = event id (so a retry after a lost
ack is de-duplicated by the server). While NATS is away the queue holds them and the task keeps
retrying; nothing accepted is dropped unless the process dies or the queue bound is reached
(logged loudly).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from nats.aio.client import Client as NATS

from schemas.events import Event, encode_event

__all__ = ["FactPublisher"]

log = logging.getLogger("codeswitch.facts")


class FactPublisher:
    def __init__(self, nc: NATS, *, max_queue: int = 200_000, linger: float = 0.02) -> None:
        self._js = nc.jetstream()
        self._queue: deque[tuple[str, str, bytes]] = deque()
        self._max = max_queue
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._linger = linger  # wait this long to batch: fewer wake-ups at low load
        self.published = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fact-publisher")

    def emit(self, subject: str, event: Event) -> None:
        if len(self._queue) >= self._max:
            log.error("event queue full (%d): dropping %s %s", self._max, subject, event.id)
            return
        self._queue.append((subject, event.id, encode_event(event)))
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                if self._linger and not self._closing:
                    await asyncio.sleep(self._linger)
                continue
            batch = [self._queue[i] for i in range(min(len(self._queue), 256))]
            try:
                acks = [
                    self._js.publish(subject, data, headers={"Nats-Msg-Id": event_id},
                                     timeout=5.0)
                    for subject, event_id, data in batch
                ]
                await asyncio.gather(*acks)
            except Exception as exc:  # NATS away or slow: keep the events and retry
                log.warning("publishing %d events failed (%s); retrying", len(batch), exc)
                await asyncio.sleep(0.5)
                continue
            for _ in batch:
                self._queue.popleft()
            self.published += len(batch)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Flush what is queued (bounded by ``timeout``), then stop."""
        self._closing = True
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            log.error("%d events not published at shutdown", len(self._queue))
            self._task.cancel()
