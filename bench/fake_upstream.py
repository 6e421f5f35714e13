"""A fast fake LLM provider for the benchmark: raw asyncio Protocols on uvloop, no framework.

    python bench/fake_upstream.py --port 18901 [--fail-503] [--chunk-delay-ms 0]
        [--first-byte-delay-ms 0] [--stream-framing chunked|close]

Routes (the dialect is taken from the path, so one process serves every provider kind):
    POST .../v1/messages                          Anthropic Messages
    POST .../chat/completions                     OpenAI Chat Completions
    POST .../responses                            OpenAI Responses
    POST .../models/{m}:generateContent           Gemini
    POST .../models/{m}:streamGenerateContent     Gemini stream (SSE if alt=sse, else JSON array)
    GET  /__stats                                 request counters (JSON), for the harness
    GET  /, /health, /readiness                   200

A request streams when its body has ``"stream": true`` (or for the Gemini stream verb). Every
answer is the 20 pieces of ``payloads.CHUNKS``; a stream sends them as 20 content events in that
dialect's real SSE grammar, back to back unless ``--chunk-delay-ms`` is set.

Failure triggers, answered instantly with status 503 in the dialect's error shape: the
``--fail-503`` flag (every request), a model name starting with ``fail-503``, or a request
header ``x-fake-fail: 503``.

HTTP/1.1 with keep-alive and pipelining: requests are answered strictly in order; while a
delayed response is being written, later pipelined requests wait in the buffer. Answers are
rendered once per (route, model, framing) and cached as bytes, so the hot path is a parse and
one ``transport.write``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import nodelay
from payloads import CHUNKS, FULL_TEXT

__all__ = ["Options", "serve"]

_MAX_HEAD = 64 * 1024
_MODEL_RE = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
_GEMINI_RE = re.compile(r"/models/([^/:]+):(generateContent|streamGenerateContent)")
_IN_TOK, _OUT_TOK = 42, 120


@dataclass(slots=True)
class Options:
    fail_503: bool = False
    chunk_delay_s: float = 0.0
    first_byte_delay_s: float = 0.0
    close_framing: bool = False  # streams end by closing the connection instead of chunking


@dataclass(slots=True)
class _Reply:
    """A rendered answer: ``head`` (status line, headers, preamble events), the content
    events, and the tail. With no delays configured the three are written in one go."""

    head: bytes
    deltas: list[bytes]
    tail: bytes
    close: bool
    status: int
    joined: bytes = b""


@dataclass(slots=True)
class _Stats:
    requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    by_route: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.time)

    def as_json(self) -> bytes:
        return json.dumps({
            "requests": self.requests,
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "by_route": dict(self.by_route),
            "uptime_s": round(time.time() - self.started, 3),
        }).encode()


# ---------------------------------------------------------------------------------------------
# Rendering: dialect bodies and events


def _j(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _sse(event: str | None, obj: object, eol: bytes = b"\n") -> bytes:
    data = obj if isinstance(obj, bytes) else _j(obj)
    prefix = b"event: " + event.encode() + eol if event else b""
    return prefix + b"data: " + data + eol + eol


def _anthropic(model: str, stream: bool) -> tuple[list[bytes], list[bytes], list[bytes]] | bytes:
    usage = {"input_tokens": _IN_TOK, "output_tokens": _OUT_TOK,
             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    if not stream:
        return _j({"id": "msg_fake01bench", "type": "message", "role": "assistant",
                   "content": [{"type": "text", "text": FULL_TEXT}], "model": model,
                   "stop_reason": "end_turn", "stop_sequence": None, "usage": usage})
    start = {"type": "message_start", "message": {
        "id": "msg_fake01bench", "type": "message", "role": "assistant", "content": [],
        "model": model, "stop_reason": None, "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1}}}
    pre = [_sse("message_start", start),
           _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": {"type": "text", "text": ""}})]
    deltas = [_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": c}})
              for c in CHUNKS]
    post = [_sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _sse("message_delta", {"type": "message_delta",
                                   "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                   "usage": {"output_tokens": _OUT_TOK}}),
            _sse("message_stop", {"type": "message_stop"})]
    return pre, deltas, post


def _chat(model: str, stream: bool) -> tuple[list[bytes], list[bytes], list[bytes]] | bytes:
    base = {"id": "chatcmpl-fakebench01", "created": 1764850000, "model": model,
            "system_fingerprint": None}
    usage = {"prompt_tokens": _IN_TOK, "completion_tokens": _OUT_TOK,
             "total_tokens": _IN_TOK + _OUT_TOK,
             "prompt_tokens_details": {"cached_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0}}
    if not stream:
        return _j({**base, "object": "chat.completion", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": FULL_TEXT, "refusal": None,
                                    "annotations": []},
            "logprobs": None, "finish_reason": "stop"}], "usage": usage})
    chunk = {**base, "object": "chat.completion.chunk"}
    deltas = []
    for i, c in enumerate(CHUNKS):
        delta = {"role": "assistant", "content": c} if i == 0 else {"content": c}
        deltas.append(_sse(None, {**chunk, "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}))
    post = [_sse(None, {**chunk, "choices": [
                {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}),
            _sse(None, {**chunk, "choices": [], "usage": usage}),
            _sse(None, b"[DONE]")]
    return [], deltas, post


def _responses(model: str, stream: bool) -> tuple[list[bytes], list[bytes], list[bytes]] | bytes:
    rid, mid = "resp_fakebench01", "msg_fakebench01"
    usage = {"input_tokens": _IN_TOK, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": _OUT_TOK, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": _IN_TOK + _OUT_TOK}
    part = {"type": "output_text", "text": FULL_TEXT, "annotations": []}
    item = {"id": mid, "type": "message", "status": "completed", "role": "assistant",
            "content": [part]}
    base = {"id": rid, "object": "response", "created_at": 1764850000, "status": "in_progress",
            "error": None, "incomplete_details": None, "instructions": None, "model": model,
            "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": None, "metadata": {}}
    done = {**base, "status": "completed", "output": [item], "usage": usage}
    if not stream:
        return _j(done)
    seq = iter(range(10_000))

    def ev(kind: str, **fields: object) -> bytes:
        return _sse(kind, {"type": kind, "sequence_number": next(seq), **fields})

    loc = {"item_id": mid, "output_index": 0, "content_index": 0}
    pre = [ev("response.created", response=base),
           ev("response.in_progress", response=base),
           ev("response.output_item.added", output_index=0,
              item={**item, "status": "in_progress", "content": []}),
           ev("response.content_part.added", **loc, part={**part, "text": ""})]
    deltas = [ev("response.output_text.delta", **loc, delta=c, logprobs=[]) for c in CHUNKS]
    post = [ev("response.output_text.done", **loc, text=FULL_TEXT, logprobs=[]),
            ev("response.content_part.done", **loc, part=part),
            ev("response.output_item.done", output_index=0, item=item),
            ev("response.completed", response=done)]
    return pre, deltas, post


def _gemini(model: str, stream: bool, sse: bool) -> tuple[list[bytes], list[bytes],
                                                         list[bytes]] | bytes:
    full_usage = {"promptTokenCount": _IN_TOK, "candidatesTokenCount": _OUT_TOK,
                  "totalTokenCount": _IN_TOK + _OUT_TOK}

    def resp(text: str, last: bool) -> dict[str, object]:
        cand: dict[str, object] = {"content": {"parts": [{"text": text}], "role": "model"},
                                   "index": 0}
        if last:
            cand["finishReason"] = "STOP"
        usage = full_usage if last else {"promptTokenCount": _IN_TOK,
                                         "totalTokenCount": _IN_TOK}
        return {"candidates": [cand], "usageMetadata": usage, "modelVersion": model,
                "responseId": "fakebench01"}

    if not stream:
        return _j(resp(FULL_TEXT, True))
    n = len(CHUNKS)
    if sse:  # the live API ends SSE lines with \r\n; there is no [DONE], the stream just ends
        return [], [_sse(None, resp(c, i == n - 1), b"\r\n") for i, c in enumerate(CHUNKS)], []
    parts = [(b"[" if i == 0 else b",\r\n") + _j(resp(c, i == n - 1))
             for i, c in enumerate(CHUNKS)]
    return [], parts, [b"]"]


_ERRORS: dict[str, bytes] = {
    "anthropic": _j({"type": "error", "error": {
        "type": "overloaded_error", "message": "fake upstream: service unavailable"},
        "request_id": "req_fakebench01"}),
    "openai": _j({"error": {"message": "fake upstream: service unavailable",
                            "type": "server_error", "param": None,
                            "code": "service_unavailable"}}),
    "gemini": _j({"error": {"code": 503, "message": "fake upstream: the model is overloaded.",
                            "status": "UNAVAILABLE"}}),
}
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
            431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


def _plain(status: int, body: bytes, close: bool,
           ctype: bytes = b"application/json") -> _Reply:
    head = (b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n"
            % (status, _REASONS.get(status, b"Unknown"), ctype, len(body),
               b"connection: close\r\n" if close else b""))
    data = head + body
    return _Reply(data, [], b"", close, status, data)


def _streamed(events: tuple[list[bytes], list[bytes], list[bytes]], close: bool,
              close_framing: bool, ctype: bytes) -> _Reply:
    pre, deltas, post = events
    if close_framing:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncache-control: no-cache\r\n" \
               b"connection: close\r\n\r\n" % ctype
        return _Reply(head + b"".join(pre), deltas, b"".join(post), True, 200)

    def ch(b: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(b), b)

    head = (b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n%s\r\n"
            % (ctype, b"connection: close\r\n" if close else b""))
    return _Reply(head + b"".join(ch(p) for p in pre), [ch(d) for d in deltas],
                  b"".join(ch(p) for p in post) + b"0\r\n\r\n", close, 200)


# ---------------------------------------------------------------------------------------------
# Routing


class _App:
    """Turns a parsed request into a ``_Reply``; renders each distinct answer once."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.stats = _Stats()
        self._cache: dict[tuple[str, str, bool, bool], _Reply] = {}

    def handle(self, method: bytes, target: bytes, headers: bytes, body: bytes,
               close: bool) -> _Reply:
        path = target.decode("latin-1")
        query = ""
        if "?" in path:
            path, query = path.split("?", 1)
        if method == b"GET":
            if path == "/__stats":
                return _plain(200, self.stats.as_json(), close)
            if path in ("/", "/health", "/healthz", "/readiness"):
                return _plain(200, b'{"ok":true}', close)
        route, model, stream = self._route(path, body)
        if route == "":
            return self._count("unknown", _plain(404, _ERRORS["openai"].replace(
                b"fake upstream: service unavailable", b"fake upstream: no such route"),
                close))
        if method != b"POST":
            return self._count(route, _plain(405, b'{"error":"POST only"}', close))
        fail = (self.opts.fail_503 or model.startswith("fail-503")
                or b"\r\nx-fake-fail: 503" in headers)
        if fail:
            family = "gemini" if route.startswith("gemini") else (
                "anthropic" if route == "anthropic" else "openai")
            return self._count(route, _plain(503, _ERRORS[family], close))
        if route == "gemini-stream":
            stream = True
            if "alt=sse" not in query:
                route = "gemini-array"
        key = (route, model, stream, close)
        reply = self._cache.get(key)
        if reply is None:
            reply = self._render(route, model, stream, close)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = reply
        return self._count(route, reply)

    def _count(self, route: str, reply: _Reply) -> _Reply:
        st = self.stats
        st.requests += 1
        st.by_status[reply.status] += 1
        st.by_route[route] += 1
        return reply

    @staticmethod
    def _route(path: str, body: bytes) -> tuple[str, str, bool]:
        gm = _GEMINI_RE.search(path)
        if gm:
            return ("gemini-stream" if gm.group(2) == "streamGenerateContent" else "gemini",
                    gm.group(1), False)
        if path.endswith("/messages"):
            route = "anthropic"
        elif path.endswith("/chat/completions"):
            route = "chat"
        elif path.endswith("/responses"):
            route = "responses"
        else:
            return "", "", False
        m = _MODEL_RE.search(body)
        model = m.group(1).decode("utf-8", "replace") if m else "fake-model"
        return route, model, _STREAM_RE.search(body) is not None

    def _render(self, route: str, model: str, stream: bool, close: bool) -> _Reply:
        if route == "anthropic":
            out = _anthropic(model, stream)
        elif route == "chat":
            out = _chat(model, stream)
        elif route == "responses":
            out = _responses(model, stream)
        else:
            out = _gemini(model, stream, sse=route != "gemini-array")
        if isinstance(out, bytes):
            return _plain(200, out, close)
        ctype = b"application/json" if route == "gemini-array" else b"text/event-stream"
        reply = _streamed(out, close, self.opts.close_framing, ctype)
        reply.joined = reply.head + b"".join(reply.deltas) + reply.tail
        return reply


