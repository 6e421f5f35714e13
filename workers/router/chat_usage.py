"""OpenAI Chat streams only report usage when the client asks (``stream_options.include_usage``).
For pass-through Chat streams whose client did not ask, the router asks on its behalf, so the
event log has the usage, and removes the extra usage chunk (``choices: []``) from what the client
receives, so the client sees exactly the stream it asked for."""

from __future__ import annotations

import msgspec

__all__ = ["UsageChunkFilter", "request_usage"]

_raw_obj = msgspec.json.Decoder(dict[str, msgspec.Raw])
_opts = msgspec.json.Decoder(dict[str, object])
_enc = msgspec.json.Encoder()


def request_usage(body: bytes) -> bytes | None:
    """The body with ``stream_options.include_usage = true`` added, or None when the client
    already asked for it (nothing to add, nothing to strip)."""
    try:
        doc = _raw_obj.decode(body)
    except RecursionError:
        return None
    raw = doc.get("stream_options")
    options: dict[str, object] = {}
    if raw is not None:
        decoded = _opts.decode(raw)
        if isinstance(decoded, dict):
            options = decoded
    if options.get("include_usage") is True:
        return None
    options["include_usage"] = True
    doc["stream_options"] = msgspec.Raw(_enc.encode(options))
    return _enc.encode(doc)


class UsageChunkFilter:
    """Drops the usage-only chunk from a Chat SSE stream; passes every other event unchanged.
    Only whole events are emitted; a partial event waits for its end."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._buf + chunk
        cut = max(data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n"))
        if cut < 0:
            self._buf = data
            return b""
        end = cut + (4 if data[cut:cut + 4] == b"\r\n\r\n" else 2)
        whole, self._buf = data[:end], data[end:]
        if b'"choices":[]' not in whole and b'"choices": []' not in whole:
            return whole
        events = whole.replace(b"\r\n", b"\n").split(b"\n\n")
        kept = [e for e in events if e and not (b'"usage"' in e and (
            b'"choices":[]' in e or b'"choices": []' in e))]
        return b"".join(e + b"\n\n" for e in kept)

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest
