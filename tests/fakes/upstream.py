"""Fake upstream LLM providers speaking the four wire dialects, for end-to-end tests.

``FakeUpstream(dialect)`` serves a raw ASGI app under uvicorn in a background thread (own event
loop, free port on 127.0.0.1). Answers are modelled on the recorded vectors in
``tests/fixtures/vectors`` (shapes, event grammar, default text and chunking, tool calls), with the
request's model echoed and the usage fixed to ``FAKE_USAGE[dialect]`` so tests can assert it.

Endpoints (the fake of one dialect answers 404, in its own error envelope, to the others):

    anthropic         POST /v1/messages (stream per body.stream), POST /v1/messages/count_tokens,
                      GET /v1/models
    openai-chat       POST /v1/chat/completions (stream per body.stream; usage tail chunk only
                      with stream_options.include_usage; ends with ``data: [DONE]``), GET /v1/models
    openai-responses  POST /v1/responses (stream per body.stream), GET /v1/models
    gemini            POST /{v1beta,v1}/models/{m}:generateContent, :streamGenerateContent (with
                      ``alt=sse``: data-only SSE, no terminator; without: one JSON array streamed
                      element by element), :countTokens, GET /{v1beta,v1}/models

Faults are driven by ``Behavior``: queue them with ``push()`` (FIFO, one per request to a POST
endpoint; GET /models and unknown paths never consume one), otherwise ``default`` applies.

Stream "events" (what ``cut_after``, ``stream_error_after`` and ``chunk_delay`` count) are SSE
events as sent, pings and ``[DONE]`` included; for a Gemini JSON-array stream, array elements.
For a non-streaming answer ``cut_after=N`` sends the headers (full content-length) and the first
N bytes of the body, then closes the connection.

Per-request behaviours without a FIFO (concurrent load): set ``fake.chooser`` to a function of
the ``Received`` request returning a ``Behavior`` (or None for the queue/default); the chaos
harness keys it on a tag in the prompt text.

A wrong key: with ``fake.require_key`` set, every request (the model list included) carrying
another key gets the dialect's 401.

Secret echo (for leak tests): ``Behavior(echo_key=True)`` sends the provider key the fake received
(``Received.api_key``: x-api-key, ``Authorization: Bearer``, x-goog-api-key or ``?key=``) back in
response headers (``x-echo-api-key`` and inside the dialect's request-id header), in the message
of error bodies (any ``status`` >= 400) and in the message of in-stream errors
(``stream_error_after``). ``split_key=True`` sends the bytes holding the key in two writes
``split_delay`` apart, the boundary in the middle of the key, so the gateway reads it in two
pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import uvicorn

from schemas.errors import error_body, stream_error

__all__ = [
    "DEFAULT_CHUNKS",
    "DEFAULT_TEXT",
    "DIALECTS",
    "FAKE_COUNT_TOKENS",
    "FAKE_TOOL_CALLS",
    "FAKE_USAGE",
    "STREAM_ERROR",
    "Behavior",
    "FakeUpstream",
    "Received",
    "numbered_chunks",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

VECTORS = Path(__file__).resolve().parent.parent / "fixtures" / "vectors"
DIALECTS = ("anthropic", "openai-chat", "openai-responses", "gemini")

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


def _dumps(obj: Any) -> bytes:
    return _enc.encode(obj)


# --------------------------------------------------------------------------- vectors


def _vector(name: str) -> str:
    return (VECTORS / name).read_text(encoding="utf-8")


def _sse_data(name: str) -> list[Any]:
    """The JSON payloads of a recorded SSE vector, in order (``[DONE]`` skipped)."""
    out: list[Any] = []
    for line in _vector(name).splitlines():
        if line.startswith("data:"):
            payload = line[5:].strip()
            if payload and payload != "[DONE]":
                out.append(_dec.decode(payload))
    return out


def _load_default_chunks() -> dict[str, list[str]]:
    anthropic = [
        e["delta"]["text"]
        for e in _sse_data("anthropic_stream_text.sse")
        if e.get("type") == "content_block_delta" and e["delta"].get("type") == "text_delta"
    ]
    chat = [
        c["choices"][0]["delta"]["content"]
        for c in _sse_data("openai_chat_stream_include_usage.sse")
        if c["choices"] and c["choices"][0]["delta"].get("content")
    ]
    responses = [
        e["delta"]
        for e in _sse_data("openai_responses_stream_text.sse")
        if e.get("type") == "response.output_text.delta"
    ]
    gemini = [
        p["text"]
        for c in _sse_data("gemini_stream_text.sse")
        for p in c["candidates"][0]["content"]["parts"]
        if "text" in p
    ]
    return {"anthropic": anthropic, "openai-chat": chat, "openai-responses": responses,
            "gemini": gemini}


def _split_fragments(s: str, size: int = 9) -> list[str]:
    return [s[i:i + size] for i in range(0, len(s), size)] or [""]


def _load_tool_calls() -> dict[str, list[dict[str, Any]]]:
    """Parallel tool calls per dialect, from the recorded vectors.

    Each: ``id`` (what the client sees as the call id; None for Gemini), ``name``, ``arguments``
    (dict), ``arguments_json`` (the exact string streamed), ``fragments`` (how it is streamed),
    plus dialect extras (``item_id`` for Responses, ``thought_signature`` for Gemini).
    """
    anthropic = []
    doc = _dec.decode(_vector("anthropic_nonstream_parallel_tool_use_response.json"))
    for block in doc["content"]:
        args_json = _dumps(block["input"]).decode()
        anthropic.append({"id": block["id"], "name": block["name"], "arguments": block["input"],
                          "arguments_json": args_json,
                          "fragments": ["", *_split_fragments(args_json)]})

    chat: list[dict[str, Any]] = []
    for chunk in _sse_data("openai_chat_stream_parallel_tool_calls.sse"):
        for tc in chunk["choices"][0]["delta"].get("tool_calls") or []:
            if "id" in tc:
                chat.append({"id": tc["id"], "name": tc["function"]["name"], "fragments": []})
            elif tc["function"].get("arguments"):
                chat[tc["index"]]["fragments"].append(tc["function"]["arguments"])
    for call in chat:
        call["arguments_json"] = "".join(call["fragments"])
        call["arguments"] = _dec.decode(call["arguments_json"])

    responses: list[dict[str, Any]] = []
    for ev in _sse_data("openai_responses_stream_tool_call.sse"):
        if ev["type"] == "response.output_item.added":
            item = ev["item"]
            responses.append({"id": item["call_id"], "item_id": item["id"], "name": item["name"],
                              "fragments": []})
        elif ev["type"] == "response.function_call_arguments.delta":
            responses[ev["output_index"]]["fragments"].append(ev["delta"])
    for call in responses:
        call["arguments_json"] = "".join(call["fragments"])
        call["arguments"] = _dec.decode(call["arguments_json"])

    gemini = []
    for chunk in _sse_data("gemini_stream_parallel_tool_calls.sse"):
        for part in chunk["candidates"][0]["content"]["parts"]:
            if "functionCall" in part:
                fc = part["functionCall"]
                gemini.append({"id": None, "name": fc["name"], "arguments": fc["args"],
                               "arguments_json": _dumps(fc["args"]).decode(), "fragments": [],
                               "thought_signature": part.get("thoughtSignature")})
    return {"anthropic": anthropic, "openai-chat": chat, "openai-responses": responses,
            "gemini": gemini}


DEFAULT_CHUNKS: dict[str, list[str]] = _load_default_chunks()
"""The text deltas each fake streams by default (taken from the recorded stream vectors)."""

DEFAULT_TEXT: dict[str, str] = {d: "".join(c) for d, c in DEFAULT_CHUNKS.items()}
"""The answer text each fake gives by default, streaming or not."""

FAKE_TOOL_CALLS: dict[str, list[dict[str, Any]]] = _load_tool_calls()
"""The tool calls answered with ``Behavior(tool_call=True)`` (see ``_load_tool_calls``)."""

FAKE_USAGE: dict[str, dict[str, Any]] = {
    # Anthropic: message_start carries input + cache fields (output_tokens 1); message_delta
    # repeats all of it cumulatively (newer-stream style), so the final usage is exactly this.
    "anthropic": {
        "input_tokens": 25,
        "cache_creation_input_tokens": 7,
        "cache_read_input_tokens": 11,
        "output_tokens": 15,
    },
    "openai-chat": {
        "prompt_tokens": 19,
        "completion_tokens": 10,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 3,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "openai-responses": {
        "input_tokens": 36,
        "input_tokens_details": {"cached_tokens": 5},
        "output_tokens": 87,
        "output_tokens_details": {"reasoning_tokens": 6},
        "total_tokens": 123,
    },
    # Gemini: cachedContentTokenCount is included in promptTokenCount; thoughtsTokenCount is
    # separate from candidatesTokenCount; total = prompt + candidates + thoughts.
    "gemini": {
        "promptTokenCount": 21,
        "candidatesTokenCount": 47,
        "totalTokenCount": 77,
        "cachedContentTokenCount": 8,
        "thoughtsTokenCount": 9,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 21}],
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 8}],
        "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 47}],
    },
}
"""The exact raw usage object each fake reports (final usage of a stream, or the JSON answer)."""

_GEMINI_PROMPT_USAGE = {
    "promptTokenCount": 21,
    "totalTokenCount": 21,
    "cachedContentTokenCount": 8,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 21}],
    "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 8}],
}

FAKE_COUNT_TOKENS = 42
"""What Anthropic count_tokens (input_tokens) and Gemini countTokens (totalTokens) answer."""

STREAM_ERROR: dict[str, tuple[int, str, str | None]] = {
    "anthropic": (529, "Overloaded", None),
    "openai-chat": (500, "The server had an error while processing your request.", None),
    "openai-responses": (429, "Rate limit reached for requests (fake upstream).",
                         "rate_limit_exceeded"),
    "gemini": (503, "The model is overloaded. Please try again later.", None),
}
"""(status, message, code) of the in-stream error sent by ``stream_error_after``."""

_ERROR_MESSAGES = {
    400: "Invalid request (fake upstream).",
    401: "Invalid API key (fake upstream).",
    403: "Permission denied (fake upstream).",
    404: "Not found (fake upstream).",
    408: "Request timed out (fake upstream).",
    413: "Request too large (fake upstream).",
    429: "Rate limit exceeded (fake upstream).",
    500: "Internal server error (fake upstream).",
    502: "Bad gateway (fake upstream).",
    503: "Service unavailable (fake upstream).",
    504: "Deadline exceeded (fake upstream).",
    529: "Overloaded",
}


def numbered_chunks(n: int) -> list[str]:
    """The deltas sent for ``Behavior(chunks=n)`` without text: "0", " 1", ..., " n-1"."""
    return [str(i) if i == 0 else f" {i}" for i in range(n)]


def _split_text(text: str, n: int | None) -> list[str]:
    if n is not None:
        if n <= 0:
            return []
        size = len(text)
        return [text[i * size // n:(i + 1) * size // n] for i in range(n)]
    parts = re.findall(r"\s*\S+", text)
    tail = text[len("".join(parts)):]
    if tail:
        parts.append(tail)
    return parts


# --------------------------------------------------------------------------- public types


class Behavior(msgspec.Struct):
    """How the fake answers one request. All fields optional; see the module docstring."""

    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = {}
    first_byte_delay: float = 0.0
    chunk_delay: float = 0.0
    hang: bool = False
    cut_after: int | None = None
    stall_after: int | None = None  # stream: after N events go silent (connection kept open)
    stream_error_after: int | None = None
    text: str | None = None
    tool_call: bool = False
    chunks: int | None = None
    echo_key: bool = False  # the received provider key in headers, error bodies, stream errors
    split_key: bool = False  # bytes holding the echoed key go out in two writes
    split_delay: float = 0.05


@dataclass
class Received:
    """One request as the fake saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any
    received_at: float
    disconnected_at: float | None = None
    """When the fake saw the client go away before the answer was complete."""
    completed: bool = False
    """The full answer was sent (for a stream: through its last event and end of body)."""
    status: int | None = None
    """HTTP status sent, None if none was (hang)."""
    cut: bool = False
    """The fake closed the connection itself (cut_after)."""
    events_sent: int = 0
    """Stream events sent (SSE events, or array elements for a Gemini JSON stream)."""
    behavior: Behavior | None = None

    @property
    def api_key(self) -> str | None:
        """The provider key this request carried (as each dialect's SDK sends it)."""
        h = self.headers
        key = h.get("x-api-key") or h.get("x-goog-api-key")
        if key:
            return key
        scheme, _, value = h.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return self.query.get("key") or None


