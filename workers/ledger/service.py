"""The ledger process: folds CS_EVENTS into DuckDB and answers ``cs.ledger.<query>`` requests.

It is the only process that opens the DuckDB file. Every DuckDB call of the live file runs on
one dedicated thread (DuckDB connections are not for concurrent use), so NATS traffic keeps
flowing while a batch commits or a query scans.

Consuming: a durable pull consumer (``ledger-<hash of host and data directory>``, its own,
so that several ledgers can follow one stream; AckPolicy ALL) is recreated on start from the
file's watermark + 1 (the file is the authority on what has been applied). Each fetch of up to
``batch`` messages becomes one transaction; the last message is acked after the commit, which
acks the whole batch. A crash between commit and ack means a redelivery that the watermark
drops. Several ledgers (each its own data directory and DuckDB file) fold the same facts into
identical tables, and queries go to whichever answers first (queue group ``cs-ledger``).

Replay (``cs.ledger.replay``, what ``codeswitch replay`` sends) is run here too, by
``rebuild.Rebuilder``, so no second process ever opens the live file; the service lends it a
pause of the live consumer and the final swap (``_swap_in``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from runtime import bus, memory, names
from runtime.prices import LivePrices
from runtime.pull import BatchPuller, ConsumerGoneError, parse_reply
from runtime.sync import erase_bodies, erase_facts, peer_domain
from schemas.prices import PriceBook, PriceError
from schemas.subjects import LEDGER_QUERY_PREFIX, SESSION_DELETED
from workers.ledger import sessions
from workers.ledger.deletion import SessionDeleter
from workers.ledger.projection import TABLES, Rows, project
from workers.ledger.queries import QUERIES, Filter, QueryError, heatmap, table_counts
from workers.ledger.rebuild import Rebuilder, remove_db
from workers.ledger.replay import stream_bounds
from workers.ledger.store import Store, StoreError
from workers.ledger.wire import encode_reply

__all__ = ["DB_FILE", "LedgerService", "db_path", "main", "run"]

log = logging.getLogger("codeswitch.ledger")

DB_FILE = "ledger.duckdb"
T = TypeVar("T")
# DuckDB keeps what a connection used until it closes (Store.reopen): the live store is
# reopened once the stream has been quiet this long after at least REOPEN_AFTER events, and
# during sustained traffic every REOPEN_EVERY events (a checkpoint and an open)
REOPEN_IDLE_S = 5.0
REOPEN_AFTER = 5_000
REOPEN_EVERY = 100_000
_FILTER_FIELDS = set(Filter.__struct_fields__)


def db_path(home: Path) -> Path:
    return home / DB_FILE


DURABLE_FILE = "ledger.durable"


def durable_for(home: Path) -> str:
    """This data directory's consumer name (``runtime.names.ledger_durable``)."""
    from runtime.presence import device_name

    return names.ledger_durable(device_name(), str(Path(home).resolve()))


def _legacy(home: Path) -> bool:
    """A data directory whose ledger used the shared name ``ledger`` (before names were per
    data directory): its DuckDB file exists and the marker written since does not."""
    return db_path(home).exists() and not (home / DURABLE_FILE).exists()


