"""Rebuilding the projection from the stream, run by the ledger service on ``cs.ledger.replay``.

1. Carry-over: rows older than the stream's first sequence (dropped by retention) are copied
   from the live file; the stream cannot re-derive them, and the start reply says so.
2. Rebuild: ``replay.read_stream`` (ack-less ordered consumer) folds the stream, up to its last
   sequence at the start, into a fresh file on its own thread; the live consumer keeps going.
3. Swap (full rebuild only): with the live consumer paused, the fresh file catches up to the
   live watermark exactly, then the service swaps it in (``os.replace``, atomic).

``since`` (stream time) or ``into`` (a path) write a separate file for analysis instead.
Progress is published as the JSON of ``ReplayJob`` on the request's ``progress`` subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS

from schemas.prices import PriceBook
from workers.ledger.projection import Rows
from workers.ledger.queries import QueryError
from workers.ledger.replay import fold, read_stream, stream_bounds
from workers.ledger.store import Store

__all__ = ["Rebuilder", "ReplayJob", "remove_db"]

log = logging.getLogger("codeswitch.ledger.rebuild")
T = TypeVar("T")


def remove_db(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


class ReplayJob(msgspec.Struct, kw_only=True):
    id: str
    target: str
    swap: bool
    since: float | None
    from_seq: int  # first sequence the stream still holds (the rebuild is exact from here)
    to_seq: int  # last sequence at the start
    from_ts: float | None  # stream time of from_seq
    carried_before_seq: int | None  # rows below this seq are copied from the live file
    older_rows: int  # requests among them
    state: str = "running"  # running | done | failed
    phase: str = "start"  # start | carry | replay | swap | done | failed
    seq: int = 0
    events: int = 0
    started_at: float = 0.0
    finished_at: float | None = None
    error: str | None = None


class Rebuilder:
    """One replay at a time, on behalf of the service that owns the live file."""

    def __init__(self, nc: NATS, home: Path, *,
                 live: Callable[[], Store],
                 on_db: Callable[[Callable[[], T]], Awaitable[T]],
                 paused: Callable[[], AbstractAsyncContextManager[None]],
                 swap_in: Callable[[Path], None],
                 prices: Callable[[], PriceBook]) -> None:
        self.nc = nc
        self.home = home
        self._live = live
        self._on_db: Callable[[Callable[[], Any]], Awaitable[Any]] = on_db
        self._paused = paused
        self._swap_in = swap_in
        self._prices = prices
        self.job: ReplayJob | None = None
        self._enc = msgspec.json.Encoder()
        self._task: asyncio.Task[None] | None = None

    async def start(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.job is not None and self.job.state == "running":
            raise QueryError(f"replay {self.job.id} is already running")
        since = float(params["since"]) if params.get("since") is not None else None
        into = params.get("into")
        swap = since is None and not into
        live = self._live().path
        if into:
            target = Path(into).expanduser().resolve()
        elif swap:
            target = live.with_name(live.name + ".rebuild")
        else:
            target = self.home / f"ledger-since-{time.strftime('%Y%m%d-%H%M%S')}.duckdb"
        if target == live.resolve():
            raise QueryError("cannot replay into the live ledger file; omit --into to rebuild it")
        if target.exists() and into and not params.get("overwrite"):
            raise QueryError(f"{target} exists (pass overwrite to replace it)")
        remove_db(target)
        bounds = await stream_bounds(self.nc.jetstream())
        carry_before = bounds.first_seq if (since is None and bounds.first_seq > 1
                                            and bounds.messages) else None
        older = 0
        if carry_before:
            older = await self._on_db(lambda: int(self._live().con.execute(
                "SELECT count(*) FROM requests WHERE seq < ?", [carry_before]
            ).fetchone()[0]))  # type: ignore[index]
        self.job = job = ReplayJob(
            id=os.urandom(4).hex(), target=str(target), swap=swap, since=since,
            from_seq=bounds.first_seq if bounds.messages else 0, to_seq=bounds.last_seq,
            from_ts=bounds.first_ts, carried_before_seq=carry_before, older_rows=older,
            started_at=time.time(),
        )
        self._task = asyncio.create_task(self._run(job, params.get("progress")))
        return msgspec.to_builtins(job)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self, job: ReplayJob, progress: str | None) -> None:
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(1, thread_name_prefix="ledger-rebuild")
        target = Path(job.target)
        fresh: Store | None = None
        last_sent = 0.0

        async def report(force: bool = False) -> None:
            nonlocal last_sent
            now = time.monotonic()
            if progress and (force or now - last_sent > 0.2):
                last_sent = now
                with contextlib.suppress(Exception):
                    await self.nc.publish(progress, self._enc.encode(job))

        async def progressed(rows: Rows) -> None:
            job.seq, job.events = rows.last_seq, job.events + rows.count
            await report()

        def on_thread(fn: Callable[[], T]) -> Awaitable[T]:
            return loop.run_in_executor(executor, fn)

        try:
            carried = 0
            if job.carried_before_seq:
                job.phase = "carry"
                await report(True)
                before = job.carried_before_seq
                carried = await self._on_db(lambda: self._live().copy_older_into(target, before))
            store = fresh = await on_thread(lambda: Store(target))
            first = self._live().state.first_seq if carried else 0
            await on_thread(lambda: store.mark(
                rebuilt_at=time.time(), replay_from_seq=job.from_seq,
                carried_before_seq=job.carried_before_seq, carried_rows=carried,
                since_ts=job.since, first_seq=first))
            job.phase = "replay"
            await report(True)
            await fold(read_stream(self.nc, until_seq=job.to_seq, start_time=job.since,
                                   start_seq=None if job.since is not None else job.from_seq),
                       store, self._prices, executor, progressed)
            if job.swap:
                job.phase = "swap"
                await report(True)
                async with self._paused():  # the live consumer waits here
                    live_seq = self._live().state.last_seq
                    if live_seq > store.state.last_seq:
                        await fold(read_stream(self.nc, until_seq=live_seq,
                                               start_seq=store.state.last_seq + 1),
                                   store, self._prices, executor, progressed)
                    await on_thread(store.close)
                    fresh = None
                    await self._on_db(lambda: self._swap_in(target))
            else:
                await on_thread(store.close)
                fresh = None
            job.state = job.phase = "done"
        except Exception as exc:
            log.exception("replay %s failed", job.id)
            job.state = job.phase = "failed"
            job.error = str(exc)
            if fresh is not None:
                with contextlib.suppress(Exception):
                    await on_thread(fresh.close)
            if job.swap:
                remove_db(target)
        finally:
            job.finished_at = time.time()
            executor.shutdown(wait=False)
            await report(True)