@dataclass
class _Answer:
    chunks: list[str]
    tools: list[dict[str, Any]]
    with_text: bool


@dataclass
class _Plan:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    events: list[bytes] | None = None
    # stream error events (sent in place of event #stream_error_after), given the index.
    error_events: Callable[[int], list[bytes]] | None = None
    # Gemini JSON-array framing: elements joined with ",\r\n" inside [ ].
    array: bool = False
    # split_key: body and error-event bytes holding this are sent in two writes, cut inside it
    split_at: bytes | None = None


class _Conn:
    def __init__(self, rec: Received, send: Send, stopping: asyncio.Event,
                 notify: Callable[[], None]) -> None:
        self.rec = rec
        self.send = send
        self.stopping = stopping
        self.notify = notify
        self.gone = asyncio.Event()
        self.finishing = False
        self.cutting = False

    async def watch(self, receive: Receive) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                if not self.finishing and not self.cutting:
                    self.rec.disconnected_at = time.time()
                    self.notify()
                self.gone.set()
                return

    async def sleep(self, seconds: float) -> bool:
        """Sleep; True if the client went away (or the fake is stopping) meanwhile."""
        if seconds <= 0:
            return self.gone.is_set() or self.stopping.is_set()
        return await self._wait(seconds)

    async def _wait(self, timeout: float | None) -> bool:
        tasks = [asyncio.ensure_future(self.gone.wait()),
                 asyncio.ensure_future(self.stopping.wait())]
        try:
            await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
        return self.gone.is_set() or self.stopping.is_set()

    async def hang(self) -> None:
        await self._wait(None)

    async def cut(self) -> None:
        """Close the TCP connection without finishing the response."""
        self.cutting = True
        self.rec.cut = True
        self.notify()
        cycle = getattr(self.send, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if transport is None:  # not uvicorn's protocol: let the server close it
            raise _CutError
        for _ in range(500):
            if not transport.get_write_buffer_size():
                break
            await asyncio.sleep(0.002)
        transport.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.gone.wait(), 2.0)


