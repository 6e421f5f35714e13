"""Deleting a session for real (``cs.ledger.session_delete``, what ``codeswitch sessions
delete`` asks), run by the ledger service: the one process that holds the DuckDB file.

In this order, so that a failure at any step leaves a delete that can simply be run again:

1. wait until the live projection has every fact the stream holds (a fact of the session not
   yet folded would escape the erase);
2. read the session's bill (``sessions.bill``): every request's usage and cost without ids or
   text, the stream sequences of all its facts, its request ids;
3. erase its facts from CS_EVENTS, one by one by sequence (overwritten on disk,
   ``runtime.erase``), and its entries from the body log (chunks and metadata);
4. publish the ``SessionDeleted`` tombstone(s) carrying the bill (``session.deleted``); the
   live projection folds it like any fact: the session's rows go, the bill's rows come
   (``Store._sessions``), and a replay does the same from the log;
5. once folded, rewrite the DuckDB file (``Store.compact``) and drop the last replay's backup,
   so that no deleted byte survives in a file.

Until step 4 the ledger still shows the session; after it, nothing of it but the bill.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from nats.aio.client import Client as NATS

from runtime.sync import erase_bodies, erase_facts
from schemas.events import DeletedRequest, SessionDeleted, encode_event, new_id
from schemas.subjects import SESSION_DELETED
from workers.ledger import sessions
from workers.ledger.queries import QueryError
from workers.ledger.replay import stream_bounds
from workers.ledger.store import Store

__all__ = ["ACTIVE_GUARD_S", "PART_REQUESTS", "SessionDeleter", "tombstones"]

log = logging.getLogger("codeswitch.ledger.delete")
T = TypeVar("T")

ACTIVE_GUARD_S = 60.0  # a session seen this recently may have a request still running
PART_REQUESTS = 500  # requests per tombstone (~150 bytes each: far below any max_payload)


def tombstones(session: str, bill: list[DeletedRequest], *, deleted_by: str | None,
               now: float) -> list[SessionDeleted]:
    """The tombstone facts of a session: its bill in parts of ``PART_REQUESTS``."""
    chunks = [bill[i:i + PART_REQUESTS] for i in range(0, len(bill), PART_REQUESTS)] or [[]]
    hashed = sessions.session_hash(session)
    return [SessionDeleted(id=new_id(), ts=now, session_hash=hashed, requests=chunk,
                           part=n, parts=len(chunks), deleted_by=deleted_by)
            for n, chunk in enumerate(chunks, 1)]


class SessionDeleter:
    """Deletes sessions on behalf of the service that owns the live file."""

    def __init__(self, nc: NATS, *, live: Callable[[], Store],
                 on_db: Callable[[Callable[[], T]], Awaitable[T]],
                 paused: Callable[[], AbstractAsyncContextManager[None]],
                 compact: Callable[[], None]) -> None:
        self.nc = nc
        self._live = live
        self._on_db: Callable[[Callable[[], Any]], Awaitable[Any]] = on_db
        self._paused = paused
        self._compact = compact
        self._lock = asyncio.Lock()  # one delete at a time

    async def delete(self, params: dict[str, Any]) -> dict[str, Any]:
        session = params.get("session")
        if not isinstance(session, str) or not session:
            raise QueryError("session: the id of the session to delete")
        async with self._lock:
            return await self._delete(session, force=bool(params.get("force")),
                                      by=params.get("by") or f"local:{getpass.getuser()}")

    async def _wait_folded(self, seq: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._live().state.last_seq < seq:
            if time.monotonic() > deadline:
                raise QueryError(f"the ledger did not reach the event log's sequence {seq} "
                                 f"within {timeout:.0f} s; nothing was deleted, try again")
            await asyncio.sleep(0.05)

    async def _delete(self, session: str, *, force: bool, by: str) -> dict[str, Any]:
        t0 = time.monotonic()
        js = self.nc.jetstream()
        await self._wait_folded((await stream_bounds(js)).last_seq, 10.0)
        bill = await self._on_db(lambda: sessions.bill(self._live().con, session))
        if not bill["request_ids"]:
            raise QueryError(f"no session {session!r} in the ledger (`codeswitch sessions "
                             "list` shows them)")
        idle = time.time() - (bill["last_seen"] or 0.0)
        if idle < ACTIVE_GUARD_S and not force:
            raise QueryError(
                f"session {session!r} is active: its last request ended {idle:.0f} s ago. A "
                "request still running would be recorded after the delete and show up as the "
                "session again. Wait a minute (or stop the client), or pass --force")
        facts = await erase_facts(self.nc, bill["seqs"])
        bodies = 0
        for rid in bill["request_ids"]:  # the body log, the other devices' bodies, the hub
            bodies += bool(await erase_bodies(self.nc, rid))
        tombs = tombstones(session, bill["requests"], deleted_by=by, now=time.time())
        last = 0
        for tomb in tombs:
            ack = await js.publish(SESSION_DELETED, encode_event(tomb),
                                   headers={"Nats-Msg-Id": tomb.id}, timeout=10.0)
            last = max(last, ack.seq)
        await self._wait_folded(last, 30.0)
        async with self._paused():
            await self._on_db(self._compact)
        log.info("session deleted: %d requests, %d facts and %d bodies erased",
                 len(bill["request_ids"]), facts, bodies)
        return {
            "session": session,
            "requests": len(bill["request_ids"]),
            "facts_erased": facts,
            "bodies_erased": bodies,
            "tombstones": [t.id for t in tombs],
            "tombstone_seq": last,
            "total_tokens": bill["total_tokens"],
            "cost": bill["cost"],
            "seconds": round(time.monotonic() - t0, 3),
        }
