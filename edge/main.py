"""The edge as a part: ``run`` serves it until told to stop (``runtime.launch`` calls it)."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

from edge.app import EdgeApp
from edge.server import make_config

__all__ = ["run"]


async def run(nats_url: str, home: Any, stop: asyncio.Event, *, host: str = "127.0.0.1",
              port: int = 18100, grace: float = 30.0) -> None:
    """Serve the edge until ``stop`` is set (the entry point ``runtime.launch`` calls).

    uvicorn catches SIGINT/SIGTERM while it serves: it stops taking connections, lets the
    requests in flight finish for up to ``grace`` seconds, then raises the signal again for
    the handler that was there before (``runtime.launch``'s, which stops the other parts of
    this process after the edge)."""
    server = uvicorn.Server(make_config(EdgeApp(nats_url, home=home), host, port, grace=grace))

    async def watch() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(watch())
    try:
        await server.serve()
    finally:
        watcher.cancel()
    if not server.started:
        raise SystemExit(f"the edge could not listen on {host}:{port}")
