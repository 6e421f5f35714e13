"""Alert test helpers: recorded sequences and a local webhook receiver (a real HTTP server on
port 0 in a thread)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas.events import Event, decode_event

EVENTS = Path(__file__).parent.parent / "fixtures" / "events"


def load_events(name: str, shift: float = 0.0) -> list[Event]:
    """A recorded sequence, with every ``ts`` moved by ``shift`` seconds."""
    out = []
    for line in (EVENTS / name).read_bytes().splitlines():
        if line.strip():
            event = decode_event(line)
            out.append(msgspec.structs.replace(event, ts=event.ts + shift))
    return out


class Receiver:
    """Records every POST; ``fail[path]`` answers that many 500s first, ``status[path]`` pins
    a status for good."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail: dict[str, int] = {}
        self.status: dict[str, int] = {}
        self.reply: dict[str, bytes] = {}
        self.delay: dict[str, float] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    path = self.path.split("?", 1)[0]
                    receiver.requests.append(
                        {"path": self.path, "headers": dict(self.headers),
                         "json": json.loads(body or b"null")}
                    )
                    code = receiver.status.get(path, 200)
                    if receiver.fail.get(path, 0) > 0:
                        receiver.fail[path] -= 1
                        code = 500
                    reply = receiver.reply.get(path, b'{"ok":true}')
                    delay = receiver.delay.get(path, 0.0)
                if delay:
                    time.sleep(delay)
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def bodies(self, path: str = "/hook") -> list[Any]:
        with self.lock:
            return [r["json"] for r in self.requests if r["path"].split("?", 1)[0] == path]


def serve_receiver() -> Iterator[Receiver]:
    """A started receiver, shut down afterwards (the fixtures here and in tests/console)."""
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve_receiver()
