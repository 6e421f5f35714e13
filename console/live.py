"""The live feed of the console: one core-NATS subscription per edge process to the facts as
they are published (``llm.response.>``, ``provider.circuit.>``, ``alert.>``, ``admin.>``),
fanned out to every open ``/admin/api/events`` stream (SSE). Facts go to JetStream subjects,
and a plain subscriber gets them at the same moment the stream stores them: no database poll.

A slow browser does not hold anything up: each stream has a bounded queue (events beyond it
are dropped for that stream, and it is told so with a ``lag`` event).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from schemas.events import (
    AdminAction,
    AlertFired,
    AlertResolved,
    CircuitChanged,
    RequestCompleted,
    decode_event,
)

__all__ = ["Hub", "Listener", "request_view"]

log = logging.getLogger("codeswitch.console")

SUBJECTS = ("llm.response.>", "provider.circuit.>", "alert.>", "admin.>")
QUEUE = 1000


def request_view(e: RequestCompleted) -> dict[str, Any]:
    """What the dashboard and the request log show of one request (never a body)."""
    u = e.usage
    ok = e.status < 400 and e.error_class is None and e.delivered
    return {"ts": e.ts, "request_id": e.request_id, "dialect": e.dialect, "model": e.model,
            "provider": e.provider, "status": e.status, "ok": ok,
            "error_class": e.error_class, "duration_ms": round(e.duration_ms, 1),
            "ttfb_ms": e.ttfb_ms, "stream": e.stream,
            "input_tokens": u.total_input_tokens if u else 0,
            "output_tokens": u.output_tokens if u else 0,
            "total_tokens": u.total_tokens if u else 0,
            "user": e.user_id or e.user, "user_id": e.user_id, "session": e.session,
            "client": e.client, "source": e.source}


class Listener:
    def __init__(self, user_id: str | None) -> None:
        self.user_id = user_id  # None: sees everything (an admin)
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(QUEUE)
        self.dropped = 0

    def offer(self, kind: str, data: dict[str, Any], user_id: str | None) -> None:
        if self.user_id is not None and (kind != "request" or user_id != self.user_id):
            return
        try:
            self.queue.put_nowait((kind, data))
        except asyncio.QueueFull:
            self.dropped += 1


class Hub:
    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.listeners: set[Listener] = set()
        self._subs: list[Subscription] = []
        self._lock = asyncio.Lock()
        self.seen = 0

    async def _ensure(self) -> None:
        async with self._lock:
            if self._subs:
                return
            for subject in SUBJECTS:
                self._subs.append(await self.nc.subscribe(subject, cb=self._on))

    async def _on(self, msg: Any) -> None:
        if not self.listeners:
            return
        try:
            event = decode_event(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        self.seen += 1
        user_id: str | None = None
        if isinstance(event, RequestCompleted):
            if event.source == "recovered":  # an intent: the real fact (or none) follows
                return
            kind, data, user_id = "request", request_view(event), event.user_id
        elif isinstance(event, CircuitChanged):
            kind, data = "circuit", {"ts": event.ts, "provider": event.provider,
                                     "model": event.model, "state": event.state,
                                     "previous": event.previous}
        elif isinstance(event, AlertFired | AlertResolved):
            kind = "alert"
            data = {"ts": event.ts, "rule": event.rule,
                    "state": "firing" if isinstance(event, AlertFired) else "resolved"}
        elif isinstance(event, AdminAction):
            kind, data = "admin", {"ts": event.ts, "actor": event.actor,
                                   "action": event.action, "target": event.target}
        else:
            return
        for listener in list(self.listeners):
            listener.offer(kind, data, user_id)

    async def listen(self, user_id: str | None) -> Listener:
        await self._ensure()
        listener = Listener(user_id)
        self.listeners.add(listener)
        return listener

    def leave(self, listener: Listener) -> None:
        self.listeners.discard(listener)

    async def aclose(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
