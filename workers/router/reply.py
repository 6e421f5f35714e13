"""The router's end of one request's reply stream (core NATS, kinds in schemas/envelope.py)."""

from __future__ import annotations

import msgspec
from nats.aio.client import Client as NATS

from schemas.envelope import KIND_ACCEPTED, KIND_DATA, KIND_END, KIND_FULL, KIND_START, ReplyStart

__all__ = ["Reply"]

_enc = msgspec.json.Encoder()
_A = bytes([KIND_ACCEPTED])
_D = bytes([KIND_DATA])
_E = bytes([KIND_END])
_F = bytes([KIND_FULL])
_S = bytes([KIND_START])


class Reply:
    __slots__ = ("nc", "subject")

    def __init__(self, nc: NATS, subject: str) -> None:
        self.nc = nc
        self.subject = subject

    async def accepted(self) -> None:
        await self.nc.publish(self.subject, _A)

    async def start(self, start_json: bytes, data: bytes = b"") -> None:
        """The answer's start and its first bytes, in one message."""
        await self.nc.publish(self.subject, _S + start_json + b"\n" + data)

    async def data(self, data: bytes) -> None:
        await self.nc.publish(self.subject, _D + data)

    async def end(self) -> None:
        await self.nc.publish(self.subject, _E)

    async def full(self, start: ReplyStart, data: bytes) -> None:
        """A whole answer: one message when it fits, else start, data chunks, end."""
        head = _enc.encode(start)
        if len(data) + len(head) + 64 < self.nc.max_payload:
            await self.nc.publish(self.subject, _F + head + b"\n" + data)
            return
        step = self.nc.max_payload - 1024
        await self.start(head)
        for i in range(0, len(data), step):
            await self.data(data[i:i + step])
        await self.end()
