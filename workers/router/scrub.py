"""Provider secrets never leave the router in an upstream's bytes.

Some upstreams echo the key they were sent (in an error body, an in-stream error, a header).
Every byte read from an upstream passes through a ``Scrubber`` before anything else sees it
(the usage tracker, the translators, the client, the facts, the body log), so a key becomes
``[key]`` everywhere at once. Streams are scrubbed incrementally: when a read ends with the
start of a secret, those few bytes are held back until the next read decides (a key split
across two reads is still caught); a read that ends otherwise is passed on whole, so SSE
events are never delayed in practice.
"""

from __future__ import annotations

__all__ = ["MASK", "Scrubber", "scrub_text"]

MASK = b"[key]"
_MIN_SECRET = 8  # shorter values are not keys (and would mangle ordinary text)


class Scrubber:
    __slots__ = ("_firsts", "_held", "_max", "secrets")

    def __init__(self, secrets: list[str] | tuple[str, ...]) -> None:
        uniq = {s.encode() for s in secrets if s and len(s) >= _MIN_SECRET}
        self.secrets = sorted(uniq, key=len, reverse=True)
        self._max = max((len(s) for s in self.secrets), default=0)
        self._firsts = {s[:1] for s in self.secrets}
        self._held = b""

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def whole(self, data: bytes) -> bytes:
        """Scrub a complete body."""
        for secret in self.secrets:
            if secret in data:
                data = data.replace(secret, MASK)
        return data

    def feed(self, chunk: bytes) -> bytes:
        """Scrub the next read of a stream; may hold back a possible secret's start."""
        if not self.secrets:
            return chunk
        data = self._held + chunk if self._held else chunk
        data = self.whole(data)
        keep = self._partial_tail(data)
        if keep:
            self._held = data[-keep:]
            return data[:-keep]
        self._held = b""
        return data

    def flush(self) -> bytes:
        """The end of the stream: whatever was held back is not a secret."""
        held, self._held = self._held, b""
        return held

    def _partial_tail(self, data: bytes) -> int:
        """Length of the longest suffix of ``data`` that is a proper prefix of a secret."""
        n = len(data)
        start = max(0, n - self._max + 1)
        best = 0
        for first in self._firsts:
            i = data.find(first, start)
            while i != -1:
                tail = data[i:]
                if any(s.startswith(tail) and len(s) > len(tail) for s in self.secrets):
                    best = max(best, n - i)
                    break
                i = data.find(first, i + 1)
        return best


def scrub_text(text: str, secrets: list[str] | tuple[str, ...]) -> str:
    """A string (an error message, a header value) with every secret masked."""
    for secret in secrets:
        if secret and len(secret) >= _MIN_SECRET and secret in text:
            text = text.replace(secret, MASK.decode())
    return text
