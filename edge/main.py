"""The edge as a part: ``run`` serves it until told to stop (``runtime.launch`` calls it)."""

from __future__ import annotations

import asyncio
import contextlib
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
    app = EdgeApp(nats_url, home=home)
    server = uvicorn.Server(make_config(app, host, port, grace=grace))

    async def watch() -> None:
        # stop asked (the launcher) or a signal uvicorn caught: the console's live streams
        # (SSE, open for as long as a page is) end at once instead of holding the shutdown
        # for the whole grace period
        while not stop.is_set() and not server.should_exit:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)
        app.stopping = True
        server.should_exit = True

    watcher = asyncio.create_task(watch())
    try:
        await server.serve()
    finally:
        watcher.cancel()
    if not server.started:
        raise SystemExit(f"the edge could not listen on {host}:{port}")
