"""A whole gateway for the console's tests: a real nats-server, the edge under uvicorn (with a
data directory, so literal provider keys can be sealed), a router, the ledger, and a fake
Anthropic upstream. Module-scoped: starting it costs seconds."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from edge.app import EdgeApp
from edge.server import make_config
from runtime import secrets
from runtime.natsd import EmbeddedNats
from runtime.process import free_port
from schemas.config import GatewaySettings
from tests.e2e.conftest import provider_for
from tests.e2e.gateway import RouterThread, run_nats
from tests.e2e.test_sessions import LedgerThread
from tests.fakes.upstream import FakeUpstream

T = TypeVar("T")
BODY = {"model": "claude-opus-4-8", "max_tokens": 8,
        "messages": [{"role": "user", "content": "hello console"}]}


class World:
    def __init__(self, tmp: Path) -> None:
        self.nats = EmbeddedNats(tmp / "nats")
        self.nats.start()
        self.nats_url = self.nats.url
        self.fake = FakeUpstream("anthropic").start()
        self.home = tmp / "home"
        self.home.mkdir()
        secrets.use_home(self.home)  # as runtime.launch does: the router decrypts with it
        self.router = RouterThread(self.nats_url)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_edge()
        self.ledger = LedgerThread(self.nats_url, tmp / "ledger-home")
        from codeswitch import admin
        run_nats(self.nats_url, lambda nc: admin.put_provider(nc, provider_for(self.fake)))
        deadline = time.monotonic() + 5
        while "anthropic" not in self.router.router.table.providers:
            assert time.monotonic() < deadline
            time.sleep(0.01)

    def start_edge(self) -> None:
        self.app = EdgeApp(self.nats_url, settings=GatewaySettings(body_log=True),
                           home=self.home)
        self.server = uvicorn.Server(make_config(self.app, "127.0.0.1", self.port, grace=2))
        self.thread = threading.Thread(target=self.server.run, name="edge", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "edge did not start"
            time.sleep(0.01)

    def stop_edge(self) -> None:
        self.app.stopping = True  # as edge.main does: the console's live streams end
        self.server.should_exit = True
        self.thread.join(15)

    def on_nats(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(nc)`` on a connection of its own, in a thread (Playwright's sync API keeps
        an event loop running in the test's thread)."""
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(run_nats, self.nats_url, fn).result(60)

    def llm(self, key: str | None = None, session: str | None = None,
            model: str = "claude-opus-4-8") -> httpx.Response:
        headers = {"x-api-key": key or "local"}
        if session:
            headers["x-codeswitch-session"] = session
        with httpx.Client(base_url=self.url, timeout=30) as c:
            return c.post("/v1/messages", json={**BODY, "model": model}, headers=headers)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)

    def stop(self) -> None:
        self.stop_edge()
        self.ledger.stop()
        self.router.stop()
        self.fake.stop()
        self.nats.stop()
        secrets.use_home(None)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("console"))
    try:
        yield w
    finally:
        w.stop()


def wait_for(check: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]
