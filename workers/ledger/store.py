"""The DuckDB file: schema (derived from the row Structs), batched exactly-once apply, export.

Exactly once: ``ledger_state.last_seq`` is the highest CS_EVENTS sequence folded in. It is
updated in the same transaction as the rows of the batch, so after a crash the file holds
either the whole batch and its new ``last_seq`` or neither; the service drops every redelivered
message with ``seq <= last_seq``. The position of the consumer is derived from the file, never
the other way round.

Batching: the rows of a batch are encoded with msgspec as newline-delimited JSON into a scratch
file and inserted with one ``INSERT ... SELECT * FROM read_json(...)`` per table; row-at-a-time
``executemany`` is ~20x slower.

A ``Store`` is not thread-safe: the service confines each one to a single thread.
"""

from __future__ import annotations

import os
import shutil
import time
import types
import typing
from pathlib import Path
from typing import Any

import duckdb
import msgspec

from workers.ledger import sessions
from workers.ledger.projection import (
    TABLES,
    DeletedSessionRow,
    RequestRow,
    Rows,
    fold_requests,
)

__all__ = ["LedgerState", "Store", "StoreError", "ddl_type", "table_columns"]

SCHEMA_VERSION = 1
_SQL_TYPES = {str: "VARCHAR", int: "BIGINT", float: "DOUBLE", bool: "BOOLEAN"}


class StoreError(RuntimeError):
    pass


class LedgerState(msgspec.Struct, kw_only=True):
    """The single row of ``ledger_state``."""

    schema_version: int = SCHEMA_VERSION
    stream: str = "CS_EVENTS"
    first_seq: int = 0  # first stream sequence ever applied to this file
    last_seq: int = 0  # highest stream sequence applied (the exactly-once watermark)
    last_ts: float | None = None  # event time of the last applied event
    events: int = 0  # messages applied (rows written, any table)
    created_at: float = 0.0
    updated_at: float = 0.0
    rebuilt_at: float | None = None  # set by a replay that produced this file
    replay_from_seq: int | None = None  # first sequence the replay read from the stream
    carried_before_seq: int | None = None  # rows below this seq were copied, not replayed
    carried_rows: int = 0
    since_ts: float | None = None  # a windowed replay (--since) holds events from here on


def ddl_type(annotation: Any) -> str:
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or args:
        inner = [a for a in args if a is not type(None)]
        annotation = inner[0]
    return _SQL_TYPES[annotation]


def table_columns(table: str) -> list[tuple[str, str]]:
    hints = typing.get_type_hints(TABLES[table])
    return [(f, ddl_type(hints[f])) for f in TABLES[table].__struct_fields__]


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_ROW_DEFAULTS = {"delivered": True, "source": "router", "usage_estimated": False,
                 "fact_seqs": ""}
_STATE_COLS = [(f, ddl_type(t)) for f, t in typing.get_type_hints(LedgerState).items()]


