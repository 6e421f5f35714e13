"""A lean HTTP/1.1 load generator: raw asyncio Protocols on uvloop, one keep-alive connection per
concurrent worker, closed-loop (each worker sends its next request when the last one finished).

Library:
    result = await run_load(url, body, headers, concurrency=16, duration_s=5, stream=True)
    resp = await fetch_once(url, body, headers)          # one request, body kept, for checks

CLI (the body is built for a dialect, or given literally with --body '{...}' / --body @file):
    python bench/loadgen.py http://127.0.0.1:18901 --dialect anthropic --stream -c 16 -d 5

Measured with time.perf_counter_ns, at the moment the bytes are handed to the protocol:
    latency  request write (or connect, when the connection had to be opened) -> last body byte
    ttfb     same start -> first body byte (the first byte of chunk data, not of framing)
A request is an error if it times out, the connection fails or closes early, the framing is
malformed, the status is not 2xx, or the body lacks one of the ``expect`` substrings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter_ns
from typing import cast
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import nodelay
from payloads import DIALECTS, client_request

__all__ = ["Response", "Result", "build_request", "fetch_once", "percentiles", "run_load"]

_MAX_HEAD = 64 * 1024
(_IDLE, _HEAD, _BODY_CL, _BODY_CLOSE, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER,
 _DONE) = range(9)


class MalformedError(Exception):
    """The response could not be parsed as HTTP/1.1."""


@dataclass(slots=True)
class Response:
    status: int
    keep_alive: bool
    headers: bytes  # the raw, lower-cased header block
    body: bytes  # empty unless kept
    body_len: int
    t_first_ns: int  # first body byte arrived (0 if there was no body)
    t_done_ns: int  # last byte arrived

    def ms(self, t0_ns: int) -> tuple[float, float]:
        """(ttfb, total) in ms, relative to ``t0_ns``."""
        first = self.t_first_ns or self.t_done_ns
        return (first - t0_ns) / 1e6, (self.t_done_ns - t0_ns) / 1e6


class _ClientProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection; parses one response at a time (no pipelining)."""

    def __init__(self, keep_body: bool) -> None:
        self.keep_body = keep_body
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._fut: asyncio.Future[Response] | None = None
        self._state = _IDLE
        self._remaining = 0
        self._status = 0
        self._keep_alive = True
        self._headers = b""
        self._body = bytearray()
        self._body_len = 0
        self._t_first = 0
        self._head_only = False

    # -- asyncio callbacks --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        nodelay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        fut = self._fut
        if fut is None or fut.done():
            return
        if self._state == _BODY_CLOSE:  # close-delimited body: EOF is the end
            self._finish(perf_counter_ns(), keep_alive=False)
        else:
            fut.set_exception(ConnectionError(
                "connection closed before the response ended"
                + (f" ({exc})" if exc else "")))

    def data_received(self, data: bytes) -> None:
        now = perf_counter_ns()
        if self._fut is None or self._fut.done():
            self.abort()  # bytes nobody asked for: the connection is out of sync
            return
        self._buf += data
        try:
            self._parse(now)
        except (MalformedError, ValueError) as e:
            self._fail(MalformedError(f"malformed response: {e}"))

    # -- API ------------------------------------------------------------------------------------
    def send(self, data: bytes, head_only: bool = False) -> asyncio.Future[Response]:
        assert self.transport is not None
        self._fut = asyncio.get_running_loop().create_future()
        self._state = _HEAD
        self._body = bytearray()
        self._body_len = 0
        self._t_first = 0
        self._head_only = head_only
        self.transport.write(data)
        return self._fut

    def on_timeout(self) -> None:
        self._fail(TimeoutError("request timed out"))

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- internals ------------------------------------------------------------------------------
    def _fail(self, exc: Exception) -> None:
        if self._fut is not None and not self._fut.done():
            self._fut.set_exception(exc)
        self.abort()

    def _finish(self, now: int, keep_alive: bool | None = None) -> None:
        self._state = _DONE
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(Response(
                self._status, self._keep_alive if keep_alive is None else keep_alive,
                self._headers, bytes(self._body), self._body_len, self._t_first, now))

    def _take(self, buf: bytearray, pos: int, n: int, now: int) -> None:
        if n <= 0:
            return
        if not self._t_first:
            self._t_first = now
        self._body_len += n
        if self.keep_body:
            self._body += buf[pos:pos + n]

    def _parse(self, now: int) -> None:
        buf = self._buf
        pos = 0
        n = len(buf)
        while pos < n:
            st = self._state
            if st == _HEAD:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    if n - pos > _MAX_HEAD:
                        raise MalformedError("response head too large")
                    break
                self._start_body(bytes(buf[pos:end + 2]))
                pos = end + 4
                if self._state == _DONE:
                    self._finish(now)
            elif st in (_BODY_CL, _CHUNK_DATA):
                take = min(self._remaining, n - pos)
                self._take(buf, pos, take, now)
                pos += take
                self._remaining -= take
                if self._remaining:
                    break
                if st == _BODY_CL:
                    self._finish(now)
                else:
                    self._state = _CHUNK_CRLF
            elif st == _CHUNK_SIZE:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if n - pos > 1024:
                        raise MalformedError("chunk size line too long")
                    break
                size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip(), 16)
                pos = eol + 2
                if size:
                    self._remaining, self._state = size, _CHUNK_DATA
                else:
                    self._state = _TRAILER
            elif st == _CHUNK_CRLF:
                if n - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise MalformedError("chunk not followed by CRLF")
                pos += 2
                self._state = _CHUNK_SIZE
            elif st == _TRAILER:  # trailer lines, ended by an empty line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                empty = eol == pos
                pos = eol + 2
                if empty:
                    self._finish(now)
            elif st == _BODY_CLOSE:
                self._take(buf, pos, n - pos, now)
                pos = n
            else:  # _DONE with bytes left over: a server that sent more than one response
                if pos < n:
                    raise MalformedError("unexpected bytes after the response")
                break
            if self._state == _DONE:
                if pos < n:
                    raise MalformedError("unexpected bytes after the response")
                break
        del buf[:pos]

    def _start_body(self, head: bytes) -> None:
        line_end = head.find(b"\r\n")
        line = head[:line_end]
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise MalformedError(f"bad status line {line[:80]!r}")
        status = int(parts[1])
        headers = head[line_end:].lower()
        if 100 <= status < 200:  # interim response; the real one follows
            return
        self._status = status
        self._headers = headers
        if parts[0] == b"HTTP/1.0":
            self._keep_alive = b"\r\nconnection: keep-alive" in headers
        else:
            self._keep_alive = b"\r\nconnection: close" not in headers
        if self._head_only or status in (204, 304):
            self._state = _DONE
            return
        if b"\r\ntransfer-encoding:" in headers and b"chunked" in headers:
            self._state = _CHUNK_SIZE
            return
        i = headers.find(b"\r\ncontent-length:")
        if i >= 0:
            self._remaining = int(headers[i + 17:headers.find(b"\r\n", i + 2)])
            self._state = _BODY_CL if self._remaining else _DONE
            return
        self._state = _BODY_CLOSE
        self._keep_alive = False


