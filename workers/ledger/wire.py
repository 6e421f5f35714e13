"""The ledger's replies on the wire: large answers (a year of hourly series, a long request
log) are zlib-compressed, and an answer that would still exceed the NATS server's
``max_payload`` (1 MB by default on an operator's server) becomes a clear error instead of a
request that times out. Pure: the service and every client share it."""

from __future__ import annotations

import zlib
from typing import Any

import msgspec

__all__ = ["COMPRESS_ABOVE", "ENCODING_HEADER", "decode_reply", "encode_reply"]

ENCODING_HEADER = "Cs-Encoding"
COMPRESS_ABOVE = 64 * 1024  # smaller answers go as plain JSON (readable with `nats req`)
_HEADROOM = 1024  # NATS headers and protocol framing

_enc = msgspec.json.Encoder()


def encode_reply(body: dict[str, Any], max_payload: int) -> tuple[bytes, dict[str, str] | None]:
    """The bytes (and headers) to send for ``body`` under ``max_payload``."""
    data = _enc.encode(body)
    if len(data) <= COMPRESS_ABOVE:
        return data, None
    packed = zlib.compress(data, 6)
    if len(packed) <= max_payload - _HEADROOM:
        return packed, {ENCODING_HEADER: "zlib"}
    error = {"ok": False, "error": (
        f"the answer is {len(data) / 1e6:.1f} MB ({len(packed) / 1e6:.1f} MB compressed), over "
        f"this NATS server's max_payload of {max_payload / 1e6:.1f} MB: narrow the time range "
        "or the limit, or raise max_payload")}
    return _enc.encode(error), None


def decode_reply(data: bytes, headers: dict[str, str] | None) -> Any:
    """The JSON body of a ledger reply, whichever way it was sent."""
    if headers and headers.get(ENCODING_HEADER) == "zlib":
        data = zlib.decompress(data)
    return msgspec.json.decode(data)
