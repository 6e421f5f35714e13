"""The sessions table (derived from the folded request rows: any order, any batching, the same
rows) and a session's tombstone (its rows gone, its bill kept), without servers."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import msgspec

from schemas.events import (
    AttemptFinished,
    Event,
    RequestCompleted,
    SessionDeleted,
    Usage,
    encode_event,
)
from schemas.prices import PriceBook
from workers.ledger import sessions
from workers.ledger.projection import Rows, project
from workers.ledger.queries import Filter, overview
from workers.ledger.store import Store

BOOK = PriceBook()
SECRET = "sess-7f3a9c-UNIQUE"


def _req(i: int, session: str | None, *, ts: float, model: str = "claude-sonnet-4-5",
         provider: str = "main", source: str = "router", status: int = 200,
         bytes_in: int = 100, cache_read: int = 0, device: str = "laptop") -> RequestCompleted:
    return RequestCompleted(
        id=f"e{i}-{source}", ts=ts, request_id=f"r{i}", dialect="anthropic", model=model,
        provider=provider, upstream_model=model, status=status,
        error_class=None if status < 400 else "http_5xx", received_at=ts - 1,
        usage=Usage(input_tokens=100 * i, output_tokens=10, cache_read_tokens=cache_read),
        session=session, user="alice", client="claude-code", source=source,
        bytes_in=bytes_in, device=device, duration_ms=50.0 + i)


def _attempt(i: int, ts: float) -> AttemptFinished:
    return AttemptFinished(id=f"a{i}", ts=ts, request_id=f"r{i}", attempt=1,
                           dialect="anthropic", provider="main", provider_dialect="anthropic",
                           model="claude-sonnet-4-5", upstream_model="claude-sonnet-4-5",
                           stream=True, outcome="ok", status=200)


LOG: list[Event] = [
    _attempt(1, 10.0), _req(1, SECRET, ts=10.0, bytes_in=500),
    _attempt(2, 20.0), _req(2, SECRET, ts=20.0, bytes_in=900, cache_read=400),
    _req(3, SECRET, ts=21.0, model="claude-haiku-4-5", bytes_in=50),
    _req(4, "other", ts=22.0, provider="backup"),
    _req(5, None, ts=23.0),
    # the edge's view of r2 (the client went away after it): folded into r2's row
    RequestCompleted(id="e2-edge", ts=20.5, request_id="r2", dialect="anthropic",
                     model="claude-sonnet-4-5", status=499, error_class="client_gone",
                     delivered=False, source="edge", session=SECRET),
]


def _subject(ev: Event) -> str:
    if isinstance(ev, SessionDeleted):
        return "session.deleted"
    return "llm.attempt.x" if isinstance(ev, AttemptFinished) else "llm.response.x"


def _apply(store: Store, events: list[tuple[int, Event]], batch: int) -> None:
    for start in range(0, len(events), batch):
        rows = Rows()
        for seq, ev in events[start:start + batch]:
            rows.add(project(seq, _subject(ev), encode_event(ev), BOOK))
        store.apply(rows)


def _table(store: Store, table: str) -> list[tuple[object, ...]]:
    return store.con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()


def test_sessions_are_the_same_whatever_the_order_and_batching(tmp_path: Path) -> None:
    """The facts in any order on the log (their sequences follow it), folded in batches of
    any size, redelivered or not: the same session rows (but for ``seq`` and ``first_seq``,
    positions)."""
    rng = random.Random(7)
    orders = [LOG, list(reversed(LOG))] + [rng.sample(LOG, len(LOG)) for _ in range(3)]
    results = []
    for n, (order, batch) in enumerate(itertools.product(orders, (1, 3, 100))):
        numbered = list(enumerate(order, 1))
        with Store(tmp_path / f"l{n}.duckdb") as store:
            _apply(store, numbered, batch)
            _apply(store, numbered[:2], 1)  # redelivered: dropped by the watermark
            results.append(store.con.execute(
                "SELECT * EXCLUDE (seq, first_seq) FROM sessions ORDER BY ALL").fetchall())
    assert len(results[0]) == 2
    assert all(r == results[0] for r in results)
    numbered = list(enumerate(LOG, 1))

    with Store(tmp_path / "one.duckdb") as store:
        _apply(store, numbered, 100)
        listed = sessions.sessions(store.con, Filter())
        assert [s["session"] for s in listed] == ["other", SECRET]
        s = listed[1]
        assert s["requests"] == 3 and s["errors"] == 1  # r2: the client never got it
        assert s["models"] == ["claude-haiku-4-5", "claude-sonnet-4-5"]
        assert s["providers"] == ["main"] and s["devices"] == ["laptop"]
        assert s["cache_read_tokens"] == 400 and s["user"] == "alice"
        assert (s["first_seen"], s["last_seen"]) == (9.0, 21.0)
        assert s["first_request_id"] == "r1" and s["last_request_id"] == "r3"
        assert s["main_request_id"] == "r1"  # r2 failed: the largest answered body
        detail = sessions.session_detail(store.con, SECRET)
        assert detail is not None
        assert [t["request_id"] for t in detail["timeline"]] == ["r1", "r2", "r3"]
        assert sessions.session_detail(store.con, "nope") is None
        assert sessions.sessions(store.con, Filter(), user="bob") == []
        assert sessions.sessions(store.con, Filter(), active=True, now=21.0 + 299)
        assert not sessions.sessions(store.con, Filter(), active=True, now=23.0 + 301)


def _tombstone(store: Store, session: str, event_id: str = "tomb-1") -> SessionDeleted:
    bill = sessions.bill(store.con, session)
    return SessionDeleted(id=event_id, ts=100.0, session_hash=sessions.session_hash(session),
                          requests=bill["requests"], deleted_by="local:test")


def _totals(store: Store) -> dict[str, object]:
    o = overview(store.con, Filter())
    out = {k: o[k] for k in ("requests", "errors", "input_tokens", "output_tokens",
                             "cache_read_tokens", "total_tokens")}
    out["cost"] = round(o["cost"], 12)  # sums of floats in another order
    return out


def test_a_tombstone_drops_the_session_and_keeps_the_bill(tmp_path: Path) -> None:
    numbered = list(enumerate(LOG, 1))
    with Store(tmp_path / "live.duckdb") as live:
        _apply(live, numbered, 100)
        before = _totals(live)
        bill = sessions.bill(live.con, SECRET)
        assert bill["request_ids"] == ["r1", "r2", "r3"]
        # every fact of the session: r1, r2 (router and edge), r3 and both attempts
        assert bill["seqs"] == [1, 2, 3, 4, 5, 8]
        tomb = _tombstone(live, SECRET)
        assert SECRET not in encode_event(tomb).decode()
        _apply(live, [(9, tomb)], 100)
        assert _totals(live) == before
        assert sessions.session_detail(live.con, SECRET) is None
        assert live.con.execute("SELECT count(*) FROM requests WHERE session = ?",
                                [SECRET]).fetchone() == (0,)
        assert live.con.execute("SELECT count(*) FROM attempts").fetchone() == (0,)
        (deleted,) = live.con.execute(
            "SELECT requests, errors, cache_read_tokens, deleted_by FROM deleted_sessions"
        ).fetchall()
        assert deleted == (3, 1, 400, "local:test")
        # the same tombstone again (a write-ahead replay): nothing changes
        _apply(live, [(10, tomb)], 100)
        assert _totals(live) == before
        live.compact()
        assert _totals(live) == before
    assert SECRET.encode() not in (tmp_path / "live.duckdb").read_bytes()

    # a replay of the log whose facts were erased: the same totals, no trace of the session
    erased = [(seq, ev) for seq, ev in numbered if seq not in bill["seqs"]] + [(9, tomb)]
    with Store(tmp_path / "replay.duckdb") as replay:
        _apply(replay, erased, 3)
        assert _totals(replay) == before
        assert _table(replay, "sessions") == _table(Store(tmp_path / "live.duckdb",
                                                          read_only=True), "sessions")

    # a replay that still finds the facts (an erase that missed): not counted twice
    with Store(tmp_path / "missed.duckdb") as missed:
        _apply(missed, [*numbered, (9, tomb)], 4)
        assert _totals(missed) == before
        assert missed.con.execute("SELECT count(*) FROM requests WHERE session = ?",
                                  [SECRET]).fetchone() == (0,)


def test_a_session_id_used_again_after_its_delete_is_a_new_session(tmp_path: Path) -> None:
    numbered = list(enumerate(LOG, 1))
    with Store(tmp_path / "l.duckdb") as store:
        _apply(store, numbered, 100)
        tomb = _tombstone(store, SECRET)
        later = _req(9, SECRET, ts=200.0)
        _apply(store, [(9, tomb), (10, later)], 100)
        again = sessions.session_detail(store.con, SECRET)
        assert again is not None and again["requests"] == 1
        assert [t["request_id"] for t in again["timeline"]] == ["r9"]


def test_tombstone_rows_carry_no_identity() -> None:
    tomb = SessionDeleted(id="t", ts=1.0, session_hash="h", requests=[])
    rows = project(1, "session.deleted", encode_event(tomb), BOOK)
    assert isinstance(rows, list) and len(rows) == 1
    assert msgspec.to_builtins(rows[0])["requests"] == 0