# ---------------------------------------------------------------------------------------------
# Requests, results, workers


def build_request(url: str, body: bytes, headers: Mapping[str, str] | None = None,
                  method: str = "POST") -> tuple[str, int, bytes]:
    """(host, port, request bytes) for a plain-http ``url``."""
    u = urlsplit(url)
    if u.scheme != "http":
        raise ValueError(f"only http:// URLs are supported, got {url!r}")
    host, port = u.hostname or "127.0.0.1", u.port or 80
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"host: {host}:{port}"]
    for k, v in (headers or {}).items():
        if k.lower() not in ("host", "content-length", "transfer-encoding", "connection"):
            lines.append(f"{k}: {v}")
    if body or method not in ("GET", "HEAD"):
        lines.append(f"content-length: {len(body)}")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def percentiles(values_ns: Sequence[int], points: Sequence[float] = (50, 90, 99)
                ) -> dict[str, float]:
    """Nearest-rank percentiles in ms, plus mean and max; {} when there are no values."""
    if not values_ns:
        return {}
    v = sorted(values_ns)
    out = {f"p{p:g}": v[min(len(v) - 1, max(0, math.ceil(len(v) * p / 100) - 1))] / 1e6
           for p in points}
    out["mean"] = sum(v) / len(v) / 1e6
    out["max"] = v[-1] / 1e6
    return {k: round(x, 4) for k, x in out.items()}


