"""The edge's HTTP server: uvicorn's httptools protocol with limits on what a client may hold.

uvicorn with ``http="httptools"`` has no limit on the size of a request head and no timeout
for receiving it, and only times out keep-alive connections after a response: a client could
send 32 MB of headers, or open connections and send nothing (or half a request), and hold
them and their memory for ever. ``LimitedHttpToolsProtocol`` adds (docs/hostile-input.md):

    max_header_bytes   request line + headers larger than this: 431 and close
    header_timeout     first byte of a request to its complete headers: 408 and close
    idle_timeout       a connection with no request in progress (a new one that never sends,
                       or a keep-alive one between requests) is closed after this
    max_connections    a connection above this gets a 503 and is closed at once

and ``read_body`` (what the app reads the body with) the last one:

    body_timeout       longest wait for the next chunk of a request body: 408 in the dialect

Responses the protocol writes itself (431, 408, 503) are JSON in the client's dialect when
the request path names one (``edge.routes``), and end the connection: the response, then a
half-close, then the socket is closed when the client closes its side or after ``LINGER``
seconds, reading and dropping what the client still sends meanwhile (closing a socket with
unread data sends a reset, which can destroy the response before the client reads it).

``make_config`` is the one place a uvicorn ``Config`` for the edge is built (the supervisor's
``run_edge`` and the tests).
"""

from __future__ import annotations

import asyncio
import dataclasses
import resource
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from edge.errors import EdgeError, render
from edge.routes import match_route

__all__ = [
    "DEFAULT_LIMITS",
    "LINGER",
    "ClientGone",
    "LimitedHttpToolsProtocol",
    "Limits",
    "body_timeout",
    "make_config",
    "read_body",
]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]

# Seconds a connection the server ends itself (431/408/503, or a response sent before the
# request body was read) stays half-closed, dropping what the client still sends.
LINGER = 2.0
# File descriptors kept for everything that is not a client connection (NATS, logs...).
_FD_RESERVE = 64
_EXT = "codeswitch.limits"


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """What one client connection may hold. Defaults are for coding CLIs and SDKs on a
    gateway they reuse connections to; docs/hostile-input.md says why each is what it is."""

    # Request line + headers, bytes. Claude Code, Codex and Gemini CLI send 1-3 KB; nginx's
    # largest default is 32 KB (4 x 8 KB buffers); Node refuses more than 16 KB.
    max_header_bytes: int = 64 * 1024
    # Seconds from the first byte of a request to the end of its headers. A client sends its
    # head in one write; only a slow-loris trickles it.
    header_timeout: float = 10.0
    # Seconds a connection may sit with no request in progress: after a response (keep-alive)
    # and after connecting. 75 s, as before: above the 60 s idle timeout of common load
    # balancers, so a proxy in front never reuses a connection the edge just closed.
    idle_timeout: float = 75.0
    # Seconds the edge waits for the next chunk of a request body (not for the whole body:
    # a large body on a slow link keeps going as long as it moves).
    body_timeout: float = 30.0
    # Open client connections. Above it a new connection gets a 503 and is closed. Lowered to
    # what RLIMIT_NOFILE allows (minus a reserve) when that is smaller.
    max_connections: int = 4096

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be at least 1")
        for name in ("header_timeout", "idle_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be positive")


class ClientGone(Exception):
    """The client disconnected while its request body was being read."""


DEFAULT_LIMITS = Limits()


def body_timeout(scope: MutableMapping[str, Any]) -> float:
    """The body timeout of the server that made ``scope`` (the ``Limits`` given to
    ``make_config``); the default one under another server."""
    ext = scope.get("extensions")
    limits = ext.get(_EXT) if ext else None
    return (limits if isinstance(limits, Limits) else DEFAULT_LIMITS).body_timeout


