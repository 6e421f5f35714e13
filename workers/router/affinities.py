"""Session affinity, the NATS side: every router keeps a watched copy of the KV bucket
``cs_affinity`` (``affinity.AffinityTable``) and writes to it when a session's provider
changes or its entry grows old.

A write is one core NATS publish to the bucket's subject with a per-message TTL (``Nats-TTL``,
the ``affinity_ttl_s`` setting; nats-server 2.11+), no ack awaited, after the answer: never on
the request path. The bucket is in memory (nothing of a session on disk) and puts a delete
marker when an entry expires, so the watchers drop it too; a sweep every minute catches what a
disconnected watcher missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from runtime.names import AFFINITY_BUCKET
from workers.router.affinity import AffinityTable

__all__ = ["Affinities"]

log = logging.getLogger("codeswitch.router.affinity")
SWEEP_S = 60.0


class Affinities:
    """The table, kept in step with the bucket, and the writes to it."""

    def __init__(self, table: AffinityTable | None = None) -> None:
        self.table = table or AffinityTable()
        self.nc: NATS | None = None
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ttl = 3600.0

    async def start(self, nc: NATS, kv: KeyValue) -> None:
        self.nc = nc
        self._tasks = [asyncio.create_task(self._follow(kv), name="affinity"),
                       asyncio.create_task(self._sweep(), name="affinity-sweep")]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _follow(self, kv: KeyValue) -> None:
        """Every entry (the latest per key, then each change); again after a reconnect. The
        initial values come from the watch itself: one missed on a race is a session routed
        by the strategy once, no more."""
        while True:
            try:
                watcher = await kv.watchall()
                async for entry in watcher:
                    if entry is None:  # the initial values are in
                        self.ready.set()
                        continue
                    deleted = entry.operation in ("DEL", "PURGE")
                    self.table.apply(entry.key, None if deleted else entry.value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("following %s ended (%s); again", AFFINITY_BUCKET, exc)
                await asyncio.sleep(0.5)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            self.table.sweep(self._ttl, time.time())

    def sticky(self, session: str | None, model: str, ttl: float) -> str | None:
        return self.table.sticky(session, model, ttl, time.time())

    async def served(self, session: str, model: str, provider: str, ttl: float) -> None:
        """``provider`` answered this session+model: tell the other routers when needed."""
        self._ttl = ttl
        write = self.table.served(session, model, provider, ttl, time.time())
        if write is None or self.nc is None:
            return
        key, value = write
        try:
            await self.nc.publish(f"$KV.{AFFINITY_BUCKET}.{key}", value,
                                  headers={"Nats-TTL": f"{max(1, round(ttl))}s"})
        except Exception as exc:  # NATS away: this router still knows; the others re-learn
            log.debug("affinity not shared: %s", exc)
