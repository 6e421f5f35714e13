"""The edge's end of the reply stream: one wildcard subscription, one queue per request.

Besides the router's messages, a request's queue can receive three markers from here:
``DISCONNECTED`` (the HTTP client went away), ``PICKUP_TIMEOUT`` (no router took the request
in time) and ``ROUTER_LOST`` (the router that took it died, or stopped sending heartbeats).

Liveness, both ways:
- every ``ROUTER_CHECK_S`` the edge asks each router holding one of its requests
  (``cs.router.alive.<router>``, one request per router, not per request): "no responders"
  means that router died, and its requests get ``ROUTER_LOST`` at once (a stream's client sees
  its error event within about a second, not after the 15 s heartbeat rule);
- routers ask ``<prefix>.ping`` the same way, and cancel the upstream calls of an edge that
  died;
- the final message of an answer carries a reply subject: the edge answers b"1" when the
  request is still waiting here (the answer is delivered), b"0" when it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError

from schemas.envelope import KIND_ACCEPTED
from schemas.subjects import REPLY_PREFIX, ROUTER_ALIVE_PREFIX

__all__ = ["DISCONNECTED", "PICKUP_TIMEOUT", "ROUTER_LOST", "Dispatcher"]

DISCONNECTED = b""
PICKUP_TIMEOUT = b"\x00"
ROUTER_LOST = b"\x01"
# Routers heartbeat every 5 s; three missed beats mean the router is gone (or hung).
LOST_AFTER_S = 15.0
ROUTER_CHECK_S = 0.5


class Dispatcher:
    def __init__(self, nc: NATS, edge_id: str | None = None) -> None:
        self.nc = nc
        self.edge_id = edge_id or os.urandom(6).hex()
        self.prefix = f"{REPLY_PREFIX}.{self.edge_id}."
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._last: dict[str, float] = {}
        self.owner: dict[str, str] = {}  # request id -> the router working on it
        self._said: dict[str, None] = {}  # final messages answered "1" (insertion-ordered)
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(
            self.prefix + "*", cb=self._on_msg,
            pending_msgs_limit=1_000_000, pending_bytes_limit=512 * 1024 * 1024,
        )
        self._tasks = [asyncio.create_task(self._watch()),
                       asyncio.create_task(self._watch_routers())]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _on_msg(self, msg: Msg) -> None:
        rid = msg.subject[len(self.prefix):]
        queue = self._queues.get(rid)
        if queue is not None:
            data = msg.data
            self._last[rid] = asyncio.get_running_loop().time()
            if len(data) > 1 and data[0] == KIND_ACCEPTED:
                self.owner[rid] = data[1:].decode()
            queue.put_nowait(data)
        if msg.reply:  # a final message (or a router's ping): say whether it landed
            if queue is not None:
                word = b"1"
                # a router sends the final message again when our word did not reach it
                # (NATS restarting): it gets the same word, though the request may be done
                self._said[rid] = None
                if len(self._said) > 10_000:
                    del self._said[next(iter(self._said))]
            else:
                word = b"1" if rid == "ping" or rid in self._said else b"0"
            with contextlib.suppress(Exception):
                await self.nc.publish(msg.reply, word)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(LOST_AFTER_S / 3)
            now = loop.time()
            for rid, seen in list(self._last.items()):
                if now - seen > LOST_AFTER_S:
                    self._lost(rid)

    def _lost(self, rid: str) -> None:
        queue = self._queues.get(rid)
        if queue is not None:
            queue.put_nowait(ROUTER_LOST)
        self._last.pop(rid, None)
        self.owner.pop(rid, None)

    async def _watch_routers(self) -> None:
        nc = self.nc
        while True:
            await asyncio.sleep(ROUTER_CHECK_S)
            if not self.owner or not nc.is_connected:
                continue
            routers: dict[str, list[str]] = {}
            for rid, router in list(self.owner.items()):
                routers.setdefault(router, []).append(rid)

            async def check(router: str, rids: list[str]) -> None:
                try:
                    await nc.request(f"{ROUTER_ALIVE_PREFIX}.{router}", b"", timeout=1.0)
                except NoRespondersError:
                    for rid in rids:
                        if self.owner.get(rid) == router:
                            self._lost(rid)
                except Exception:
                    pass  # slow or NATS away: the heartbeat rule still applies

            await asyncio.gather(*(check(r, ids) for r, ids in routers.items()))

    def register(self, request_id: str, pickup_timeout: float) -> tuple[str, asyncio.Queue[bytes],
                                                                         asyncio.TimerHandle]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._queues[request_id] = queue
        timer = asyncio.get_running_loop().call_later(
            pickup_timeout, self._pickup_expired, request_id)
        return self.prefix + request_id, queue, timer

    def rearm(self, request_id: str, pickup_timeout: float) -> asyncio.TimerHandle:
        """A new pickup timer (the request was stored later than registered: resent)."""
        return asyncio.get_running_loop().call_later(
            pickup_timeout, self._pickup_expired, request_id)

    def _pickup_expired(self, request_id: str) -> None:
        queue = self._queues.get(request_id)
        if queue is not None and request_id not in self._last:
            queue.put_nowait(PICKUP_TIMEOUT)

    def unregister(self, request_id: str) -> None:
        self._queues.pop(request_id, None)
        self._last.pop(request_id, None)
        self.owner.pop(request_id, None)

    @property
    def in_flight(self) -> int:
        return len(self._queues)
