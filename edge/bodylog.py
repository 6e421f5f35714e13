"""The body log (``[gateway] body_log = true``, off by default, as in the original): each
request's body and the response exactly as the client received it, kept for a week in the
object store bucket ``cs_body_log`` under the request id, for debugging a client or a
translation. ``codeswitch body-log show <request id>`` shows one.

Only bodies: no header is kept, so no key or auth header reaches it (provider keys an upstream
echoes are scrubbed by the router before anything reaches the edge). Nothing here runs when the
setting is off: the request path only checks a boolean."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

__all__ = ["MAX_CAPTURE", "BodyCapture", "BodyLogEntry"]

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]

MAX_CAPTURE = 16 * 1024 * 1024  # per response; beyond it the entry says "truncated"


class BodyLogEntry(msgspec.Struct, kw_only=True):
    request_id: str
    ts: float
    dialect: str
    path: str
    model: str | None
    status: int
    provider: str | None
    request: str
    response: str
    response_truncated: bool = False


class BodyCapture:
    """An ASGI ``send`` that keeps a copy of the response it passes on."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            body = message.get("body") or b""
            if body:
                if self.size + len(body) <= MAX_CAPTURE:
                    self.chunks.append(body)
                    self.size += len(body)
                else:
                    self.truncated = True
        await self._send(message)

    def entry(self, *, request_id: str, dialect: str, path: str, model: str | None,
              provider: str | None, request: bytes) -> bytes:
        return msgspec.json.encode(BodyLogEntry(
            request_id=request_id, ts=time.time(), dialect=dialect, path=path, model=model,
            status=self.status, provider=provider,
            request=request.decode("utf-8", "replace"),
            response=b"".join(self.chunks).decode("utf-8", "replace"),
            response_truncated=self.truncated))
