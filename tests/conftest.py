"""Shared fixtures: a real nats-server with JetStream per test (port 0 style: a free port and a
temporary store), and a connected client with every stream and bucket applied."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from runtime import bus
from runtime.natsd import EmbeddedNats

FIXTURES = Path(__file__).parent / "fixtures"
VECTORS = FIXTURES / "vectors"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats", log_file=tmp_path / "nats.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    client = await bus.connect(nats_server.url, name="test")
    await bus.wait_ready(client)
    await bus.ensure_all(client.jetstream())
    try:
        yield client
    finally:
        await client.drain()


def vector(name: str) -> bytes:
    """A recorded payload from tests/fixtures/vectors (source in the .src sidecar)."""
    return (VECTORS / name).read_bytes()