class LedgerService:
    """startup / main_loop / shutdown, in the shape of uvicorn's Server."""

    def __init__(self, nats_url: str, home: Path, *, durable: str | None = None,
                 batch: int = 5000) -> None:
        self.nats_url = nats_url
        self.home = Path(home)
        # its own consumer, named from its data directory (several ledgers, one stream)
        self.durable = durable or durable_for(self.home)
        self._legacy_durable = durable is None and _legacy(self.home)
        self.batch = batch
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.store: Store | None = None
        self.puller: BatchPuller | None = None
        self._exec = ThreadPoolExecutor(1, thread_name_prefix="ledger-db")
        self._apply_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        # built-in prices + <home>/prices.toml + KV ledger.prices, shared with the alerts worker
        self.live_prices = LivePrices(self.home, log=log)
        self.rebuilder: Rebuilder | None = None
        self.deleter: SessionDeleter | None = None
        self._inflight: tuple[asyncio.Future[bool], Msg] | None = None
        self._submitted = 0  # highest seq handed to the DB thread
        self._since_reopen = 0  # events handed to the DB thread since the store was opened
        self._last_msg_at = 0.0  # loop time of the last message fetched
        self._cseq = 0  # the consumer sequence of the last delivery taken (0: none yet)

    # -- plumbing ---------------------------------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- lifecycle --------------------------------------------------------------------------

    async def startup(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.nc = await bus.connect(self.nats_url, name="codeswitch-ledger")
        await bus.wait_ready(self.nc)
        self.js = self.nc.jetstream()
        await bus.ensure_all(self.js)
        await self.live_prices.load(self.js)
        self.store = await self._db(Store, db_path(self.home))
        await self._check_stream_identity()
        await self._position_consumer()
        self.rebuilder = Rebuilder(self.nc, self.home, live=self._live, on_db=self._db,
                                   paused=self._paused, swap_in=self._swap_in,
                                   prices=lambda: self.prices)
        self.deleter = SessionDeleter(self.nc, live=self._live, on_db=self._db,
                                      paused=self._paused, compact=self._compact)
        await self.nc.subscribe(f"{LEDGER_QUERY_PREFIX}.*", queue="cs-ledger", cb=self._on_request)
        log.info("ledger ready at seq %d (%s)", self.store.state.last_seq, self.store.path)

    async def main_loop(self, stop: asyncio.Event) -> None:
        assert self.js is not None
        self._spawn(self.live_prices.watch(self.js, stop))
        while not stop.is_set():
            try:
                await self._consume_once()
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                if stop.is_set():
                    break
                raise
            except ConsumerGoneError:  # the durable was deleted under us
                log.warning("ledger consumer vanished; recreating")
                async with self._apply_lock:
                    await self._settle()
                    self._submitted = 0
                    await self._position_consumer()
            except nats.errors.Error as exc:
                log.warning("ledger fetch failed: %s", exc)
                await asyncio.sleep(0.5)

    async def shutdown(self) -> None:
        if self.rebuilder is not None:
            await self.rebuilder.aclose()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._inflight is not None:
            with contextlib.suppress(Exception):
                async with self._apply_lock:
                    await self._settle()
        if self.nc is not None and self.nc.is_connected:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        if self.store is not None:
            await self._db(self.store.close)
        self._exec.shutdown(wait=True)

    # -- consuming --------------------------------------------------------------------------

    async def _check_stream_identity(self) -> None:
        """A watermark beyond the stream's last sequence means CS_EVENTS was deleted and
        recreated (or this file belongs to another NATS): its sequences mean nothing here, and
        keeping it would drop every new event up to the old watermark. Set the file aside."""
        assert self.js is not None and self.store is not None
        bounds = await stream_bounds(self.js)
        if self.store.state.last_seq <= bounds.last_seq:
            return
        path = self.store.path
        aside = path.with_name(f"{path.name}.orphaned-{time.strftime('%Y%m%d-%H%M%S')}")
        log.error("ledger watermark %d is beyond CS_EVENTS' last sequence %d: the stream was "
                  "recreated. Keeping the old projection as %s and starting a new one.",
                  self.store.state.last_seq, bounds.last_seq, aside)
        await self._db(self.store.close)
        os.replace(path, aside)
        self.store = await self._db(Store, path)

    async def _position_consumer(self) -> None:
        assert self.js is not None and self.store is not None
        wm = self.store.state.last_seq
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(names.EVENTS_STREAM, self.durable)
        if self._legacy_durable:
            # this data directory's ledger used the shared name before: that consumer is ours
            with contextlib.suppress(NotFoundError):
                await self.js.delete_consumer(names.EVENTS_STREAM, names.LEDGER_DURABLE)
            self._legacy_durable = False
        (self.home / DURABLE_FILE).write_text(self.durable + "\n")
        bounds = await stream_bounds(self.js)
        if wm and bounds.messages and bounds.first_seq > wm + 1:
            log.warning("events %d..%d were dropped by retention before the ledger saw them",
                        wm + 1, bounds.first_seq - 1)
        config = js_api.ConsumerConfig(
            durable_name=self.durable,
            description="codeswitch ledger (position derived from ledger.duckdb)",
            deliver_policy=(js_api.DeliverPolicy.BY_START_SEQUENCE if wm
                            else js_api.DeliverPolicy.ALL),
            opt_start_seq=wm + 1 if wm else None,
            ack_policy=js_api.AckPolicy.ALL,
            ack_wait=120.0,
            max_ack_pending=max(50_000, self.batch * 4),
            max_waiting=16,
            # a ledger whose data directory is gone for good leaves no consumer behind (a
            # running one recreates its own on start anyway, from its DuckDB position)
            inactive_threshold=7 * 24 * 3600.0,
        )
        await self.js.add_consumer(names.EVENTS_STREAM, config)
        if self.puller is not None:
            await self.puller.close()
        assert self.nc is not None
        self.puller = await BatchPuller(self.nc, names.EVENTS_STREAM, self.durable,
                                        batch=self.batch, expires=0.5).start()
        self._cseq = 0  # a new consumer counts its deliveries from 1

    async def _consume_once(self) -> None:
        """Fetch, project, and hand the batch to the DB thread; the previous batch commits
        meanwhile (one batch in flight at most) and is acked once its commit is done."""
        assert self.puller is not None
        msgs = await self.puller.fetch()
        loop = asyncio.get_running_loop()
        async with self._apply_lock:
            if not msgs:
                await self._settle()
                if (self._since_reopen >= REOPEN_AFTER
                        and loop.time() - self._last_msg_at >= REOPEN_IDLE_S):
                    await self._reopen()
                return
            self._last_msg_at = loop.time()
            if self._since_reopen >= REOPEN_EVERY:
                await self._settle()
                await self._reopen()
            store = self._live()
            wm = max(store.state.last_seq, self._submitted)
            rows = Rows()
            prices = self.prices
            taken = len(msgs)
            for i, m in enumerate(msgs):
                seq, cseq, _ = parse_reply(m.reply)
                if cseq > self._cseq + 1:  # (its consumer is always created here: 1 first)
                    # a delivery that never arrived (lost in transit while NATS reconnected
                    # or a cluster node died): with AckPolicy ALL, acking what follows would
                    # ack it too, and it would never come again. Stop before it, read again
                    # from this ledger's position (below).
                    log.warning("ledger: delivery %d of consumer %s was lost in transit; "
                                "reading again from seq %d", self._cseq + 1, self.durable,
                                max(wm, rows.last_seq or 0) + 1)
                    taken = i
                    break
                if cseq > self._cseq:  # a redelivery keeps its first consumer sequence
                    self._cseq = cseq
                if seq > wm:
                    rows.add(project(seq, m.subject, m.data, prices))
                    if m.subject.endswith(SESSION_DELETED) and peer_domain(m.subject):
                        rows.peer_tombstones.add(seq)
            await self._settle()
            if rows.count:
                self._submitted = rows.last_seq
                self._since_reopen += rows.count
                self._inflight = (asyncio.get_running_loop().run_in_executor(
                    self._exec, store.apply, rows), msgs[taken - 1])
            elif taken:
                await msgs[taken - 1].ack()  # all redeliveries: ack them again
            if taken < len(msgs):
                await self._settle()
                await self._position_consumer()  # from the committed position + 1

    async def _settle(self) -> None:
        """Wait for the batch in flight to commit, then ack it (AckPolicy ALL: the last
        message acks the whole batch). Call with ``_apply_lock`` held."""
        if self._inflight is None:
            return
        future, last = self._inflight
        self._inflight = None
        await future
        store = self._live()
        if store.erase_pending:
            pending, store.erase_pending = store.erase_pending, []
            self._spawn(self._erase_peer_deleted(pending))
        with contextlib.suppress(Exception):  # a lost ack is a redelivery, dropped later
            await last.ack()

    async def _erase_peer_deleted(self, pending: list[tuple[list[int], list[str]]]) -> None:
        """A session deleted on another device: erase this device's copies of its facts (and
        the hub's copies this device knows of), its body-log entries, then rewrite the file
        (as a delete here does: ``deletion.py``)."""
        assert self.nc is not None
        try:
            facts = bodies = 0
            for seqs, rids in pending:
                facts += await erase_facts(self.nc, seqs)
                for rid in rids:
                    bodies += bool(await erase_bodies(self.nc, rid))
            async with self._paused():
                await self._db(self._compact)
            log.info("session deleted on another device: %d facts and %d bodies erased here",
                     facts, bodies)
        except Exception as exc:
            log.error("erasing a session deleted on another device: %s", exc)

    async def _reopen(self) -> None:
        """Give back what the DuckDB connection accumulated (see REOPEN_IDLE_S), then the
        malloc heaps' free pages. Call with ``_apply_lock`` held and nothing in flight."""
        started = time.perf_counter()
        before = memory.rss_bytes()
        await self._db(lambda: self._live().reopen())
        memory.trim()
        log.info("ledger: reopened the store after %d events in %.0f ms: RSS %.1f -> %.1f MB",
                 self._since_reopen, (time.perf_counter() - started) * 1e3, before / 1e6,
                 memory.rss_bytes() / 1e6)
        self._since_reopen = 0

    # -- prices -----------------------------------------------------------------------------

    @property
    def prices(self) -> PriceBook:
        """The current price book (replaced when the overrides change)."""
        return self.live_prices.book

    # -- requests ---------------------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        self._spawn(self._answer(msg))

    async def _answer(self, msg: Msg) -> None:
        name = msg.subject.rsplit(".", 1)[-1]
        try:
            params = json.loads(msg.data) if msg.data else {}
            if not isinstance(params, dict):
                raise QueryError("parameters must be a JSON object")
            body: dict[str, Any] = {"ok": True, "result": await self._dispatch(name, params)}
        except (QueryError, StoreError, PriceError, ValueError, msgspec.ValidationError) as exc:
            body = {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("ledger query %s failed", name)
            body = {"ok": False, "error": f"internal error: {exc}"}
        if msg.reply and self.nc is not None:
            data, headers = encode_reply(body, self.nc.max_payload)
            try:
                await self.nc.publish(msg.reply, data, headers=headers)
            except Exception as exc:
                log.warning("ledger query %s: reply not sent: %s", name, exc)

    async def _dispatch(self, name: str, params: dict[str, Any]) -> Any:
        if name in QUERIES:
            fn, extra = QUERIES[name]
            f = msgspec.convert({k: v for k, v in params.items() if k in _FILTER_FIELDS},
                                Filter)
            kwargs = {k: params[k] for k in extra if params.get(k) is not None}

            def run() -> Any:
                store = self._live()
                if fn is heatmap:  # the days before today kept by the store (queries.heatmap)
                    kwargs["cache"] = store.heat_cache
                return fn(store.con, f, **kwargs)
            return await self._db(run)
        if name in ("sessions", "session", "online"):
            return await self._sessions(name, params)
        if name == "session_delete":
            assert self.deleter is not None
            return await self.deleter.delete(params)
        if name == "status":
            return await self._status()
        if name == "prices":
            return await self._prices(params)
        if name == "replay":
            assert self.rebuilder is not None
            return await self.rebuilder.start(params)
        if name == "export":
            return await self._db(lambda: self._export(params))
        if name == "ping":
            return {"pong": True}
        raise QueryError(f"unknown ledger query {name!r}")

    async def _sessions(self, name: str, params: dict[str, Any]) -> Any:
        """``sessions`` (list), ``session`` (one, with its timeline), ``online`` (users and
        devices with a request in the last five minutes)."""
        if name == "sessions":
            f = msgspec.convert({k: v for k, v in params.items() if k in _FILTER_FIELDS},
                                Filter)
            return await self._db(lambda: sessions.sessions(
                self._live().con, f, user=params.get("user"), active=bool(params.get("active")),
                limit=int(params.get("limit") or 50)))
        if name == "online":
            since = time.time() - float(params.get("window_s") or sessions.ACTIVE_S)
            return await self._db(lambda: sessions.online(self._live().con, since))
        session = params.get("session")
        if not isinstance(session, str) or not session:
            raise QueryError("session: a session id")
        found = await self._db(lambda: sessions.session_detail(self._live().con, session))
        if found is None:
            raise QueryError(f"no session {session!r} in the ledger (`codeswitch sessions "
                             "list` shows them)")
        return found

    def _compact(self) -> None:
        """On the live DB thread: rewrite the file without what was deleted, and drop the
        last replay's backup (it holds it too)."""
        store = self._live()
        store.compact()
        remove_db(store.path.with_name(store.path.name + ".bak"))

    def _live(self) -> Store:
        if self.store is None:
            raise StoreError("ledger store is not open")
        return self.store

    async def _status(self) -> dict[str, Any]:
        assert self.js is not None
        bounds = await stream_bounds(self.js)
        counts = await self._db(lambda: table_counts(self._live().con, list(TABLES)))
        state = self._live().state
        return {
            "path": str(self._live().path),
            "state": msgspec.to_builtins(state),
            "tables": counts,
            "stream": {"first_seq": bounds.first_seq, "last_seq": bounds.last_seq,
                       "first_ts": bounds.first_ts, "messages": bounds.messages},
            "lag": max(0, bounds.last_seq - state.last_seq),
            "replay": (msgspec.to_builtins(self.rebuilder.job)
                       if self.rebuilder and self.rebuilder.job else None),
        }

    async def _prices(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("reload"):
            assert self.js is not None
            await self.live_prices.load(self.js, strict=True)  # a bad file: an error reply

        def unpriced() -> list[dict[str, Any]]:
            cur = self._live().con.execute(
                "SELECT provider, coalesce(upstream_model, model) AS model, count(*) AS requests,"
                " sum(total_tokens) AS total_tokens FROM requests WHERE cost IS NULL AND "
                "total_tokens > 0 GROUP BY ALL ORDER BY requests DESC LIMIT 100")
            cols = [d[0] for d in cur.description or []]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

        return {"prices": self.prices.table(), "unpriced": await self._db(unpriced)}

    def _export(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        fmt = params.get("format", "parquet")
        if fmt not in ("parquet", "csv"):
            raise QueryError("format must be parquet or csv")
        tables = params.get("tables") or ["requests", "attempts", "circuit_transitions",
                                          "alert_history", "audit"]
        unknown = [t for t in tables if t not in TABLES]
        if unknown:
            raise QueryError(f"unknown tables: {', '.join(unknown)}")
        out = Path(params.get("out") or self.home / "export" / time.strftime("%Y%m%d-%H%M%S"))
        clauses, args = [], []
        if params.get("since") is not None:
            clauses.append("ts >= ?")
            args.append(float(params["since"]))
        if params.get("until") is not None:
            clauses.append("ts < ?")
            args.append(float(params["until"]))
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        single = len(tables) == 1 and out.suffix in (".parquet", ".csv")
        written = []
        for table in tables:
            path = out if single else out / f"{table}.{fmt}"
            rows = self._live().export(table, path, fmt, where=where, params=args)
            written.append({"table": table, "path": str(path), "rows": rows})
        return written

    # -- replay -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _paused(self) -> AsyncIterator[None]:
        """The live consumer held still, with nothing in flight (for the swap)."""
        async with self._apply_lock:
            await self._settle()
            yield

    def _swap_in(self, target: Path) -> None:
        """On the live DB thread: close the live file, keep it as .bak, move the rebuild in."""
        store = self._live()
        live = store.path
        store.close()
        self.store = None
        backup = live.with_name(live.name + ".bak")
        remove_db(backup)
        try:
            os.link(live, backup)
        except OSError:
            log.warning("could not keep %s", backup)
        with contextlib.suppress(FileNotFoundError):
            live.with_name(live.name + ".wal").unlink()  # a clean close leaves none
        os.replace(target, live)
        self.store = Store(live)
        log.info("ledger rebuilt and swapped in at seq %d", self.store.state.last_seq)


async def run(nats_url: str, home: Path, stop: asyncio.Event, *,
              durable: str | None = None, batch: int = 5000) -> None:
    """Run the ledger until ``stop`` is set (the entry point of ``codeswitch worker ledger``)."""
    service = LedgerService(nats_url, home, durable=durable, batch=batch)
    try:
        await service.startup()
        await service.main_loop(stop)
    finally:
        await service.shutdown()


def main(argv: list[str] | None = None) -> None:
    """``python -m workers.ledger.service --nats-url URL --home DIR``."""
    from runtime.home import home_dir, nats_url_for

    parser = argparse.ArgumentParser(prog="codeswitch-ledger")
    parser.add_argument("--home")
    parser.add_argument("--nats-url")
    parser.add_argument("--durable", default=None,
                        help="consumer name (default: from the data directory)")
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    home = home_dir(args.home)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(nats_url_for(home, args.nats_url), home, stop, durable=args.durable,
                  batch=args.batch)

    asyncio.run(_main())


if __name__ == "__main__":
    main()