@dataclass
class Result:
    url: str
    concurrency: int
    stream: bool
    requests: int  # completed successfully
    errors: int
    elapsed_s: float
    throughput_rps: float  # successful requests per second
    latency_ms: dict[str, float]
    ttfb_ms: dict[str, float]
    connects: int
    bytes_received: int
    status_counts: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)
    error_sample: str = ""  # the first error body (or message), truncated

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class _Run:
    """Shared state of one load run."""

    def __init__(self, url: str, body: bytes, headers: Mapping[str, str] | None, method: str,
                 expect: Sequence[bytes], timeout_s: float, deadline_ns: int | None,
                 budget: int | None) -> None:
        self.host, self.port, self.request = build_request(url, body, headers, method)
        self.head_only = method == "HEAD"
        self.expect = tuple(expect)
        self.timeout_s = timeout_s
        self.deadline_ns = deadline_ns
        self.budget = budget
        self.latencies: list[int] = []
        self.ttfbs: list[int] = []
        self.errors = 0
        self.connects = 0
        self.bytes = 0
        self.last_done = 0
        self.status = Counter[str]()
        self.kinds = Counter[str]()
        self.sample = ""

    def more(self) -> bool:
        if self.budget is not None:
            if self.budget <= 0:
                return False
            self.budget -= 1
            return True
        return perf_counter_ns() < cast(int, self.deadline_ns)

    def error(self, kind: str, detail: str) -> None:
        self.errors += 1
        self.kinds[kind] += 1
        if not self.sample:
            self.sample = detail[:300]

    async def connect(self) -> _ClientProtocol:
        loop = asyncio.get_running_loop()
        keep = bool(self.expect)
        _, proto = await loop.create_connection(lambda: _ClientProtocol(keep), self.host,
                                                self.port)
        self.connects += 1
        return proto


async def _exchange(run: _Run, conn: _ClientProtocol) -> Response:
    loop = asyncio.get_running_loop()
    fut = conn.send(run.request, run.head_only)
    timer = loop.call_later(run.timeout_s, conn.on_timeout)
    try:
        return await fut
    finally:
        timer.cancel()


async def _worker(run: _Run) -> None:
    conn: _ClientProtocol | None = None
    while run.more():
        t0 = perf_counter_ns()
        try:
            if conn is None or conn.closed:
                conn = await run.connect()
        except OSError as e:
            run.error("connect", f"connect failed: {e}")
            conn = None
            await asyncio.sleep(0.01)  # don't spin on a refused port
            continue
        try:
            resp = await _exchange(run, conn)
        except TimeoutError as e:
            run.error("timeout", str(e))
            conn.abort()
            conn = None
            continue
        except (ConnectionError, OSError, MalformedError) as e:
            run.error("closed" if isinstance(e, ConnectionError) else "malformed", str(e))
            conn.abort()
            conn = None
            continue
        run.status[str(resp.status)] += 1
        run.bytes += resp.body_len
        run.last_done = max(run.last_done, resp.t_done_ns)
        if not 200 <= resp.status < 300:
            run.error(f"http {resp.status}", f"HTTP {resp.status}: "
                      + resp.body[:240].decode("utf-8", "replace"))
        elif run.expect and not all(e in resp.body for e in run.expect):
            missing = [e.decode() for e in run.expect if e not in resp.body]
            run.error("incomplete", f"body lacks {missing}: "
                      + resp.body[-200:].decode("utf-8", "replace"))
        else:
            run.latencies.append(resp.t_done_ns - t0)
            run.ttfbs.append((resp.t_first_ns or resp.t_done_ns) - t0)
        if not resp.keep_alive or conn.closed:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


async def run_load(url: str, body: bytes, headers: Mapping[str, str] | None = None,
                   concurrency: int = 1, duration_s: float | None = None,
                   requests: int | None = None, stream: bool = False, *,
                   method: str = "POST", expect: Sequence[bytes] = (),
                   timeout_s: float = 60.0) -> Result:
    """Closed-loop load: ``concurrency`` workers, each on its own keep-alive connection, send
    the same request until ``duration_s`` is over (in-flight requests still finish) or until
    ``requests`` have been started. ``stream`` only labels the result (TTFB is always taken)."""
    if (duration_s is None) == (requests is None):
        raise ValueError("give exactly one of duration_s and requests")
    start = perf_counter_ns()
    deadline = start + int(duration_s * 1e9) if duration_s is not None else None
    run = _Run(url, body, headers, method, expect, timeout_s, deadline, requests)
    await asyncio.gather(*(_worker(run) for _ in range(concurrency)))
    end = max(run.last_done, start + 1) if run.latencies else perf_counter_ns()
    elapsed = (end - start) / 1e9
    return Result(
        url=url, concurrency=concurrency, stream=stream, requests=len(run.latencies),
        errors=run.errors, elapsed_s=round(elapsed, 4),
        throughput_rps=round(len(run.latencies) / elapsed, 2) if elapsed > 0 else 0.0,
        latency_ms=percentiles(run.latencies), ttfb_ms=percentiles(run.ttfbs),
        connects=run.connects, bytes_received=run.bytes, status_counts=dict(run.status),
        error_kinds=dict(run.kinds), error_sample=run.sample)