class _CutError(Exception):
    pass


# --------------------------------------------------------------------------- the server


class FakeUpstream:
    """A fake provider of one dialect; see the module docstring."""

    def __init__(self, dialect: str) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}")
        self.dialect = dialect
        self.default = Behavior()
        self.requests: list[Received] = []
        self._queue: deque[Behavior] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self.port = 0
        # per-request behaviour (checked before the queue): None = use the queue/default
        self.chooser: Callable[[Received], Behavior | None] | None = None
        # when set, a request (the model list too) with another key gets the dialect's 401,
        # as a real provider answers a wrong key
        self.require_key: str | None = None

    # ---- lifecycle

    @property
    def base_url(self) -> str:
        root = f"http://127.0.0.1:{self.port}"
        return root + "/v1" if self.dialect.startswith("openai") else root

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self, log_config=None, lifespan="off", loop="asyncio",
                                http="httptools", timeout_graceful_shutdown=2,
                                timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        ready = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            ready.set()
            assert self._server is not None
            await self._server.serve(sockets=[sock])

        def run() -> None:
            asyncio.run(main())

        self._thread = threading.Thread(target=run, name=f"fake-{self.dialect}", daemon=True)
        self._thread.start()
        ready.wait(10)
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopping.set)
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(10)
        self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- control

    def push(self, *behaviors: Behavior) -> None:
        with self._cond:
            self._queue.extend(behaviors)

    def clear(self) -> None:
        """Drop queued behaviors and recorded requests."""
        with self._cond:
            self._queue.clear()
            self.requests.clear()

    def _next_behavior(self, rec: Received | None = None) -> Behavior:
        chooser = self.chooser
        if chooser is not None and rec is not None:
            chosen = chooser(rec)
            if chosen is not None:
                return chosen
        with self._cond:
            return self._queue.popleft() if self._queue else self.default

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_requests(self, n: int, timeout: float) -> bool:
        """Block until at least ``n`` requests were received."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.requests) >= n, timeout)

    def wait_disconnect(self, index: int, timeout: float) -> float | None:
        """Block until request ``index``'s client disconnected; its time.time(), or None."""
        def seen() -> bool:
            return len(self.requests) > index and self.requests[index].disconnected_at is not None

        with self._cond:
            if not self._cond.wait_for(seen, timeout):
                return None
            return self.requests[index].disconnected_at

    async def await_disconnect(self, index: int, timeout: float) -> float | None:
        """``wait_disconnect`` for async tests (runs in a worker thread)."""
        return await asyncio.to_thread(self.wait_disconnect, index, timeout)

    # ---- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            parsed: Any = _dec.decode(body) if body else None
        except msgspec.DecodeError:
            parsed = None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                               keep_blank_values=True))
        rec = Received(method=scope["method"], path=scope["path"], query=query, headers=headers,
                       body=body, json=parsed, received_at=time.time())
        with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()
        assert self._stopping is not None
        conn = _Conn(rec, send, self._stopping, self._notify)
        watcher = asyncio.create_task(conn.watch(receive))
        try:
            await self._handle(conn, scope, rec)
        finally:
            watcher.cancel()
            self._notify()

    async def _handle(self, conn: _Conn, scope: Scope, rec: Received) -> None:
        route = self._route(rec)
        if route is None:
            plan = self._error_plan(404, f"Unknown path {rec.method} {rec.path} (fake upstream).")
            await self._send_plan(conn, plan, Behavior())
            return
        kind, model = route
        if self.require_key is not None and rec.api_key != self.require_key:
            await self._send_plan(conn, self._error_plan(401, "invalid x-api-key"), Behavior())
            return
        if kind == "models":
            await self._send_plan(conn, _Plan(body=self._models_body()), Behavior())
            return
        behavior = self._next_behavior(rec)
        rec.behavior = behavior
        if behavior.first_byte_delay and await conn.sleep(behavior.first_byte_delay):
            await self._abandon(conn)
            return
        if behavior.hang:
            await conn.hang()
            await self._abandon(conn)
            return
        echo = rec.api_key if behavior.echo_key else None
        if behavior.status != 200:
            message = _ERROR_MESSAGES.get(behavior.status,
                                          f"Fake upstream error {behavior.status}.")
            if echo:
                message = f"{message} Incorrect API key provided: {echo}."
            plan = self._error_plan(behavior.status, message)
            if behavior.body is not None:
                plan.body = behavior.body
            elif kind == "stream" and self.dialect == "gemini" and rec.query.get("alt") != "sse":
                plan.body = b"[" + (plan.body or b"") + b"]"  # array-wrapped, as Google sends
        else:
            plan = self._answer_plan(kind, model, rec, behavior, echo)
            if behavior.body is not None:
                plan.body, plan.events, plan.array = behavior.body, None, False
        if echo:
            plan.headers["x-echo-api-key"] = echo
            for name in ("request-id", "x-request-id"):
                if name in plan.headers:
                    plan.headers[name] = f"req_{echo}"
            plan.split_at = echo.encode("latin-1") if behavior.split_key else None
        plan.headers.update({k.lower(): v for k, v in behavior.headers.items()})
        await self._send_plan(conn, plan, behavior)

    async def _abandon(self, conn: _Conn) -> None:
        """Client gone or fake stopping: close quietly without answering."""
        if not conn.gone.is_set():
            await conn.cut()

    # ---- sending

    async def _send_plan(self, conn: _Conn, plan: _Plan, behavior: Behavior) -> None:
        send, rec = conn.send, conn.rec
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in plan.headers.items()]
        if plan.events is None:
            body = plan.body or b""
            if not any(k == b"content-type" for k, _ in headers):
                headers.append((b"content-type", b"application/json"))
            headers.append((b"content-length", str(len(body)).encode()))
            rec.status = plan.status
            await send({"type": "http.response.start", "status": plan.status, "headers": headers})
            if behavior.cut_after is not None:
                await send({"type": "http.response.body", "body": body[:behavior.cut_after],
                            "more_body": True})
                await conn.cut()
                return
            head, tail = self._split(plan, body)
            if tail:
                await send({"type": "http.response.body", "body": head, "more_body": True})
                if await conn.sleep(behavior.split_delay):
                    await self._abandon(conn)
                    return
                body = tail
            conn.finishing = True
            rec.completed = True  # set first: the client may see the answer before send returns
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return

        rec.status = plan.status
        await send({"type": "http.response.start", "status": plan.status, "headers": headers})
        events = plan.events
        sent = 0
        for i, event in enumerate(events):
            if behavior.cut_after is not None and i >= behavior.cut_after:
                await conn.cut()
                return
            if behavior.stall_after is not None and i >= behavior.stall_after:
                await conn.hang()
                await self._abandon(conn)
                return
            if i and behavior.chunk_delay and await conn.sleep(behavior.chunk_delay):
                await self._abandon(conn)
                return
            if conn.gone.is_set() or conn.stopping.is_set():
                await self._abandon(conn)
                return
            if behavior.stream_error_after is not None and i >= behavior.stream_error_after:
                assert plan.error_events is not None
                for err in plan.error_events(i):
                    sent += 1
                    rec.events_sent = sent
                    head, tail = self._split(plan, self._frame(plan, err, sent - 1))
                    await send({"type": "http.response.body", "body": head, "more_body": True})
                    if tail:
                        if await conn.sleep(behavior.split_delay):
                            await self._abandon(conn)
                            return
                        await send({"type": "http.response.body", "body": tail,
                                    "more_body": True})
                break
            sent += 1
            rec.events_sent = sent
            await send({"type": "http.response.body", "body": self._frame(plan, event, sent - 1),
                        "more_body": True})
        else:
            if behavior.cut_after is not None:
                await conn.cut()
                return
        conn.finishing = True
        rec.completed = True
        await send({"type": "http.response.body", "body": b"]" if plan.array else b"",
                    "more_body": False})

    @staticmethod
    def _split(plan: _Plan, data: bytes) -> tuple[bytes, bytes]:
        """(before, after) the middle of the first ``plan.split_at`` in ``data``; (data, b"")
        when there is nothing to split."""
        if not plan.split_at:
            return data, b""
        at = data.find(plan.split_at)
        if at < 0:
            return data, b""
        cut = at + max(1, len(plan.split_at) // 2)
        return data[:cut], data[cut:]

    @staticmethod
    def _frame(plan: _Plan, event: bytes, index: int) -> bytes:
        if not plan.array:
            return event
        return (b"[" if index == 0 else b",\r\n") + event

    # ---- routing

    _GEMINI_RE = re.compile(
        r"^/(?:v1beta|v1|v1alpha)/models/([^/:]+(?:/[^:]+)?):"
        r"(generateContent|streamGenerateContent|countTokens)$"
    )

    def _route(self, rec: Received) -> tuple[str, str] | None:
        path, method, d = rec.path.rstrip("/") or "/", rec.method, self.dialect
        body = rec.json if isinstance(rec.json, dict) else {}
        model = str(body.get("model") or "")
        if d == "gemini":
            if method == "GET" and re.match(r"^/(?:v1beta|v1|v1alpha)/models$", path):
                return "models", ""
            m = self._GEMINI_RE.match(path)
            if method == "POST" and m:
                model = m.group(1).removeprefix("models/")
                kind = {"generateContent": "generate", "streamGenerateContent": "stream",
                        "countTokens": "count"}[m.group(2)]
                return kind, model
            return None
        if method == "GET" and path == "/v1/models":
            return "models", ""
        if method != "POST":
            return None
        stream = bool(body.get("stream"))
        if d == "anthropic":
            if path == "/v1/messages":
                return ("stream" if stream else "generate"), model
            if path == "/v1/messages/count_tokens":
                return "count", model
        elif path == {"openai-chat": "/v1/chat/completions",
                      "openai-responses": "/v1/responses"}[d]:
            return ("stream" if stream else "generate"), model
        return None

    # ---- bodies

    def _request_id(self) -> str:
        return f"req_fake{next(self._ids):06d}{uuid.uuid4().hex[:12]}"

    def _base_headers(self) -> dict[str, str]:
        if self.dialect == "anthropic":
            return {"request-id": self._request_id()}
        if self.dialect.startswith("openai"):
            return {"x-request-id": self._request_id()}
        return {}

    def _error_plan(self, status: int, message: str) -> _Plan:
        headers = self._base_headers()
        rid = headers.get("request-id")
        return _Plan(status=status, headers=headers,
                     body=error_body(self.dialect, status, message, request_id=rid))

    def _models_body(self) -> bytes:
        if self.dialect == "anthropic":
            ids = ["claude-sonnet-4-5-20250929", "claude-opus-4-1-20250805"]
            data = [{"type": "model", "id": i, "display_name": i,
                     "created_at": "2025-09-29T00:00:00Z"} for i in ids]
            return _dumps({"data": data, "has_more": False, "first_id": ids[0],
                           "last_id": ids[-1]})
        if self.dialect == "gemini":
            names = ["gemini-2.5-flash", "gemini-2.5-pro"]
            return _dumps({"models": [
                {"name": f"models/{n}", "version": "001", "displayName": n,
                 "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
                 "supportedGenerationMethods": ["generateContent", "countTokens"]}
                for n in names]})
        return _dumps({"object": "list", "data": [
            {"id": i, "object": "model", "created": 1744316542, "owned_by": "openai"}
            for i in ("gpt-4.1-2025-04-14", "gpt-5")]})

    def _answer(self, behavior: Behavior) -> _Answer:
        tools = FAKE_TOOL_CALLS[self.dialect] if behavior.tool_call else []
        if behavior.text is not None:
            chunks = _split_text(behavior.text, behavior.chunks)
        elif behavior.chunks is not None:
            chunks = numbered_chunks(behavior.chunks)
        elif tools:
            chunks = []
        else:
            chunks = list(DEFAULT_CHUNKS[self.dialect])
        with_text = bool(chunks) or not tools
        return _Answer(chunks=chunks, tools=tools, with_text=with_text)

    def _answer_plan(self, kind: str, model: str, rec: Received, behavior: Behavior,
                     echo: str | None = None) -> _Plan:
        """The answer; ``echo`` (a key) goes into the message of in-stream errors."""
        def msg(message: str) -> str:
            return f"{message} Incorrect API key provided: {echo}." if echo else message

        headers = self._base_headers()
        body = rec.json if isinstance(rec.json, dict) else {}
        d = self.dialect
        if kind == "count":
            if d == "anthropic":
                payload: Any = {"input_tokens": FAKE_COUNT_TOKENS}
            else:
                payload = {"totalTokens": FAKE_COUNT_TOKENS, "promptTokensDetails": [
                    {"modality": "TEXT", "tokenCount": FAKE_COUNT_TOKENS}]}
            return _Plan(headers=headers, body=_dumps(payload))
        ans = self._answer(behavior)
        stream = kind == "stream"
        if d == "anthropic":
            if not stream:
                return _Plan(headers=headers, body=_dumps(_anthropic_message(model, ans)))
            headers["content-type"] = "text/event-stream; charset=utf-8"
            headers["cache-control"] = "no-cache"
            status, message, _ = STREAM_ERROR[d]
            return _Plan(headers=headers, events=_anthropic_events(model, ans),
                         error_events=lambda i: [stream_error(d, status, msg(message))])
        if d == "openai-chat":
            if not stream:
                return _Plan(headers=headers, body=_dumps(_chat_completion(model, ans)))
            headers["content-type"] = "text/event-stream; charset=utf-8"
            headers["cache-control"] = "no-cache"
            status, message, _ = STREAM_ERROR[d]
            return _Plan(headers=headers, events=_chat_events(model, ans, body),
                         error_events=lambda i: [stream_error(d, status, msg(message))])
        if d == "openai-responses":
            rid = "resp_" + uuid.uuid4().hex * 2
            if not stream:
                return _Plan(headers=headers,
                             body=_dumps(_responses_final(rid, model, ans, body, done=True)))
            headers["content-type"] = "text/event-stream; charset=utf-8"
            headers["cache-control"] = "no-cache"
            status, message, code = STREAM_ERROR[d]

            def errors(i: int) -> list[bytes]:
                raw = stream_error(d, status, msg(message), code=code, response_id=rid,
                                   sequence_number=i)
                return [part + b"\n\n" for part in raw.split(b"\n\n") if part]

            return _Plan(headers=headers, events=_responses_events(rid, model, ans, body),
                         error_events=errors)
        # gemini
        rid = uuid.uuid4().hex[:22]
        if kind == "generate":
            return _Plan(headers=headers, body=_dumps(_gemini_final(model, rid, ans)))
        status, message, _ = STREAM_ERROR[d]
        elements = [_dumps(c) for c in _gemini_chunks(model, rid, ans)]
        if rec.query.get("alt") == "sse":
            headers["content-type"] = "text/event-stream"
            headers["cache-control"] = "no-cache"
            events = [b"data: " + e + b"\r\n\r\n" for e in elements]
            return _Plan(headers=headers, events=events,
                         error_events=lambda i: [stream_error(d, status, msg(message))])
        headers["content-type"] = "application/json; charset=UTF-8"
        return _Plan(headers=headers, events=elements, array=True,
                     error_events=lambda i: [error_body(d, status, msg(message))])


# --------------------------------------------------------------------------- anthropic


def _sse(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(payload) + b"\n\n"


def _msg_id() -> str:
    return "msg_fake" + uuid.uuid4().hex[:18]


def _anthropic_message(model: str, ans: _Answer) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if ans.with_text:
        content.append({"type": "text", "text": "".join(ans.chunks)})
    for tc in ans.tools:
        content.append({"type": "tool_use", "id": tc["id"], "name": tc["name"],
                        "input": tc["arguments"]})
    return {"id": _msg_id(), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": "tool_use" if ans.tools else "end_turn",
            "stop_sequence": None, "usage": dict(FAKE_USAGE["anthropic"])}


def _anthropic_events(model: str, ans: _Answer) -> list[bytes]:
    usage = FAKE_USAGE["anthropic"]
    start_usage = {k: v for k, v in usage.items() if k != "output_tokens"}
    start_usage["output_tokens"] = 1
    out = [_sse("message_start", {"type": "message_start", "message": {
        "id": _msg_id(), "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": start_usage}})]
    index = 0

    def ping_once() -> None:
        if index == 0:
            out.append(_sse("ping", {"type": "ping"}))

    if ans.with_text:
        out.append(_sse("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": {"type": "text", "text": ""}}))
        ping_once()
        for chunk in ans.chunks:
            out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                    "delta": {"type": "text_delta",
                                                              "text": chunk}}))
        out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    for tc in ans.tools:
        out.append(_sse("content_block_start", {
            "type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": tc["id"], "name": tc["name"],
                              "input": {}}}))
        ping_once()
        for frag in tc["fragments"]:
            out.append(_sse("content_block_delta", {
                "type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": frag}}))
        out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    out.append(_sse("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use" if ans.tools else "end_turn", "stop_sequence": None},
        "usage": dict(usage)}))
    out.append(_sse("message_stop", {"type": "message_stop"}))
    return out