# ---------------------------------------------------------------------------------------------
# HTTP/1.1 server protocol


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked request body starting at ``pos``: (body, end) or None if incomplete."""
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip() or b"0", 16)
        pos = eol + 2
        if size == 0:
            if buf[pos:pos + 2] == b"\r\n":
                return bytes(out), pos + 2
            end = buf.find(b"\r\n\r\n", pos)  # trailers
            return None if end < 0 else (bytes(out), end + 4)
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos:pos + size]
        pos += size + 2


class _HttpProtocol(asyncio.Protocol):
    __slots__ = ("_app", "_buf", "_busy", "_task", "_transport")

    def __init__(self, app: _App) -> None:
        self._app = app
        self._buf = bytearray()
        self._busy = False
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        nodelay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None:
            self._task.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._process()

    def _process(self) -> None:
        buf, t, app = self._buf, self._transport, self._app
        while t is not None and buf and not t.is_closing():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._fail(431)
                return
            line_end = buf.find(b"\r\n")
            try:
                method, target, version = bytes(buf[:line_end]).split(b" ", 2)
            except ValueError:
                self._fail(400)
                return
            headers = bytes(buf[line_end:end + 2]).lower()  # each header starts with \r\n
            pos = end + 4
            i = headers.find(b"\r\ncontent-length:")
            if i >= 0:
                try:
                    n = int(headers[i + 17:headers.find(b"\r\n", i + 2)])
                except ValueError:
                    self._fail(400)
                    return
                if len(buf) < pos + n:
                    return
                body, pos = bytes(buf[pos:pos + n]), pos + n
            elif b"\r\ntransfer-encoding:" in headers and b"chunked" in headers:
                try:
                    got = _dechunk(buf, pos)
                except ValueError:
                    self._fail(400)
                    return
                if got is None:
                    return
                body, pos = got
            else:
                body = b""
            del buf[:pos]
            if version == b"HTTP/1.0":
                close = b"\r\nconnection: keep-alive" not in headers
            else:
                close = b"\r\nconnection: close" in headers
            reply = app.handle(method, target, headers, body, close)
            opts = app.opts
            if reply.joined and not (opts.chunk_delay_s or opts.first_byte_delay_s):
                t.write(reply.joined)
                if reply.close:
                    t.close()
                    return
                continue
            self._busy = True
            self._task = asyncio.get_running_loop().create_task(self._write_slowly(reply))
            return

    async def _write_slowly(self, reply: _Reply) -> None:
        opts = self._app.opts
        t = self._transport
        try:
            if opts.first_byte_delay_s:
                await asyncio.sleep(opts.first_byte_delay_s)
            if t is None or t.is_closing():
                return
            t.write(reply.head)
            for d in reply.deltas:
                if opts.chunk_delay_s:
                    await asyncio.sleep(opts.chunk_delay_s)
                if t.is_closing():
                    return
                t.write(d)
            if reply.tail:
                t.write(reply.tail)
        except asyncio.CancelledError:
            return
        finally:
            self._busy = False
            self._task = None
        if reply.close:
            t.close()
        elif self._buf:
            self._process()

    def _fail(self, status: int) -> None:
        if self._transport is not None:
            self._transport.write(_plain(status, b'{"error":"bad request"}', True).joined)
            self._transport.close()
        self._buf.clear()


# ---------------------------------------------------------------------------------------------


async def serve(host: str, port: int, opts: Options, ready: bool = True) -> None:
    """Serve until SIGINT/SIGTERM. Prints one ``listening`` line once bound."""
    loop = asyncio.get_running_loop()
    app = _App(opts)
    server = await loop.create_server(lambda: _HttpProtocol(app), host, port, backlog=4096,
                                      reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    if ready:
        print(f"fake_upstream listening on http://{host}:{bound} "
              f"(fail_503={opts.fail_503}, chunk_delay_ms={opts.chunk_delay_s * 1000:g})",
              flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Fast fake LLM provider (all four dialects).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18901, help="0 picks a free port")
    p.add_argument("--mode", choices=["ok", "fail-503"], default="ok",
                   help="fail-503: every request gets an instant 503 (same as --fail-503)")
    p.add_argument("--fail-503", action="store_true", help="answer every request with 503")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0,
                   help="sleep before each of the 20 content events (default 0)")
    p.add_argument("--first-byte-delay-ms", type=float, default=0.0,
                   help="sleep before the response head (a model's time to first token)")
    p.add_argument("--stream-framing", choices=["chunked", "close"], default="chunked",
                   help="streams: chunked transfer encoding (default) or close-delimited")
    a = p.parse_args(argv)
    opts = Options(fail_503=a.fail_503 or a.mode == "fail-503",
                   chunk_delay_s=a.chunk_delay_ms / 1000,
                   first_byte_delay_s=a.first_byte_delay_ms / 1000,
                   close_framing=a.stream_framing == "close")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve(a.host, a.port, opts))
    else:
        uvloop.run(serve(a.host, a.port, opts))


if __name__ == "__main__":
    main()
