"""Who is here: this device's name, and the heartbeats that say a gateway is alive.

A *device* is the machine a gateway runs on: ``$CODESWITCH_DEVICE`` or the host name. Every
request's fact names the device that served it (``RequestCompleted.device``), so a session's
device is known, and with several devices joined (issue 13, phase 2) where it ran.

Heartbeats: each edge and router puts ``<device>.<part>`` into the KV bucket
``cs_presence`` (memory storage) every ``HEARTBEAT_S`` with a per-message TTL of
``HEARTBEAT_TTL_S``: a gateway that stops or dies drops out on its own, and the bucket's
delete markers tell watchers so. ``codeswitch online`` reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time

import msgspec
from nats.aio.client import Client as NATS

from runtime.names import PRESENCE_BUCKET
from runtime.process import device_name
from schemas.subjects import safe_token

__all__ = ["HEARTBEAT_S", "HEARTBEAT_TTL_S", "Heartbeat", "Presence", "device_name",
           "presence_key"]

log = logging.getLogger("codeswitch.presence")

HEARTBEAT_S = 5.0
HEARTBEAT_TTL_S = 15.0  # three missed beats: gone


class Presence(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The value of one heartbeat."""

    device: str
    part: str  # edge | router
    id: str  # the part's own id (edge id, router id)
    pid: int
    started: float
    ts: float
    version: str | None = None


def presence_key(device: str, part_id: str) -> str:
    """``<device>.<part id>``, each one KV key token."""
    return f"{safe_token(device)}.{safe_token(part_id)}"


class Heartbeat:
    """Puts this part's ``Presence`` every HEARTBEAT_S (a core NATS publish to the bucket's
    subject, no ack awaited: a beat lost to a reconnect is replaced 5 s later)."""

    def __init__(self, nc: NATS, part: str, part_id: str) -> None:
        self.nc = nc
        self.value = Presence(device=device_name(), part=part, id=part_id, pid=os.getpid(),
                              started=time.time(), ts=time.time(),
                              version=_version())
        self.subject = f"$KV.{PRESENCE_BUCKET}.{presence_key(device_name(), part_id)}"
        # a device joined to a hub (codeswitch up --join) beats on the hub's bucket too, so
        # every device's `online` sees it (runtime/sync.py); its own bucket stays local
        self.subjects = [self.subject]
        if os.environ.get("CODESWITCH_JOINED"):
            self.subjects.append(f"$JS.hub.API.{self.subject}")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Heartbeat:
        self._task = asyncio.create_task(self._beat(), name="presence")
        return self

    async def _beat(self) -> None:
        enc = msgspec.json.Encoder()
        headers = {"Nats-TTL": f"{int(HEARTBEAT_TTL_S)}s"}
        while True:
            value = msgspec.structs.replace(self.value, ts=time.time())
            for subject in self.subjects:
                try:
                    await self.nc.publish(subject, enc.encode(value), headers=headers)
                except Exception as exc:  # NATS away: the next beat tries again
                    log.debug("heartbeat not sent: %s", exc)
            await asyncio.sleep(HEARTBEAT_S)

    async def aclose(self) -> None:
        """Stop beating and say goodbye (the key is purged, so `online` drops it at once)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for subject in self.subjects:
            with contextlib.suppress(Exception):
                await self.nc.publish(subject, b"", headers={"KV-Operation": "PURGE",
                                                             "Nats-Rollup": "sub"})


@functools.cache
def _version() -> str | None:
    try:
        from importlib.metadata import version

        return version("codeswitch")
    except Exception:
        return None