async def read_body(receive: Receive, limit: int, timeout: float) -> bytes:
    """The whole request body. Raises ``EdgeError`` 413 over ``limit`` bytes, ``EdgeError``
    408 when no chunk arrives for ``timeout`` seconds, ``ClientGone`` on a disconnect.

    One timer per request, moved on at each chunk (asyncio.timeout costs ~4x more per
    request; this is on every request's path)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        task.cancel()

    timer = loop.call_later(timeout, expire)
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise EdgeError(413, f"request body exceeds the gateway limit of "
                                    f"{limit} bytes", "request_too_large")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
            timer.cancel()
            timer = loop.call_later(timeout, expire)
    except asyncio.CancelledError:
        if not expired or task.uncancel() > 0:
            raise  # cancelled by someone else (a shutdown): not ours to swallow
        raise EdgeError(408, f"request body incomplete: nothing received for {timeout:g} s",
                        "request_timeout") from None
    finally:
        timer.cancel()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def drain_body(receive: Receive, limit: int, timeout: float,
                     total: float = 5.0) -> bool:
    """Read and drop the rest of a request body the app answers without (a refused key, a
    budget spent, an unknown path), so that its connection stays usable: answered while the
    body is still on its way, the connection must end (``on_response_complete`` below) and a
    client that sends its next request on it gets nothing back. True when the body ended;
    False past ``limit`` bytes, ``timeout`` seconds without a chunk, ``total`` seconds in all
    or a disconnect (the connection then ends after the answer, as before)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + total
    size = 0
    while True:
        try:
            message = await asyncio.wait_for(receive(), min(timeout, end - loop.time()))
        except TimeoutError:
            return False
        if message["type"] == "http.disconnect":
            return False
        size += len(message.get("body", b""))
        if size > limit:
            return False
        if not message.get("more_body", False):
            return True


