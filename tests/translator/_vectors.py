"""Access to the recorded payloads in tests/fixtures/vectors (each has a .src sidecar)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).parent.parent / "fixtures" / "vectors"


def raw(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def doc(name: str) -> Any:
    return json.loads(raw(name))


def sse_wire(name: str) -> bytes:
    """A recorded stream as it is on the wire. Some fixture stores (prism) keep one
    ``data:`` line per event without the blank separator line; restore it."""
    body = raw(name)
    if b"\n\n" not in body and b"\r\n\r\n" not in body:
        body = body.replace(b"\n", b"\n\n")
        if not body.endswith(b"\n\n"):
            body += b"\n\n"
    elif not body.endswith(b"\n\n"):
        body = body.rstrip(b"\n") + b"\n\n"
    return body


def chunked(body: bytes, size: int) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]