async def fetch_once(url: str, body: bytes = b"", headers: Mapping[str, str] | None = None,
                     method: str = "POST", timeout_s: float = 30.0) -> tuple[Response, int]:
    """One request on a fresh connection, body kept: (response, t0_ns)."""
    host, port, request = build_request(url, body, headers, method)
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: _ClientProtocol(True), host, port)
    try:
        t0 = perf_counter_ns()
        fut = conn.send(request, method == "HEAD")
        resp = await asyncio.wait_for(fut, timeout_s)
    finally:
        conn.close()
    return resp, t0


# ---------------------------------------------------------------------------------------------
# CLI


def _print(result: Result) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{result.url}  c={result.concurrency}  stream={result.stream}")
    for col in ("requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"):
        t.add_column(col, justify="right")
    if result.stream:
        for col in ("ttfb p50", "ttfb p90", "ttfb p99"):
            t.add_column(col, justify="right")
    lat = result.latency_ms
    row = [str(result.requests), str(result.errors), f"{result.throughput_rps:,.0f}",
           *(f"{lat.get(k, float('nan')):.3f}" for k in ("p50", "p90", "p99", "max"))]
    if result.stream:
        row += [f"{result.ttfb_ms.get(k, float('nan')):.3f}" for k in ("p50", "p90", "p99")]
    t.add_row(*row)
    con = Console()
    con.print(t)
    con.print(f"connections opened: {result.connects}   statuses: {result.status_counts}   "
              f"bytes: {result.bytes_received:,}")
    if result.errors:
        con.print(f"[red]errors: {result.error_kinds}[/red]\n  first: {result.error_sample}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Closed-loop HTTP/1.1 load generator.")
    p.add_argument("url", help="http://host:port[/path]; with --dialect the path may be omitted")
    p.add_argument("--dialect", choices=DIALECTS, help="build a realistic request body")
    p.add_argument("--model", default=None, help="model name (default per dialect)")
    p.add_argument("--stream", action="store_true", help="ask for a stream (and report TTFB)")
    p.add_argument("--body", help="literal JSON body, or @file")
    p.add_argument("-H", "--header", action="append", default=[], help="'name: value'")
    p.add_argument("-X", "--method", default=None)
    p.add_argument("-c", "--concurrency", type=int, default=1)
    g = p.add_mutually_exclusive_group()
    g.add_argument("-d", "--duration", type=float, help="seconds (default 5)")
    g.add_argument("-n", "--requests", type=int, help="total requests instead of a duration")
    p.add_argument("--expect", action="append", default=[],
                   help="substring every body must contain (repeatable); with --dialect the "
                        "content markers and the stream terminator are expected by default")
    p.add_argument("--no-expect", action="store_true", help="don't check bodies")
    p.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = p.parse_args(argv)

    url, body, headers, expect = a.url, b"", {}, [e.encode() for e in a.expect]
    if a.dialect:
        default_model = {"anthropic": "claude-bench", "openai-chat": "gpt-bench",
                         "openai-responses": "gpt-bench", "gemini": "gemini-bench"}
        req = client_request(a.dialect, a.stream, a.model or default_model[a.dialect])
        if urlsplit(url).path in ("", "/"):
            url = url.rstrip("/") + req.path
        body, headers = req.body, dict(req.headers)
        expect = expect or list(req.expect)
    if a.body:
        body = Path(a.body[1:]).read_bytes() if a.body.startswith("@") else a.body.encode()
        headers.setdefault("content-type", "application/json")
    for h in a.header:
        k, _, v = h.partition(":")
        headers[k.strip()] = v.strip()
    if a.no_expect:
        expect = []
    method = a.method or ("POST" if body else "GET")
    duration = a.duration if a.duration is not None or a.requests is not None else 5.0

    async def go() -> Result:
        return await run_load(url, body, headers, a.concurrency, duration, a.requests,
                              a.stream, method=method, expect=expect, timeout_s=a.timeout)

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        result = asyncio.run(go())
    else:
        result = uvloop.run(go())
    if a.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print(result)


if __name__ == "__main__":
    main()
