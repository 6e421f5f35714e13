"""The sync part (``codeswitch up --join``): every ``TICK_S`` it makes sure the hub's stream
sources this device's facts and that this device's event log sources every other device's,
checks that the hub is the one this device synced with before, and writes what it saw to
``<home>/sync.json`` (``codeswitch status`` and ``codeswitch sync`` read it).

The data itself moves without it: the stream sources and KV mirrors are nats-server's, and
keep working (and catching up) while this part restarts."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from runtime import bus, sync
from runtime.names import PRESENCE_BUCKET
from runtime.presence import device_name

__all__ = ["run"]

log = logging.getLogger("codeswitch.sync")
TICK_S = 2.0
KICK_EVERY_S = 30.0  # a source that keeps failing is set up again at most this often


def _secret_check(home: Path) -> str | None:
    from runtime import secrets

    try:
        key = secrets.load_key(home)
    except secrets.SecretKeyError:
        return None
    return sync.secret_check_value(key) if key else None


async def tick(nc: Any, home: Path, domain: str, state: dict[str, Any],
               first: bool = False) -> dict[str, Any]:
    """One round; returns the new state (also written to ``<home>/sync.json``)."""
    now = time.time()
    new = {**state, "device": device_name(), "domain": domain, "checked": now}
    try:
        info = await sync.register(nc, domain, state.get("hub_created"), _secret_check(home))
    except sync.DivergedError as exc:
        if state.get("error") != str(exc):
            log.error("sync: %s", exc)
        new.update(connected=True, error=str(exc), diverged=True)
        return new
    except sync.HubError as exc:
        if state.get("connected", True):
            log.warning("sync: the hub is unreachable (%s); serving and recording here, "
                        "catching up when it returns", exc)
        new.update(connected=False, error=str(exc))
        return new
    created = info.get("created")
    # the hub is back, or this device (re)started, or a source between them failed: set the
    # sources up again now, not after nats-server's backoff (up to two minutes)
    if (state.get("connected") is False or first or (
            now - float(state.get("kicked") or 0) > KICK_EVERY_S
            and await sync.sources_failing(nc, domain, info))):
        await sync.kick_sources(nc, domain)
        new["kicked"] = now
        if state.get("connected") is False:
            log.warning("sync: the hub answers again; catching up")
    await sync.ensure_hub_bucket(nc, PRESENCE_BUCKET)  # memory on the hub: gone if it restarts
    devices = sync.hub_devices(info)
    peers = [d for d in devices if d != domain]
    if await sync.follow_peers(nc, peers):
        log.info("sync: following %s", ", ".join(peers))
    if await sync.register_bodies(nc, domain):  # some device's body log is on
        await sync.follow_peer_bodies(nc, peers)
    mismatch = sync.key_mismatch(info, _secret_check(home))
    if mismatch and state.get("key_warning") != mismatch:
        log.error("sync: %s", mismatch)
    new.update(connected=True, error=None, diverged=False, hub_created=created,
               key_warning=mismatch,
               devices=devices, peers=peers, hub_messages=(info.get("state") or {}).get(
                   "messages"), since=state.get("since") if state.get("connected") else now)
    return new


async def run(nats_url: str, home: Path, stop: asyncio.Event) -> None:
    domain = sync.device_domain(device_name())
    nc = await bus.connect(nats_url, name="sync")
    state = sync.read_state(home)
    try:
        await bus.wait_ready(nc)
        first = True
        while not stop.is_set():
            try:
                new = await tick(nc, home, domain, state, first)
                first = first and not new.get("connected")
            except Exception as exc:  # a bad answer: say so, try again next round
                log.warning("sync: %s", exc)
                new = {**state, "error": str(exc), "checked": time.time()}
            if {k: v for k, v in new.items() if k != "checked"} != {
                    k: v for k, v in state.items() if k != "checked"} or (
                    new["checked"] - state.get("checked", 0) > 10):
                sync.write_state(home, new)
            state = new
            try:
                await asyncio.wait_for(stop.wait(), TICK_S)
            except TimeoutError:
                pass
    finally:
        await nc.drain()