# --------------------------------------------------------------------------- openai chat


def _chat_id() -> str:
    return "chatcmpl-fake" + uuid.uuid4().hex[:16]


def _chat_completion(model: str, ans: _Answer) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(ans.chunks) if ans.with_text else None,
        "refusal": None,
        "annotations": [],
    }
    if ans.tools:
        message["tool_calls"] = [
            {"id": tc["id"], "type": "function",
             "function": {"name": tc["name"], "arguments": tc["arguments_json"]}}
            for tc in ans.tools]
    return {
        "id": _chat_id(), "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": "tool_calls" if ans.tools else "stop"}],
        "usage": FAKE_USAGE["openai-chat"], "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


_OBFUSCATION = "kSx18Gpkah38dLw0M5wAKb"


def _chat_events(model: str, ans: _Answer, body: dict[str, Any]) -> list[bytes]:
    opts = body.get("stream_options") or {}
    include_usage = bool(opts.get("include_usage"))
    obfuscate = include_usage and opts.get("include_obfuscation", True) is not False
    cid, created = _chat_id(), int(time.time())
    out: list[bytes] = []

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> None:
        doc: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created,
                               "model": model, "service_tier": "default",
                               "system_fingerprint": "fp_fake", "choices": choices}
        if include_usage:
            doc["usage"] = usage
        if obfuscate:
            doc["obfuscation"] = _OBFUSCATION[: 1 + len(out) % 12]
        out.append(b"data: " + _dumps(doc) + b"\n\n")

    def delta(d: dict[str, Any], finish: str | None = None) -> None:
        chunk([{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}])

    if ans.with_text:
        delta({"role": "assistant", "content": "", "refusal": None})
        for c in ans.chunks:
            delta({"content": c})
    else:
        delta({"role": "assistant", "content": None})
    for i, tc in enumerate(ans.tools):
        delta({"tool_calls": [{"index": i, "id": tc["id"], "type": "function",
                               "function": {"name": tc["name"], "arguments": ""}}]})
        for frag in tc["fragments"]:
            delta({"tool_calls": [{"index": i, "function": {"arguments": frag}}]})
    delta({}, "tool_calls" if ans.tools else "stop")
    if include_usage:
        chunk([], FAKE_USAGE["openai-chat"])
    out.append(b"data: [DONE]\n\n")
    return out