class Store:
    """One ledger DuckDB file."""

    def __init__(self, path: Path | str, *, read_only: bool = False,
                 threads: int | None = None, memory_limit: str | None = None) -> None:
        self.path = Path(path)
        # (seqs, request ids) a tombstone from another device left to erase from this device's
        # event log and body log (the service does it after the commit)
        self.erase_pending: list[tuple[list[int], list[str]]] = []
        self._peer_tombstones: set[int] = set()
        # the days before "today" of heatmaps asked for (queries.heatmap: key -> (today's
        # start, rows)); an entry goes when a request row written or removed is older than
        # its today (``_past_changed``)
        self.heat_cache: dict[tuple[Any, ...], tuple[float, list[dict[str, Any]]]] = {}
        # Bounded by default: DuckDB's own default is 80 % of RAM for its buffer pool, which a
        # long-running ledger fills with cached blocks (it grew 110 -> 141 MB over 40,000
        # requests). Larger queries spill to the file's temp directory instead.
        memory_limit = memory_limit or os.environ.get("CODESWITCH_LEDGER_MEMORY", "128MB")
        threads = threads or int(os.environ.get("CODESWITCH_LEDGER_THREADS", "2"))
        config: dict[str, Any] = {}
        if threads:
            config["threads"] = threads
        if memory_limit:
            config["memory_limit"] = memory_limit
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._config = config
        self.con = duckdb.connect(str(self.path), read_only=read_only, config=config)
        self.read_only = read_only
        self._enc = msgspec.json.Encoder()
        self._buf = bytearray()
        self._tmp: Path | None = None
        self._closed = False
        self._json_cols = {
            t: "{" + ", ".join(f"{_lit(c)}: {_lit(ty)}" for c, ty in table_columns(t)) + "}"
            for t in TABLES
        }
        if not read_only:
            self._migrate()
        self.state = self._read_state()

    # -- schema ---------------------------------------------------------------------------

    def _migrate(self) -> None:
        con = self.con
        con.execute("BEGIN")
        for table in TABLES:
            cols = table_columns(table)
            con.execute(
                f"CREATE TABLE IF NOT EXISTS {_q(table)} ("
                + ", ".join(f"{_q(c)} {t}" for c, t in cols) + ")"
            )
            have = {r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                [table]).fetchall()}
            for c, t in cols:  # schema evolution: a new row field is a new column
                if c not in have:
                    con.execute(f"ALTER TABLE {_q(table)} ADD COLUMN {_q(c)} {t}")
        con.execute(
            "CREATE TABLE IF NOT EXISTS ledger_state (id INTEGER PRIMARY KEY, "
            + ", ".join(f"{_q(c)} {t}" for c, t in _STATE_COLS) + ")"
        )
        if con.execute("SELECT count(*) FROM ledger_state").fetchone() == (0,):
            now = time.time()
            self._write_state(LedgerState(created_at=now, updated_at=now), insert=True)
        if con.execute("SELECT count(*) FROM sessions").fetchone() == (0,):
            # a file from before the sessions table: derive it once from the requests
            ids = [r[0] for r in con.execute("SELECT DISTINCT session FROM requests WHERE "
                                             "session IS NOT NULL ORDER BY 1").fetchall()]
            self.refresh_sessions(ids, 0)
        con.execute("COMMIT")

    def _read_state(self) -> LedgerState:
        cols = [c for c, _ in _STATE_COLS]
        try:
            row = self.con.execute(
                f"SELECT {', '.join(_q(c) for c in cols)} FROM ledger_state WHERE id = 1"
            ).fetchone()
        except duckdb.CatalogException:
            return LedgerState()
        if row is None:
            return LedgerState()
        return msgspec.convert(dict(zip(cols, row, strict=True)), LedgerState)

    def _write_state(self, state: LedgerState, *, insert: bool = False) -> None:
        cols = [c for c, _ in _STATE_COLS]
        values = [getattr(state, c) for c in cols]
        if insert:
            self.con.execute(
                f"INSERT INTO ledger_state (id, {', '.join(_q(c) for c in cols)}) "
                f"VALUES (1, {', '.join('?' for _ in cols)})", values)
        else:
            self.con.execute(
                f"UPDATE ledger_state SET {', '.join(f'{_q(c)} = ?' for c in cols)} "
                "WHERE id = 1", values)

    # -- apply ----------------------------------------------------------------------------

    def _scratch(self) -> Path:
        """``<file>.scratch/`` next to the database: reused after a crash, never leaked."""
        if self._tmp is None:
            self._tmp = self.path.with_name(self.path.name + ".scratch")
            self._tmp.mkdir(exist_ok=True)
        return self._tmp

    def _insert(self, table: str, rows: list[Any]) -> None:
        buf = self._buf
        buf.clear()
        enc = self._enc
        for row in rows:
            enc.encode_into(row, buf, -1)
            buf.extend(b"\n")
        path = self._scratch() / f"{table}.ndjson"
        path.write_bytes(buf)
        self.con.execute(
            f"INSERT INTO {_q(table)} BY NAME SELECT * FROM read_json({_lit(str(path))}, "
            f"format='newline_delimited', columns={self._json_cols[table]}, "
            "maximum_object_size=8388608)"
        )

    def apply(self, rows: Rows) -> bool:
        """Fold one batch in, in one transaction with the new watermark.

        Rows at or below the watermark are dropped (a redelivery); False when nothing was new.
        """
        if rows.count == 0:
            return False
        self._peer_tombstones = rows.peer_tombstones
        last = self.state.last_seq
        if rows.last_seq <= last:
            return False
        fresh = {t: [r for r in rs if r.seq > last] if rows.first_seq <= last else rs
                 for t, rs in rows.by_table.items()}
        n = sum(len(rs) for rs in fresh.values())
        state = msgspec.structs.replace(
            self.state,
            first_seq=self.state.first_seq or min(r[0].seq for r in fresh.values() if r),
            last_seq=rows.last_seq,
            last_ts=rows.last_ts if rows.last_ts is not None else self.state.last_ts,
            events=self.state.events + n,
            updated_at=time.time(),
        )
        con = self.con
        con.execute("BEGIN")
        try:
            for table, table_rows in fresh.items():
                if not table_rows:
                    continue
                kept: list[Any] = (
                    self._fold_requests([r for r in table_rows if isinstance(r, RequestRow)])
                    if table == "requests" else self._new_events(table, table_rows))
                if table == "requests" and kept:
                    self._past_changed(min(r.ts for r in kept))
                if kept:
                    self._insert(table, kept)
            self._sessions(fresh)
            self._write_state(state)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self.state = state
        return True

    def _sessions(self, fresh: dict[str, list[Any]]) -> None:
        """After a batch's rows are in: a tombstone drops what is left of its session, then
        the sessions the batch touched are recomputed from their request rows."""
        rows = [r for r in fresh["requests"] if r.session is not None]
        touched = {r.session for r in rows}
        start = min((r.seq for r in rows), default=None)
        for tomb in fresh["deleted_sessions"]:
            assert isinstance(tomb, DeletedSessionRow)
            if tomb.seq in self._peer_tombstones:
                seqs, rids = sessions.doomed(self.con, tomb.session_hash, tomb.seq)
                if seqs or rids:
                    self.erase_pending.append((seqs, rids))
            forgotten = sessions.forget(self.con, tomb.session_hash, tomb.seq)
            self.heat_cache.clear()  # rows of any day may have gone, a bill may have come
            if forgotten:
                touched.update(forgotten)
                start = 0
        if touched:
            self.refresh_sessions(sorted(touched), start)

    def refresh_sessions(self, ids: list[str], from_seq: int | None = None) -> None:
        """Recompute these sessions' rows from their requests (in the caller's transaction):
        one read of their request rows (from the lowest ``first_seq`` of their current rows,
        or ``from_seq`` when lower), ``sessions.aggregate``, one insert."""
        if not ids:
            return
        low = self.con.execute("SELECT min(first_seq) FROM sessions WHERE session IN "
                               "(SELECT unnest(?::VARCHAR[]))", [ids]).fetchone()
        bounds = [b for b in (low[0] if low else None, from_seq) if b is not None]
        start = min(bounds) if bounds else 0
        rows = self.con.execute(sessions.SOURCE_SQL, [start, ids]).fetchall()
        self.con.execute("DELETE FROM sessions WHERE session IN (SELECT unnest(?::VARCHAR[]))",
                         [ids])
        fresh = sessions.aggregate(rows)
        if fresh:
            self._insert("sessions", fresh)

    def _new_events(self, table: str, rows: list[Any]) -> list[Any]:
        """Rows whose event is not in the table yet: a fact published again after a crash
        (the write-ahead files, codeswitch/facts.py) has a new stream sequence but its old
        event id. Event ids start with their time, so DuckDB's min/max statistics keep this
        lookup to the newest row groups."""
        ids = [r.event_id for r in rows if r.event_id]
        if not ids:
            return rows
        have = {r[0] for r in self.con.execute(
            f"SELECT event_id FROM {_q(table)} WHERE event_id >= ? AND event_id <= ? "
            "AND event_id IN (SELECT unnest(?::VARCHAR[]))",
            [min(ids), max(ids), ids]).fetchall()}
        seen: set[str | None] = set(have)
        out = []
        for row in rows:
            if row.event_id in seen:
                continue
            if row.event_id:
                seen.add(row.event_id)
            out.append(row)
        return out

    def _fold_requests(self, rows: list[RequestRow]) -> list[RequestRow]:
        """One row per request id: facts of a request already in the table (or twice in
        this batch) are folded with ``fold_requests`` and the old row replaced."""
        groups: dict[str, list[RequestRow]] = {}
        for row in rows:
            groups.setdefault(row.request_id, []).append(row)
        ids = list(groups)
        cols = list(RequestRow.__struct_fields__)
        existing = self.con.execute(
            f"SELECT {', '.join(_q(c) for c in cols)} FROM requests "
            "WHERE request_id >= ? AND request_id <= ? "
            "AND request_id IN (SELECT unnest(?::VARCHAR[]))",
            [min(ids), max(ids), ids]).fetchall()
        if existing:
            self._past_changed(min(v[cols.index("ts")] for v in existing))  # rows replaced
            for values in existing:
                found = dict(zip(cols, values, strict=True))
                for col, default in _ROW_DEFAULTS.items():  # rows written before a column
                    if found[col] is None:
                        found[col] = default
                old = msgspec.convert(found, RequestRow, strict=False)
                groups[old.request_id].insert(0, old)
            self.con.execute(
                "DELETE FROM requests WHERE request_id >= ? AND request_id <= ? "
                "AND request_id IN (SELECT unnest(?::VARCHAR[]))",
                [min(ids), max(ids), [r[cols.index("request_id")] for r in existing]])
        return [group[0] if len(group) == 1 else fold_requests(group)
                for group in groups.values()]

    def _past_changed(self, ts: float) -> None:
        """A request row of time ``ts`` was written or removed: heatmaps whose kept days
        reach past it are computed again."""
        for key in [k for k, (today, _) in self.heat_cache.items() if ts < today]:
            del self.heat_cache[key]

    def mark(self, **changes: Any) -> None:
        """Update ledger_state fields (replay bookkeeping) in their own transaction."""
        state = msgspec.structs.replace(self.state, **changes)
        self.con.execute("BEGIN")
        self._write_state(state)
        self.con.execute("COMMIT")
        self.state = state

    # -- carry-over, export, lifecycle -----------------------------------------------------

    def copy_older_into(self, target: Path, before_seq: int) -> int:
        """Create ``target`` holding this file's rows with ``seq < before_seq`` (what the
        stream no longer has). Returns the number of rows copied."""
        alias = "cs_carry"
        self.con.execute(f"ATTACH {_lit(str(target))} AS {alias}")
        copied = 0
        try:
            for table in TABLES:
                # a session with a request below the cut: its row comes along (with its
                # first_seq), and is recomputed when the replay folds its later requests
                cut = "first_seq" if table == "sessions" else "seq"
                self.con.execute(
                    f"CREATE TABLE {alias}.{_q(table)} AS SELECT * FROM main.{_q(table)} "
                    f"WHERE {cut} < ? ORDER BY seq", [before_seq])
                copied += self.con.execute(
                    f"SELECT count(*) FROM {alias}.{_q(table)}").fetchone()[0]  # type: ignore[index]
        finally:
            self.con.execute(f"DETACH {alias}")
        return copied

    def export(self, table: str, out: Path, fmt: str, *, where: str = "",
               params: list[Any] | None = None) -> int:
        """Write one table with DuckDB's own writer (parquet or csv). Returns rows written."""
        if table not in TABLES:
            raise StoreError(f"unknown table {table!r}")
        options = "FORMAT parquet, COMPRESSION zstd" if fmt == "parquet" else "FORMAT csv, HEADER"
        out.parent.mkdir(parents=True, exist_ok=True)
        self.con.execute(
            f"COPY (SELECT *, to_timestamp(ts) AS time FROM {_q(table)} {where} ORDER BY seq) "
            f"TO {_lit(str(out))} ({options})", params or [])
        return int(self.con.execute(f"SELECT count(*) FROM {_q(table)} {where}",
                                    params or []).fetchone()[0])  # type: ignore[index]

    def compact(self) -> None:
        """Rewrite the file with only its live rows and swap it in (DuckDB keeps deleted rows'
        bytes in its blocks until they are reused): after a session delete, nothing of the
        session is left in the file. The scratch files of the last batch go too."""
        if self.read_only:
            raise StoreError("a read-only store cannot be compacted")
        target = self.path.with_name(self.path.name + ".compact")
        for p in (target, target.with_name(target.name + ".wal")):
            p.unlink(missing_ok=True)
        db = self.con.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        self.con.execute("CHECKPOINT")
        self.con.execute(f"ATTACH {_lit(str(target))} AS cs_compact")
        try:
            self.con.execute(f"COPY FROM DATABASE {_q(db)} TO cs_compact")
        finally:
            self.con.execute("DETACH cs_compact")
        self.con.close()
        os.replace(target, self.path)
        self.path.with_name(self.path.name + ".wal").unlink(missing_ok=True)
        if self._tmp is not None:
            for scratch in self._tmp.iterdir():
                scratch.unlink(missing_ok=True)
        self.con = duckdb.connect(str(self.path), config=self._config)
        self.state = self._read_state()

    def checkpoint(self) -> None:
        self.con.execute("CHECKPOINT")

    def reopen(self) -> None:
        """Checkpoint, close and connect again. DuckDB gives back what the connection holds
        only when it closes: its buffer pool (up to ``memory_limit``), the appended rows not yet
        checkpointed, and per-transaction state (row versions of folded and deleted rows) that
        is not in the buffer pool's count; neither a lower ``memory_limit`` nor
        ``malloc_trim`` releases the last. Measured: 100,000 requests in batches of 50 left
        the connection at +58-91 MB anonymous memory, +5 MB after a reopen (the service does
        this when idle, docs/architecture.md "Bounded memory")."""
        self.con.execute("CHECKPOINT")
        self.con.close()
        self.con = duckdb.connect(str(self.path), read_only=self.read_only, config=self._config)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self.read_only:
                self.con.execute("CHECKPOINT")
        finally:
            self.con.close()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
