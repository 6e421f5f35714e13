"""Hostile clients against a real edge (uvicorn, ``edge.server.make_config``) on real sockets:
huge headers, silent and half-sent connections, half-sent bodies, JSON nested far too deep,
bad bytes. Each gets a 4xx in the client's dialect or a closed connection within the limits,
never a 5xx and never memory that grows with what the client sends (issue 10,
docs/hostile-input.md). The limits are small here so the file runs in seconds.
"""

from __future__ import annotations

import json
import logging
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from codeswitch import admin
from edge.server import LINGER, Limits
from runtime.natsd import EmbeddedNats
from schemas.config import GatewaySettings, ProviderConfig
from schemas.errors import anthropic_type, gemini_status, openai_type
from tests.e2e.gateway import EdgeThread, RouterThread, run_nats
from tests.fakes.upstream import Behavior, FakeUpstream

LIMITS = Limits(max_header_bytes=16 * 1024, header_timeout=0.5, idle_timeout=1.0,
                body_timeout=0.5, max_connections=2000)
PATHS = {
    "anthropic": "/v1/messages",
    "openai-chat": "/v1/chat/completions",
    "openai-responses": "/v1/responses",
    "gemini": "/v1beta/models/x:generateContent",
}
DIALECTS = tuple(PATHS)
MODEL = "claude-hostile-1"
SLACK = 1.5  # seconds a timeout may fire late on a loaded 2-core CI machine


class EdgeServer(EdgeThread):
    """The tests' real edge (tests/e2e/gateway.py) with the limits under test."""

    def __init__(self, nats_url: str, limits: Limits) -> None:
        super().__init__(nats_url, GatewaySettings(), limits=limits, grace=2)

    def connections(self) -> int:
        return len(self.server.server_state.connections)


class World:
    def __init__(self, nats: EmbeddedNats, fake: FakeUpstream, router: RouterThread,
                 edge: EdgeServer) -> None:
        self.nats, self.fake, self.router, self.edge = nats, fake, router, edge


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    nats = EmbeddedNats(tmp_path_factory.mktemp("nats") / "nats")
    nats.start()
    fake = FakeUpstream("anthropic").start()
    router = RouterThread(nats.url)
    edge = None
    try:
        provider = ProviderConfig(name="fake", dialect="anthropic", base_url=fake.base_url,
                                  api_key="sk-fake", models=["claude-*"])
        run_nats(nats.url, lambda nc: admin.put_provider(nc, provider))
        deadline = time.monotonic() + 10
        while "fake" not in router.router.table.providers:
            assert time.monotonic() < deadline, "the router did not see the provider"
            time.sleep(0.01)
        edge = EdgeServer(nats.url, LIMITS)
        yield World(nats, fake, router, edge)
    finally:
        if edge is not None:
            edge.stop()
        router.stop()
        fake.stop()
        nats.stop()


# -- helpers ----------------------------------------------------------------------------------