# --------------------------------------------------------------------------- openai responses


def _responses_object(rid: str, model: str, body: dict[str, Any], status: str,
                      output: list[dict[str, Any]], usage: Any,
                      created: int) -> dict[str, Any]:
    return {
        "id": rid, "object": "response", "created_at": created, "status": status,
        "background": False, "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": None,
        "model": model, "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": None, "summary": None}, "safety_identifier": None,
        "service_tier": "default" if status == "completed" else "auto",
        "store": body.get("store", True), "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools", []),
        "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled", "usage": usage,
        "user": None, "metadata": {},
    }


def _responses_items(ans: _Answer, msg_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if ans.with_text:
        items.append({"id": msg_id, "type": "message", "status": "completed", "content": [
            {"type": "output_text", "annotations": [], "logprobs": [],
             "text": "".join(ans.chunks)}], "role": "assistant"})
    for tc in ans.tools:
        items.append({"id": tc["item_id"], "type": "function_call", "status": "completed",
                      "arguments": tc["arguments_json"], "call_id": tc["id"],
                      "name": tc["name"]})
    return items


def _responses_final(rid: str, model: str, ans: _Answer, body: dict[str, Any], *,
                     done: bool, msg_id: str | None = None,
                     created: int | None = None) -> dict[str, Any]:
    created = created or int(time.time())
    obj = _responses_object(rid, model, body, "completed",
                            _responses_items(ans, msg_id or "msg_" + uuid.uuid4().hex * 2),
                            FAKE_USAGE["openai-responses"], created)
    if done:
        obj["completed_at"] = created + 1
    return obj


def _responses_events(rid: str, model: str, ans: _Answer, body: dict[str, Any]) -> list[bytes]:
    created = int(time.time())
    msg_id = "msg_" + uuid.uuid4().hex * 2
    docs: list[dict[str, Any]] = []

    def ev(doc: dict[str, Any]) -> None:
        docs.append(doc)

    for t in ("response.created", "response.in_progress"):
        ev({"type": t, "response": _responses_object(rid, model, body, "in_progress", [], None,
                                                     created)})
    final_items = _responses_items(ans, msg_id)
    out_index = 0
    if ans.with_text:
        text = "".join(ans.chunks)
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
        ev({"type": "response.output_item.added", "output_index": out_index,
            "item": {"id": msg_id, "type": "message", "status": "in_progress", "content": [],
                     "role": "assistant"}})
        ev({"type": "response.content_part.added", "item_id": msg_id,
            "output_index": out_index, "content_index": 0, "part": part})
        for c in ans.chunks:
            ev({"type": "response.output_text.delta", "item_id": msg_id,
                "output_index": out_index, "content_index": 0, "delta": c, "logprobs": []})
        ev({"type": "response.output_text.done", "item_id": msg_id, "output_index": out_index,
            "content_index": 0, "text": text, "logprobs": []})
        ev({"type": "response.content_part.done", "item_id": msg_id,
            "output_index": out_index, "content_index": 0, "part": {**part, "text": text}})
        ev({"type": "response.output_item.done", "output_index": out_index,
            "item": final_items[out_index]})
        out_index += 1
    for tc in ans.tools:
        ev({"type": "response.output_item.added", "output_index": out_index,
            "item": {"id": tc["item_id"], "type": "function_call", "status": "in_progress",
                     "arguments": "", "call_id": tc["id"], "name": tc["name"]}})
        for frag in tc["fragments"]:
            ev({"type": "response.function_call_arguments.delta", "item_id": tc["item_id"],
                "output_index": out_index, "delta": frag})
        ev({"type": "response.function_call_arguments.done", "item_id": tc["item_id"],
            "output_index": out_index, "arguments": tc["arguments_json"], "name": tc["name"]})
        ev({"type": "response.output_item.done", "output_index": out_index,
            "item": final_items[out_index]})
        out_index += 1
    ev({"type": "response.completed",
        "response": _responses_final(rid, model, ans, body, done=True, msg_id=msg_id,
                                     created=created)})
    out = []
    for seq, doc in enumerate(docs):
        doc = {"type": doc["type"], "sequence_number": seq,
               **{k: v for k, v in doc.items() if k != "type"}}
        out.append(_sse(doc["type"], doc))
    return out


# --------------------------------------------------------------------------- gemini


def _gemini_fc_parts(ans: _Answer) -> list[dict[str, Any]]:
    parts = []
    for tc in ans.tools:
        part: dict[str, Any] = {"functionCall": {"name": tc["name"], "args": tc["arguments"]}}
        if tc.get("thought_signature"):
            part["thoughtSignature"] = tc["thought_signature"]
        parts.append(part)
    return parts


def _gemini_doc(model: str, rid: str, parts: list[dict[str, Any]], *, final: bool,
                tools: bool) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if final:
        cand["finishReason"] = "STOP"
        cand["index"] = 0
        if tools:
            cand["finishMessage"] = "Model generated function call(s)."
    usage = FAKE_USAGE["gemini"] if final else _GEMINI_PROMPT_USAGE
    return {"candidates": [cand], "usageMetadata": dict(usage), "modelVersion": model,
            "responseId": rid}


def _gemini_final(model: str, rid: str, ans: _Answer) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if ans.with_text:
        parts.append({"text": "".join(ans.chunks)})
    parts += _gemini_fc_parts(ans)
    return _gemini_doc(model, rid, parts, final=True, tools=bool(ans.tools))


def _gemini_chunks(model: str, rid: str, ans: _Answer) -> list[dict[str, Any]]:
    texts = ans.chunks if ans.chunks or ans.tools else [""]
    docs = [_gemini_doc(model, rid, [{"text": t}], final=False, tools=False) for t in texts]
    if ans.tools:
        docs.append(_gemini_doc(model, rid, _gemini_fc_parts(ans), final=True, tools=True))
    else:
        docs[-1] = _gemini_doc(model, rid, [{"text": texts[-1]}], final=True, tools=False)
    return docs
