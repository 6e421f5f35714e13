"""Gemini's ``:streamGenerateContent`` without ``alt=sse`` answers with one JSON array streamed
element by element (``[{...},\\r\\n{...}]``). The translator speaks SSE; this re-frames its
``data:`` events as that array for clients that did not ask for SSE."""

from __future__ import annotations

from workers.translator.sse import SSEDecoder

__all__ = ["ArrayFramer", "wants_sse"]


def wants_sse(query: str) -> bool:
    return any(part == "alt=sse" for part in query.split("&"))


class ArrayFramer:
    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._count = 0

    def _frame(self, events: list) -> bytes:  # type: ignore[type-arg]
        out = []
        for ev in events:
            if not ev.data or ev.data == "[DONE]":
                continue
            out.append(("[" if self._count == 0 else ",\r\n") + ev.data)
            self._count += 1
        return "".join(out).encode()

    def feed(self, chunk: bytes) -> bytes:
        return self._frame(self._sse.feed(chunk))

    def close(self) -> bytes:
        tail = self._frame(self._sse.flush())
        return tail + (b"]" if self._count else b"[]")
