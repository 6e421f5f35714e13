from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import bus
from runtime.natsd import EmbeddedNats
from tests.ledger.conftest import ask
from workers.ledger import service


@pytest.fixture
def ledger(nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A ledger service on its own loop in a thread, on a fresh data directory."""
    home = tmp_path / "home"
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete,
                              args=(service.run(nats_server.url, home, stop),), daemon=True)
    thread.start()

    async def ready() -> None:
        nc = await bus.connect(nats_server.url, name="probe")
        try:
            for _ in range(400):
                try:
                    await ask(nc, "status", timeout=1)
                    return
                except Exception:
                    await asyncio.sleep(0.025)
            raise TimeoutError
        finally:
            await nc.close()

    asyncio.run(ready())
    try:
        yield nats_server.url, home
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


async def caught_up(url: str) -> None:
    """Until the ledger has applied every fact on the event log."""
    nc = await bus.connect(url, name="probe")
    try:
        last = (await nc.jetstream().stream_info("CS_EVENTS")).state.last_seq
        for _ in range(400):
            if (await ask(nc, "status", timeout=2))["state"]["last_seq"] >= last:
                return
            await asyncio.sleep(0.025)
        raise TimeoutError
    finally:
        await nc.close()