def connect(port: int, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (a reset after its response counts as closed)."""
    out = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not data:
            return out
        out += data


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    headers = {k.lower(): v for k, v in headers.items()}
    if "content-length" in headers:
        body = body[:int(headers["content-length"])]
    return int(lines[0].split(" ")[1]), headers, body


def assert_dialect_error(dialect: str, status: int, body: bytes) -> dict[str, object]:
    doc = json.loads(body)
    err = doc["error"]
    assert isinstance(err["message"], str) and err["message"]
    if dialect == "anthropic":
        assert doc["type"] == "error" and err["type"] == anthropic_type(status)
    elif dialect == "gemini":
        assert err["code"] == status and err["status"] == gemini_status(status)
    else:
        assert err["type"] == openai_type(status) and "param" in err
    return doc  # type: ignore[no-any-return]


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def request_head(dialect: str, length: int, *, version: str = "1.1") -> bytes:
    return (f"POST {PATHS[dialect]} HTTP/{version}\r\nHost: edge\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def simple_body(dialect: str) -> bytes:
    if dialect == "gemini":
        return b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'
    if dialect == "openai-responses":
        return json.dumps({"model": MODEL, "input": "hi"}).encode()
    return json.dumps({"model": MODEL, "max_tokens": 16,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()


def deep_body(dialect: str, depth: int) -> bytes:
    nest = "[" * depth + "]" * depth
    if dialect == "gemini":
        return f'{{"contents":{nest}}}'.encode()
    field = "input" if dialect == "openai-responses" else "messages"
    return f'{{"model":"{MODEL}","stream":false,"{field}":{nest}}}'.encode()


# -- the request head -------------------------------------------------------------------------

def test_32_mb_of_headers_get_a_431_quickly_and_memory_stays_flat(world: World) -> None:
    sock = connect(world.edge.port)
    before = rss_bytes()
    started = time.monotonic()
    sent = 0
    chunk = b"a" * 65536
    try:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: edge\r\nX-Padding: ")
        for _ in range(512):  # 32 MB in one header value
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the edge closed after answering: what it should do
    grown = rss_bytes() - before
    response = read_all(sock)
    elapsed = time.monotonic() - started
    sock.close()
    assert grown < 8 * 1024 * 1024, f"edge memory grew by {grown / 1e6:.1f} MB"
    assert elapsed < 10, "the edge took too long to end it"
    if response:  # a reset may destroy the answer; when it arrived, it is a 431
        status, headers, body = parse(response)
        assert status == 431 and headers.get("connection") == "close"
        assert_dialect_error("anthropic", 431, body)
    else:
        assert sent < 32 * 1024 * 1024


@pytest.mark.parametrize("dialect", DIALECTS)
def test_oversized_head_is_a_431_in_the_dialect(world: World, dialect: str) -> None:
    sock = connect(world.edge.port)
    head = (f"POST {PATHS[dialect]} HTTP/1.1\r\nHost: edge\r\n"
            f"X-Big: {'b' * LIMITS.max_header_bytes}\r\n\r\n").encode()
    sock.sendall(head)
    status, _, body = parse(read_all(sock))
    sock.close()
    assert status == 431
    assert "16384 bytes" in str(assert_dialect_error(dialect, 431, body))


def test_many_headers_just_under_the_limit_are_served(world: World) -> None:
    headers = {f"x-h{i}": "v" * 100 for i in range(100)}  # ~11 KB of head
    with httpx.Client(base_url=world.edge.url) as client:
        r = client.get("/health", headers=headers)
    assert r.status_code == 200


def test_a_silent_connection_is_closed_after_the_idle_timeout(world: World) -> None:
    sock = connect(world.edge.port)
    started = time.monotonic()
    assert read_all(sock) == b""
    elapsed = time.monotonic() - started
    sock.close()
    assert LIMITS.idle_timeout * 0.9 <= elapsed < LIMITS.idle_timeout + SLACK


def test_a_keep_alive_connection_is_closed_after_the_idle_timeout(world: World) -> None:
    sock = connect(world.edge.port)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: edge\r\n\r\n")
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert read_all(sock) == b""
    elapsed = time.monotonic() - started
    sock.close()
    assert LIMITS.idle_timeout * 0.9 <= elapsed < LIMITS.idle_timeout + SLACK


@pytest.mark.parametrize("partial", [
    b"P",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Len",
])
def test_half_sent_headers_get_a_408_after_the_header_timeout(world: World,
                                                              partial: bytes) -> None:
    sock = connect(world.edge.port)
    started = time.monotonic()
    sock.sendall(partial)
    response = read_all(sock)
    elapsed = time.monotonic() - started
    sock.close()
    assert LIMITS.header_timeout * 0.9 <= elapsed < LIMITS.header_timeout + SLACK
    status, headers, body = parse(response)
    assert status == 408 and headers["connection"] == "close"
    # the dialect of the path when the request line got that far
    assert_dialect_error("openai-chat", 408, body)


def test_a_head_trickled_byte_by_byte_is_cut_at_the_header_timeout(world: World) -> None:
    """The header timeout is for the whole head, not per byte (slow loris)."""
    sock = connect(world.edge.port)
    started = time.monotonic()
    answer = b""
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        for byte in b"GET /health HTTP/1.1\r\nHost: edge\r\nX-Slow: " + b"z" * 200:
            if sel.select(timeout=0.05):  # the edge answered
                answer = read_all(sock)
                break
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
    elapsed = time.monotonic() - started
    sock.close()
    assert LIMITS.header_timeout * 0.9 <= elapsed < LIMITS.header_timeout + SLACK
    assert not answer or parse(answer)[0] == 408


def test_1000_idle_and_half_sent_connections_are_all_closed(world: World) -> None:
    edge = world.edge
    before = rss_bytes()
    socks: list[socket.socket] = []
    try:
        for i in range(1000):
            sock = connect(edge.port)
            if i % 2:  # half: a request line and part of a header
                sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: edge\r\nX-Part")
            socks.append(sock)
        held = rss_bytes() - before
        started = time.monotonic()
        sel = selectors.DefaultSelector()
        for sock in socks:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        open_ = set(socks)
        deadline = started + LIMITS.idle_timeout + SLACK + 2
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.1):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    data = b""
                if not data:
                    sel.unregister(sock)
                    open_.discard(sock)
        sel.close()
        assert not open_, f"{len(open_)} of 1000 connections still open"
        assert time.monotonic() - started < LIMITS.idle_timeout + SLACK + 2
        assert held < 64 * 1024 * 1024, f"1000 connections held {held / 1e6:.1f} MB"
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + LINGER + SLACK
    while edge.connections() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert edge.connections() == 0


def test_pipelined_requests_are_all_answered(world: World) -> None:
    sock = connect(world.edge.port)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: edge\r\n\r\n" * 3
                 + b"GET /health HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
    response = read_all(sock)
    sock.close()
    assert response.count(b"HTTP/1.1 200") == 4


def test_oversized_pipelined_head_behind_a_stream_ends_the_connection_quietly(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.fake.push(Behavior(chunks=4, chunk_delay=0.2))
    body = json.dumps({"model": MODEL, "max_tokens": 16, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    sock = connect(world.edge.port)
    sock.sendall(request_head("anthropic", len(body)) + body)
    response = sock.recv(65536)  # the stream is under way
    sock.sendall(b"GET /health HTTP/1.1\r\nX-Big: " + b"q" * LIMITS.max_header_bytes)
    response += read_all(sock)
    sock.close()
    assert response.startswith(b"HTTP/1.1 200")  # the stream started, then was cut
    assert b"HTTP/1.1 431" not in response  # nothing written into the middle of it
    with httpx.Client(base_url=world.edge.url) as client:
        assert client.get("/health").status_code == 200
    time.sleep(1.0)  # the stream's remaining events arrive at the edge and are dropped
    assert not errors_logged(caplog)


def test_garbage_request_line_is_a_400_not_a_500(world: World) -> None:
    sock = connect(world.edge.port)
    sock.sendall(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 not http\r\n\r\n")
    response = read_all(sock)
    sock.close()
    assert response.startswith(b"HTTP/1.1 400")


# -- bodies -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dialect", DIALECTS)
def test_half_sent_body_is_a_408_in_the_dialect(world: World, dialect: str) -> None:
    sock = connect(world.edge.port, timeout=LIMITS.body_timeout + LINGER + SLACK + 1)
    body = simple_body(dialect)
    started = time.monotonic()
    sock.sendall(request_head(dialect, len(body)) + body[:10])
    response = read_all(sock)
    elapsed = time.monotonic() - started
    sock.close()
    assert elapsed < LIMITS.body_timeout + LINGER + SLACK
    status, _, payload = parse(response)
    assert status == 408
    assert_dialect_error(dialect, 408, payload)


def test_a_slow_body_that_keeps_moving_is_served(world: World) -> None:
    """The body timeout is per chunk: a body arriving over several body timeouts is fine."""
    body = simple_body("anthropic")
    sock = connect(world.edge.port)
    sock.sendall(request_head("anthropic", len(body)))
    step = len(body) // 4 + 1
    for i in range(0, len(body), step):
        time.sleep(LIMITS.body_timeout * 0.5)
        sock.sendall(body[i:i + step])
    status, _, payload = parse(sock.recv(65536))
    sock.close()
    assert status == 200, payload
    assert json.loads(payload)["type"] == "message"


def test_a_stream_longer_than_every_timeout_is_not_cut(world: World) -> None:
    """Timeouts bound what the client sends, never the answer."""
    world.fake.push(Behavior(chunks=8, chunk_delay=0.3))  # ~2.4 s of stream
    body = json.dumps({"model": MODEL, "max_tokens": 16, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})
    with httpx.Client(base_url=world.edge.url, timeout=20) as client:
        r = client.post("/v1/messages", content=body,
                        headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert b"event: message_stop" in r.content


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_deep_nesting_is_a_400_in_the_dialect(world: World, dialect: str, depth: int,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with httpx.Client(base_url=world.edge.url, timeout=20) as client:
        r = client.post(PATHS[dialect], content=deep_body(dialect, depth),
                        headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text[:300]
    assert "nested too deeply" in str(assert_dialect_error(dialect, 400, r.content))
    assert not errors_logged(caplog)  # it was a RecursionError traceback per request


def test_ordinary_nesting_still_goes_through(world: World) -> None:
    nested: object = "leaf"
    for _ in range(60):
        nested = {"a": [nested]}
    body = json.dumps({"model": MODEL, "max_tokens": 16, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f",
                                           "input": {"deep": nested}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": "ok"}]}]})
    with httpx.Client(base_url=world.edge.url, timeout=20) as client:
        r = client.post("/v1/messages", content=body)
    assert r.status_code == 200, r.text[:300]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_invalid_utf8_body_is_never_a_5xx(world: World, dialect: str) -> None:
    """In a field the edge reads (model): its 400. Anywhere else the edge does not look (it
    skips what it does not need): a translating router's 400, or the provider's answer."""
    body = simple_body(dialect).replace(b"hi", b"h\xff\xfei")
    with httpx.Client(base_url=world.edge.url, timeout=20) as client:
        anywhere = client.post(PATHS[dialect], content=body)
        model = client.post(PATHS[dialect], content=body.replace(
            MODEL.encode(), b"claude-\xc3\x28"))
    assert anywhere.status_code < 500, anywhere.text[:300]
    assert model.status_code < 500
    if dialect != "gemini":  # Gemini's model is in the path
        assert model.status_code == 400
        assert_dialect_error(dialect, 400, model.content)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", ""])
def test_wrong_content_type_is_no_5xx(world: World, content_type: str) -> None:
    with httpx.Client(base_url=world.edge.url, timeout=20) as client:
        r = client.post("/v1/messages", content=simple_body("anthropic"),
                        headers={"content-type": content_type})
        form = client.post("/v1/messages", data={"model": MODEL, "messages": "x"})
    assert r.status_code == 200  # the body is what counts, and it is a valid request
    assert form.status_code == 400
    assert_dialect_error("anthropic", 400, form.content)


def test_http_1_0_requests_are_served_and_closed(world: World) -> None:
    body = simple_body("anthropic")
    sock = connect(world.edge.port)
    sock.sendall(request_head("anthropic", len(body), version="1.0") + body)
    response = read_all(sock)  # HTTP/1.0 without keep-alive: the edge closes after answering
    sock.close()
    status, _, payload = parse(response)
    assert status == 200 and json.loads(payload)["type"] == "message"
    sock = connect(world.edge.port)
    sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
    assert parse(read_all(sock))[0] == 200
    sock.close()


def test_body_on_a_route_that_does_not_read_it_ends_the_connection(world: World) -> None:
    """A 404 answered before the declared body arrived: the rest is not waited for."""
    sock = connect(world.edge.port)
    started = time.monotonic()
    sock.sendall(b"POST /v2/nothing HTTP/1.1\r\nHost: edge\r\nContent-Length: 100000\r\n\r\n"
                 + b"x" * 100)
    response = read_all(sock)
    sock.close()
    assert parse(response)[0] == 404
    assert time.monotonic() - started < LINGER + SLACK


# -- connections ------------------------------------------------------------------------------

def test_connections_above_the_limit_get_a_503_and_are_closed(world: World) -> None:
    edge = EdgeServer(world.nats.url, Limits(max_connections=4, idle_timeout=30))
    held: list[socket.socket] = []
    try:
        for _ in range(4):
            held.append(connect(edge.port))
        deadline = time.monotonic() + 5
        while edge.connections() < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        extra = connect(edge.port)
        response = read_all(extra)
        extra.close()
        status, headers, body = parse(response)
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body)["error"]["message"]
        held.pop().close()  # a slot frees up: the next connection is served
        deadline = time.monotonic() + 5
        while edge.connections() >= 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with httpx.Client(base_url=edge.url) as client:
            assert client.get("/health").status_code == 200
    finally:
        for sock in held:
            sock.close()
        edge.stop()
