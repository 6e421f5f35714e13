"""Incremental Server-Sent Events decoding (WHATWG HTML "event stream interpretation").

``SSEDecoder.feed(bytes)`` returns the events completed by that chunk; ``flush()`` ends the
stream. Bytes are buffered and only complete lines are decoded, so a UTF-8 character split
across two network reads reassembles byte-exact. Lines end in CRLF, LF or CR (a CR at the end
of one chunk followed by LF at the start of the next is one line ending). ``data:`` with or
without the one optional space, several ``data`` lines joined with "\\n", ``:`` comments
ignored, ``event``/``id`` fields, ``retry`` and unknown fields ignored; an event is dispatched on
a blank line, and only if it had at least one ``data`` line.

One deliberate deviation: ``flush()`` dispatches an event that has data but no closing blank
line (the spec discards it). Upstreams that close right after their last event exist, and the
caller decides whether the stream was complete from the events themselves, not from framing.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SSEDecoder", "SSEEvent", "encode_event"]


class SSEEvent(NamedTuple):
    event: str | None
    data: str
    id: str | None


class SSEDecoder:
    """Bytes in, ``SSEEvent`` out; keeps partial lines between calls."""

    __slots__ = ("_buf", "_data", "_event", "_id", "_skip_lf")

    def __init__(self) -> None:
        self._buf = b""
        self._skip_lf = False
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        if not data:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
                if not data:
                    return []
        if self._buf:
            data = self._buf + data
        lines = data.splitlines()
        last = data[-1:]
        if last == b"\r":
            # Could be the first half of a CRLF: drop a leading LF of the next chunk.
            self._skip_lf = True
            self._buf = b""
        elif last == b"\n":
            self._buf = b""
        else:
            self._buf = lines.pop()
        return self._lines(lines)

    def flush(self) -> list[SSEEvent]:
        lines = [self._buf] if self._buf else []
        self._buf = b""
        self._skip_lf = False
        out = self._lines(lines)
        if self._data:
            out.append(self._dispatch())
        self._event = None
        return out

    def _lines(self, lines: list[bytes]) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        for line in lines:
            if not line:
                if self._data:
                    out.append(self._dispatch())
                else:
                    self._event = None
                continue
            if line[:5] == b"data:":
                value = line[6:] if line[5:6] == b" " else line[5:]
                self._data.append(value.decode("utf-8", "replace"))
                continue
            if line[:1] == b":":
                continue
            colon = line.find(b":")
            if colon < 0:
                name, value = line, b""
            else:
                name = line[:colon]
                value = line[colon + 2:] if line[colon + 1:colon + 2] == b" " else line[colon + 1:]
            if name == b"event":
                self._event = value.decode("utf-8", "replace")
            elif name == b"data":
                self._data.append(value.decode("utf-8", "replace"))
            elif name == b"id" and b"\x00" not in value:
                self._id = value.decode("utf-8", "replace")
        return out

    def _dispatch(self) -> SSEEvent:
        event = SSEEvent(self._event or None, "\n".join(self._data), self._id)
        self._data = []
        self._event = None
        return event


def encode_event(data: bytes, event: str | None = None) -> bytes:
    """One SSE event as bytes: ``event: <name>`` (if any), ``data: <data>``, blank line.

    ``data`` must be a single line (compact JSON is).
    """
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