# Where the parser is in the current request.
_IDLE, _HEAD, _BODY = 0, 1, 2


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``Limits`` (``make_config`` binds them in a
    subclass; this class carries the defaults)."""

    limits: Limits = DEFAULT_LIMITS
    _extensions: dict[str, Any] = {_EXT: DEFAULT_LIMITS}

    def __init__(self, config: uvicorn.Config, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.timeout_keep_alive = self.limits.idle_timeout  # type: ignore[assignment]
        self._phase = _IDLE
        self._head_bytes = 0
        self._heads_done = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._ending = False  # the server is ending this connection: input is dropped

    # -- connection -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.logger.debug("connection refused: %d open", len(self.connections) - 1)
            self._end(503, "too many open connections to the gateway; retry shortly",
                      extra=b"retry-after: 1\r\n")
            return
        # a connection that never sends anything is idle from the start
        self.timeout_keep_alive_task = self.loop.call_later(
            self.limits.idle_timeout, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._unset_keepalive_if_required()
        self._cancel_header_timer()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._ending:
            return  # lingering: drop it
        while data:
            if self._phase == _IDLE:
                # the first byte of a request: no longer idle, the header clock starts
                self._unset_keepalive_if_required()
                self._phase = _HEAD
                self._head_bytes = 0
            if self._phase != _HEAD:
                self._feed(data)
                break
            room = self.limits.max_header_bytes - self._head_bytes
            if len(data) <= room:
                self._head_bytes += len(data)
                self._feed(data)
                break
            # more than the head may still take: feed what fits, then see if the head ended
            heads = self._heads_done
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            self._feed(piece)
            if self._ending or self.transport.is_closing():
                return
            if self._heads_done == heads:
                self._end(431, f"request headers exceed the gateway limit of "
                          f"{self.limits.max_header_bytes} bytes")
                return
            if self._phase == _HEAD:  # a pipelined request began inside piece
                self._head_bytes = 0
        if self._phase == _HEAD and self._header_timer is None and not self._ending \
                and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.limits.header_timeout,
                                                      self._header_timeout)

    def _feed(self, data: bytes) -> None:
        """uvicorn's data_received without its keep-alive handling (ours is above)."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.debug(msg)
            self.send_400_response(msg)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    # -- parser callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _HEAD
        self.scope["extensions"] = self._extensions

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._heads_done += 1
        self._cancel_header_timer()
        self._unset_keepalive_if_required()  # a request is in progress: not idle
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = _IDLE
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        if self._phase == _BODY and self.cycle is not None and self.cycle.response_complete \
                and not self.pipeline and not self.transport.is_closing():
            # Answered before the request body was all read (401, 404, 408, 413...): the rest
            # of that body is of no use, and after a 408 it may never come. End the connection
            # rather than wait for it.
            self.server_state.total_requests += 1
            self._unset_keepalive_if_required()
            self.flow.resume_reading()
            self._linger_close()
            return
        super().on_response_complete()

    # -- timers and ending ------------------------------------------------------------------
    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._phase != _HEAD or self._ending or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined request's head behind a response still being sent: its clock
            # starts again once that response is done
            self._header_timer = self.loop.call_later(self.limits.header_timeout,
                                                      self._header_timeout)
            return
        self._end(408, f"request headers incomplete after {self.limits.header_timeout:g} s")

    def _end(self, status: int, message: str, extra: bytes = b"") -> None:
        """Answer ``status`` (unless a response is being sent on this connection) and end it."""
        self._cancel_header_timer()
        self._unset_keepalive_if_required()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # a response is being sent (a pipelined head broke the limit behind it): no room
            # for ours; the app sees a disconnect and its further sends are dropped
            cycle.disconnected = True
            cycle.message_event.set()
            self._ending = True
            self.transport.close()
            return
        body = render(_dialect_of(getattr(self, "url", b"")), status, message,
                      code=_CODES.get(status))
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n",
                 b"content-length: ", str(len(body)).encode(), b"\r\n",
                 extra, b"connection: close\r\n\r\n", body]
        self.transport.write(b"".join(head))
        self._linger_close()

    def _linger_close(self) -> None:
        """Half-close now; close when the client does or after ``LINGER`` seconds."""
        self._ending = True
        transport = self.transport
        if transport.is_closing():
            return
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except (OSError, RuntimeError):
                transport.close()
                return
            self._linger = self.loop.call_later(LINGER, transport.close)
        else:
            transport.close()


_CODES = {408: "request_timeout", 431: "headers_too_large", 503: "too_many_connections"}


def _dialect_of(url: bytes) -> str:
    """The dialect a request path names ('' when it names none: rendered as OpenAI's)."""
    try:
        path = url.split(b"?", 1)[0].decode("latin-1")
    except (AttributeError, TypeError):
        return ""
    for method in ("POST", "GET"):
        route = match_route(method, path)
        if route is not None and route.dialect:
            return route.dialect
    return ""


def _fd_limit() -> int | None:
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def make_config(app: Any, host: str, port: int, *, grace: float,
                limits: Limits | None = None, **kw: Any) -> uvicorn.Config:
    """The uvicorn ``Config`` for the edge: httptools with ``limits`` enforced, uvloop when
    installed, lifespan on, no access log. ``kw`` overrides or adds ``Config`` arguments."""
    limits = limits or Limits()
    fds = _fd_limit()
    if fds is not None and limits.max_connections > fds - _FD_RESERVE:
        limits = dataclasses.replace(limits, max_connections=max(1, fds - _FD_RESERVE))
    protocol = type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,),
                    {"limits": limits, "_extensions": {_EXT: limits}})
    options: dict[str, Any] = {
        "loop": "uvloop" if _has_uvloop() else "asyncio",
        "lifespan": "on",
        "access_log": False,
        "log_level": "warning",
        "timeout_graceful_shutdown": int(grace),
        "timeout_keep_alive": max(1, round(limits.idle_timeout)),  # ours is limits.idle_timeout
        "backlog": 4096,
    }
    options.update(kw)
    return uvicorn.Config(app, host=host, port=port, http=protocol, **options)


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True

