"""A real gateway for tests: the edge under a real uvicorn Server on loopback and routers,
each in a background thread with its own event loop, against a real nats-server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import uvicorn

from codeswitch import admin
from edge.app import EdgeApp
from edge.server import Limits, make_config
from runtime import bus, names
from runtime.process import free_port
from schemas.config import GatewaySettings, ProviderConfig
from schemas.events import Event, decode_event
from workers.router.service import Router

T = TypeVar("T")


def run_nats(url: str, fn: Callable[[Any], Awaitable[T]]) -> T:
    async def main() -> T:
        nc = await bus.connect(url, name="test-helper")
        try:
            await bus.wait_ready(nc)
            await bus.ensure_all(nc.jetstream())
            return await fn(nc)
        finally:
            await nc.drain()

    return asyncio.run(main())


class _LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class RouterThread:
    def __init__(self, nats_url: str, **kwargs: Any) -> None:
        self.lt = _LoopThread("router")
        self.router = Router(nats_url, **kwargs)
        self.lt.run(self.router.startup())

    def stop(self) -> None:
        try:
            self.lt.run(self.router.shutdown(), timeout=30)
        finally:
            self.lt.close()


class EdgeThread:
    def __init__(self, nats_url: str, settings: GatewaySettings | None = None, *,
                 limits: Limits | None = None, grace: float = 5,
                 clock: Callable[[], float] = time.time) -> None:
        self.port = free_port()
        self.app = EdgeApp(nats_url, settings=settings, clock=clock)
        # the edge's real server: uvicorn with the connection limits of edge/server.py
        extra = {"limits": limits} if limits is not None else {}
        self.server = uvicorn.Server(make_config(self.app, "127.0.0.1", self.port, grace=grace,
                                                 **extra))
        self.thread = threading.Thread(target=self.server.run, name="edge", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("edge did not start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


class Gateway:
    def __init__(self, nats_url: str, *, routers: int = 1,
                 settings: GatewaySettings | None = None) -> None:
        self.nats_url = nats_url
        self.routers = [RouterThread(nats_url) for _ in range(routers)]
        self.edge = EdgeThread(nats_url, settings)
        self.url = self.edge.url

    def add_provider(self, provider: ProviderConfig) -> None:
        run_nats(self.nats_url, lambda nc: admin.put_provider(nc, provider))
        self.wait_providers(lambda names: provider.name in names)

    def remove_provider(self, name: str) -> None:
        run_nats(self.nats_url, lambda nc: admin.delete_provider(nc, name))
        self.wait_providers(lambda names: name not in names)

    def wait_providers(self, ok: Callable[[set[str]], bool], timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(ok(set(r.router.table.providers)) for r in self.routers):
                return
            time.sleep(0.01)
        raise AssertionError("routers did not see the provider change")

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def stop(self) -> None:
        self.edge.stop()
        for r in self.routers:
            r.stop()


def event_count(nats_url: str) -> int:
    async def count(nc: Any) -> int:
        return int((await nc.jetstream().stream_info(names.EVENTS_STREAM)).state.messages)

    return run_nats(nats_url, count)


def events(nats_url: str, n: int, timeout: float = 10,
           subject: str = ">") -> list[tuple[str, bytes, Event]]:
    """The first ``n`` facts in the event log (subject, raw bytes, decoded)."""

    async def fetch(nc: Any) -> list[tuple[str, bytes, Event]]:
        js = nc.jetstream()
        out: list[tuple[str, bytes, Event]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = await js.stream_info(names.EVENTS_STREAM)
            if info.state.messages >= n:
                break
            await asyncio.sleep(0.05)
        info = await js.stream_info(names.EVENTS_STREAM)
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(names.EVENTS_STREAM, seq)
            if subject == ">" or msg.subject.startswith(subject):
                out.append((msg.subject, msg.data or b"", decode_event(msg.data or b"")))
        return out

    return run_nats(nats_url, fetch)

