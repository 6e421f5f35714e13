"""The edge's end of the reply stream: one wildcard subscription, one queue per request.

Besides the router's messages, a request's queue can receive three markers from here:
``DISCONNECTED`` (the HTTP client went away), ``PICKUP_TIMEOUT`` (no router took the request
in time) and ``ROUTER_LOST`` (the router that took it stopped sending heartbeats).
"""

from __future__ import annotations

import asyncio
import os

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas.subjects import REPLY_PREFIX

__all__ = ["DISCONNECTED", "PICKUP_TIMEOUT", "ROUTER_LOST", "Dispatcher"]

DISCONNECTED = b""
PICKUP_TIMEOUT = b"\x00"
ROUTER_LOST = b"\x01"
# Routers heartbeat every 5 s; three missed beats mean the router is gone.
LOST_AFTER_S = 15.0


class Dispatcher:
    def __init__(self, nc: NATS, edge_id: str | None = None) -> None:
        self.nc = nc
        self.edge_id = edge_id or os.urandom(6).hex()
        self.prefix = f"{REPLY_PREFIX}.{self.edge_id}."
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._last: dict[str, float] = {}
        self._sub: Subscription | None = None
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(
            self.prefix + "*", cb=self._on_msg,
            pending_msgs_limit=1_000_000, pending_bytes_limit=512 * 1024 * 1024,
        )
        self._watchdog = asyncio.create_task(self._watch())

    def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

    async def _on_msg(self, msg: Msg) -> None:
        rid = msg.subject[len(self.prefix):]
        queue = self._queues.get(rid)
        if queue is not None:
            self._last[rid] = asyncio.get_running_loop().time()
            queue.put_nowait(msg.data)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(LOST_AFTER_S / 3)
            now = loop.time()
            for rid, seen in list(self._last.items()):
                if now - seen > LOST_AFTER_S:
                    queue = self._queues.get(rid)
                    if queue is not None:
                        queue.put_nowait(ROUTER_LOST)
                    self._last.pop(rid, None)

    def register(self, request_id: str, pickup_timeout: float) -> tuple[str, asyncio.Queue[bytes],
                                                                         asyncio.TimerHandle]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._queues[request_id] = queue
        timer = asyncio.get_running_loop().call_later(
            pickup_timeout, self._pickup_expired, request_id)
        return self.prefix + request_id, queue, timer

    def _pickup_expired(self, request_id: str) -> None:
        queue = self._queues.get(request_id)
        if queue is not None and request_id not in self._last:
            queue.put_nowait(PICKUP_TIMEOUT)

    def unregister(self, request_id: str) -> None:
        self._queues.pop(request_id, None)
        self._last.pop(request_id, None)

    @property
    def in_flight(self) -> int:
        return len(self._queues)
