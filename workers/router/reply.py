"""The router's end of one request's reply stream (core NATS, kinds in schemas/envelope.py).

The final message (``E`` or ``F``) carries a NATS reply subject (``_INBOX.csack.<router>.<id>``)
so the edge can say whether the answer reached it; ``delivered()`` waits for that word."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from schemas.envelope import KIND_ACCEPTED, KIND_DATA, KIND_END, KIND_FULL, KIND_START, ReplyStart

__all__ = ["ACK_PREFIX", "Reply"]

ACK_PREFIX = "_INBOX.csack"
ASK_EDGE_AFTER_S = 1.0  # no word from the edge this long after the final message: is it there?
_enc = msgspec.json.Encoder()
_A = bytes([KIND_ACCEPTED])
_D = bytes([KIND_DATA])
_E = bytes([KIND_END])
_F = bytes([KIND_FULL])
_S = bytes([KIND_START])


class Reply:
    __slots__ = ("_acks", "_final", "_last", "before_final", "nc", "rid", "route", "router",
                 "seq", "subject")

    def __init__(self, nc: NATS, subject: str, *, router: str | None = None, rid: str = "",
                 acks: dict[str, asyncio.Future[bool | None]] | None = None) -> None:
        self.nc = nc
        self.subject = subject
        self.router = router
        self.rid = rid
        self.seq = 0
        self.route: str | None = None  # the route rule that chose the providers, if any
        self._acks = acks
        self._final: asyncio.Future[bool | None] | None = None
        self._last = b""  # the final message, for a resend when the edge's word is lost
        # called just before the final message leaves (the router writes what was served to
        # its outbox, so a kill between the answer and its fact still records it as served)
        self.before_final: Callable[[], None] | None = None

    async def accepted(self) -> None:
        await self.nc.publish(self.subject, _A + (self.router or "").encode())

    async def start(self, start_json: bytes, data: bytes = b"") -> None:
        """The answer's start and its first bytes, in one message."""
        await self.nc.publish(self.subject, _S + start_json + b"\n" + data)

    async def data(self, data: bytes) -> None:
        self.seq += 1
        await self.nc.publish(self.subject, _D + self.seq.to_bytes(4, "big") + data)

    async def end(self) -> None:
        if self.before_final is not None:
            self.before_final()
        self.seq += 1
        self._last = _E + self.seq.to_bytes(4, "big")
        await self.nc.publish(self.subject, self._last, reply=self._expect_ack())

    async def full(self, start: ReplyStart, data: bytes) -> None:
        """A whole answer: one message when it fits, else start, data chunks, end."""
        if self.router and start.router is None:
            start = msgspec.structs.replace(start, router=self.router)
        if self.route and start.route is None:
            start = msgspec.structs.replace(start, route=self.route)
        head = _enc.encode(start)
        if len(data) + len(head) + 64 < self.nc.max_payload:
            if self.before_final is not None:
                self.before_final()
            self._last = _F + head + b"\n" + data
            await self.nc.publish(self.subject, self._last, reply=self._expect_ack())
            return
        step = self.nc.max_payload - 1024
        await self.start(head)
        for i in range(0, len(data), step):
            await self.data(data[i:i + step])
        await self.end()

    def _expect_ack(self) -> str:
        if self._acks is None or not self.router:
            return ""
        self._final = asyncio.get_running_loop().create_future()
        self._acks[self.rid] = self._final
        return f"{ACK_PREFIX}.{self.router}.{self.rid}"

    @property
    def finished(self) -> bool:
        """The final message was sent."""
        return self._final is not None

    async def delivered(self, timeout: float = 5.0, resends: int = 2) -> bool | None:
        """True: the edge took the answer; False: the edge is gone or no longer waits for it;
        None: no final message was sent, or no word within ``timeout`` (NATS away).

        The word usually comes within milliseconds; without it after ``ASK_EDGE_AFTER_S`` the
        edge is asked whether it is there at all (an edge killed after taking the final message
        never answers: its request is recorded as not delivered within about a second, not
        after the whole ``timeout``). Core NATS drops what is in flight when a server restarts:
        with no word in time, the final message is sent again (``resends`` times; the edge
        gives a repeated final message of a request the word it gave the first,
        ``edge/relay.py``), so a client whose answer's last message was lost gets it instead
        of waiting for the edge's 15 s rule."""
        if self._final is None:
            return None
        try:
            first = min(ASK_EDGE_AFTER_S, timeout)
            word = await self._wait(first)
            if word is None:
                if not await self._edge_there():
                    return False
                word = await self._wait(timeout - first)
            while word is None and resends > 0 and self._last and self._acks is not None:
                resends -= 1
                if not await self._edge_there():
                    return False  # the edge is gone: the answer did not reach its client
                try:
                    await self.nc.publish(self.subject, self._last, reply=self._expect_ack())
                except Exception:
                    return None
                word = await self._wait(timeout)
            return word
        finally:
            if self._acks is not None:
                self._acks.pop(self.rid, None)

    async def _edge_there(self) -> bool:
        """False only when NATS says nobody serves the edge's reply subjects; an unanswered
        ping (NATS away, a busy edge) is no verdict."""
        ping = self.subject.rsplit(".", 1)[0] + ".ping"  # the edge's reply subscription answers
        try:
            await self.nc.request(ping, b"", timeout=1.0)
        except NoRespondersError:
            return False
        except Exception:
            pass
        return True

    async def _wait(self, timeout: float) -> bool | None:
        """The edge's word, or None after ``timeout`` (the future stays open for a later word;
        ``asyncio.wait`` on a future starts no task)."""
        fut = self._final
        if fut is None:
            return None
        if not fut.done() and timeout > 0:
            await asyncio.wait((fut,), timeout=timeout)
        return fut.result() if fut.done() else None


