"""Heartbeats in cs_presence: a part that dies without a word drops out when its per-message
TTL runs out (the server removes the entry and tells watchers), one that stops says goodbye."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from nats.aio.client import Client as NATS

from runtime import bus, names, presence


async def _keys(nc: NATS) -> set[str]:
    kv = await nc.jetstream().key_value(names.PRESENCE_BUCKET)
    return set(await bus.read_bucket(kv))


async def test_a_dead_part_expires_and_a_stopped_one_leaves(
        nc: NATS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presence, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(presence, "HEARTBEAT_TTL_S", 1.0)
    kv = await nc.jetstream().key_value(names.PRESENCE_BUCKET)
    watcher = await kv.watchall()
    dead = presence.Heartbeat(nc, "router", "router-dead").start()
    alive = presence.Heartbeat(nc, "edge", "edge-1").start()
    await asyncio.sleep(0.5)
    key_dead = presence.presence_key(presence.device_name(), "router-dead")
    key_alive = presence.presence_key(presence.device_name(), "edge-1")
    assert await _keys(nc) == {key_dead, key_alive}
    value = msgspec.json.decode((await kv.get(key_alive)).value or b"", type=presence.Presence)
    assert (value.device, value.part, value.id) == (presence.device_name(), "edge", "edge-1")

    assert dead._task is not None
    dead._task.cancel()  # killed: no goodbye
    removed = None
    async with asyncio.timeout(5):
        async for entry in watcher:
            if entry is not None and entry.key == key_dead and entry.operation == "PURGE":
                removed = entry
                break
    assert removed is not None  # the server's delete marker, within the TTL
    assert await _keys(nc) == {key_alive}

    await alive.aclose()  # stopped: gone at once
    assert await _keys(nc) == set()
    await watcher.stop()
