"""Running the parts. ``codeswitch up`` is a supervisor in the style of uvicorn's
multiprocess supervisor: it starts the embedded nats-server (unless --nats-url), applies the
stream/KV definitions and the config file, then runs each part as its own process (edge,
router, ledger, alerts), restarts a part that dies, and on SIGINT/SIGTERM stops them in order:
edge first (no new requests; in-flight ones finish), then routers (in-flight upstream calls
finish within the grace period), then the projection workers, then nats-server last.

Signal handlers only record the signal; the main loop does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codeswitch import bus
from codeswitch._process import free_port, pdeathsig_preexec
from codeswitch.natsd import EmbeddedNats
from codeswitch.runtime import run_file

__all__ = ["Part", "Supervisor", "SupervisorError", "run_edge", "run_worker", "WORKERS"]

log = logging.getLogger("codeswitch.supervisor")

# worker name -> module with `async def run(nats_url, home, stop)`
WORKERS = {
    "router": "workers.router.service",
    "ledger": "workers.ledger.service",
    "alerts": "workers.alerts.service",
}
EMBEDDED_NATS_PORT = 18122


def available_workers() -> list[str]:
    names = []
    for name, module in WORKERS.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(mod, "run"):
            names.append(name)
    return names


def _install_stop(stop: asyncio.Event, force: Callable[[], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    count = {"n": 0}

    def handle_signal() -> None:
        count["n"] += 1
        stop.set()
        if count["n"] > 1 and force is not None:
            force()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handle_signal)


async def _run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    _install_stop(stop, force=lambda: os._exit(1))
    await main(stop)


def run_worker(name: str, nats_url: str, home: Path) -> None:
    """Run one worker in this process until SIGINT/SIGTERM."""
    module = importlib.import_module(WORKERS[name])
    _use_uvloop()

    async def main(stop: asyncio.Event) -> None:
        await module.run(nats_url, home, stop)

    asyncio.run(_run_until_signal(main))


def run_edge(nats_url: str, host: str, port: int, *, grace: float = 30.0,
             with_router: bool = False) -> None:
    """Run the edge under uvicorn (httptools, uvloop). ``with_router`` also runs a router in
    the same event loop (the single-process mode)."""
    import uvicorn

    from edge.app import EdgeApp

    app = EdgeApp(nats_url)
    config = uvicorn.Config(
        app, host=host, port=port, loop="uvloop" if _has_uvloop() else "asyncio",
        http="httptools", lifespan="on", access_log=False, log_level="warning",
        timeout_graceful_shutdown=int(grace), timeout_keep_alive=75, backlog=4096,
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        router = None
        if with_router:
            from workers.router.service import Router

            router = Router(nats_url)
            await router.startup()
        try:
            await server.serve()
        finally:
            if router is not None:
                await router.shutdown()

    _use_uvloop()
    asyncio.run(main())


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _use_uvloop() -> None:
    if _has_uvloop():
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class SupervisorError(RuntimeError):
    """`codeswitch up` cannot run: the message says why."""


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket() as sock:
        # as uvicorn binds: TIME_WAIT sockets of a gateway that just stopped do not count, a
        # listening socket still does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SupervisorError(
                f"{host}:{port} is already in use ({exc.strerror}): is another codeswitch "
                "running? Stop it, or pick another port with --port") from None


@dataclass
class Part:
    name: str
    argv: list[str]
    order: int  # stop order: lower stops first
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            self.argv, env=env, start_new_session=True, preexec_fn=pdeathsig_preexec(),
            stdin=subprocess.DEVNULL,
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    def __init__(self, *, home: Path, host: str, port: int, nats_url: str | None,
                 routers: int = 1, single_process: bool = False, grace: float = 30.0,
                 on_ready: Callable[[dict[str, Any]], None] | None = None,
                 apply: Callable[[str], Awaitable[list[str]]] | None = None) -> None:
        self.home = home
        self.host = host
        self.port = port
        self.external_nats = nats_url
        self.routers = routers
        self.single_process = single_process
        self.grace = grace
        self.on_ready = on_ready
        self.apply = apply
        self.nats: EmbeddedNats | None = None
        self.parts: list[Part] = []
        self._signals: list[int] = []

    def handle_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def _start_nats(self) -> str:
        if self.external_nats:
            return self.external_nats
        port = EMBEDDED_NATS_PORT
        try:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            port = free_port()
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        self.nats = EmbeddedNats(self.home / "nats", port=port,
                                 log_file=self.home / "logs" / "nats.log")
        self.nats.start()
        return self.nats.url

    def _plan_parts(self, url: str) -> list[Part]:
        exe = [sys.executable, "-m", "codeswitch"]
        home = ["--home", str(self.home)]
        parts = [Part("edge", [*exe, "edge", "--nats-url", url, "--host", self.host,
                               "--port", str(self.port), "--grace", str(self.grace)]
                      + (["--with-router"] if self.single_process else []), order=0)]
        if not self.single_process:
            for i in range(self.routers):
                parts.append(Part(f"router-{i + 1}" if self.routers > 1 else "router",
                                  [*exe, "worker", "router", "--nats-url", url, *home],
                                  order=1))
        for name in available_workers():
            if name != "router":
                parts.append(Part(name, [*exe, "worker", name, "--nats-url", url, *home],
                                  order=2))
        return parts

    def run(self) -> int:
        self.home.mkdir(parents=True, exist_ok=True)
        _check_port_free(self.host, self.port)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle_signal)
        url = self._start_nats()
        try:
            changes = asyncio.run(self._prepare(url))
            env = {**os.environ, "CODESWITCH_HOME": str(self.home)}
            self.parts = self._plan_parts(url)
            for part in self.parts:
                part.start(env)
            if not self._wait_listening(timeout=30):
                raise SupervisorError(f"the edge did not start listening on {self.host}:"
                                      f"{self.port}; see the messages above")
            info = {"nats_url": url, "edge_url": f"http://{self.host}:{self.port}",
                    "pid": os.getpid(), "home": str(self.home), "changes": changes,
                    "embedded_nats": self.nats is not None,
                    "parts": {p.name: p.proc.pid for p in self.parts if p.proc}}
            run_file(self.home).write_text(json.dumps(info, indent=2))
            if self.on_ready and not self._signals:
                self.on_ready(info)
            while not self._signals:
                time.sleep(0.2)
                self._restart_dead(env)
                if self._crash_looping("edge"):
                    raise SupervisorError("the edge keeps exiting (5 times in a minute); "
                                          "see the messages above")
            return 0
        finally:
            self._stop_all()

    async def _prepare(self, url: str) -> list[str]:
        nc = await bus.connect(url, name="codeswitch-up", max_reconnect_attempts=5)
        try:
            await bus.wait_ready(nc)
            await bus.ensure_all(nc.jetstream())
            if self.apply is not None:
                return await self.apply(url)
            return []
        finally:
            await nc.drain()

    def _wait_listening(self, timeout: float) -> bool:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._signals:
            edge = self.parts[0]
            if not edge.alive:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    time.sleep(0.1)
                    return edge.alive  # our edge, not something else on the port
            except OSError:
                time.sleep(0.05)
        return False

    def _crash_looping(self, name: str) -> bool:
        return any(p.name == name and not p.alive and len(p.restarts) >= 5 for p in self.parts)

    def _restart_dead(self, env: dict[str, str]) -> None:
        now = time.monotonic()
        for part in self.parts:
            if part.alive or part.proc is None:
                continue
            part.restarts = [t for t in part.restarts if now - t < 60]
            if len(part.restarts) >= 5:
                continue  # crash loop: leave it down, the log says why
            log.warning("%s exited with %s; restarting", part.name, part.proc.returncode)
            part.restarts.append(now)
            part.start(env)

    def _stop_all(self) -> None:
        for order in sorted({p.order for p in self.parts}):
            group = [p for p in self.parts if p.order == order and p.alive]
            for part in group:
                assert part.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    part.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.grace + 5
            for part in group:
                assert part.proc is not None
                try:
                    part.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    part.proc.kill()
                    part.proc.wait()
        if self.nats is not None:
            self.nats.stop()
        with contextlib.suppress(OSError):
            run_file(self.home).unlink()
