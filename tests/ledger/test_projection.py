"""Recorded event sequences -> expected tables; redelivery changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.events import AlertResolved, encode_event
from schemas.prices import PriceBook
from tests.ledger.conftest import dump, recorded
from workers.ledger import queries
from workers.ledger.projection import TABLES, Rows, project
from workers.ledger.store import Store


def _apply(store: Store, events: list[tuple[str, bytes]], *, start: int = 1,
           batch: int = 1000) -> None:
    book = PriceBook()
    numbered = list(enumerate(events, start=start))
    for k in range(0, len(numbered), batch):
        rows = Rows()
        for seq, (subject, data) in numbered[k:k + batch]:
            rows.add(project(seq, subject, data, book))
        store.apply(rows)


@pytest.fixture
def basic(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "ledger.duckdb")
    _apply(store, recorded("ledger_basic.jsonl"), batch=5)
    yield store
    store.close()


def test_recorded_sequence_gives_the_expected_tables(basic: Store) -> None:
    con = basic.con
    reqs = con.execute(
        "SELECT seq, request_id, provider, status, ok, attempts, user, total_tokens, "
        "round(cost, 9), price_key FROM requests ORDER BY seq").fetchall()
    assert reqs == [
        (2, "req-1", "anthropic-main", 200, True, 1, "alice", 53_050, 0.042,
         "claude-sonnet-4-5"),
        (5, "req-2", "openai", 200, True, 2, "bob", 17_400, 0.02925, "gpt-5-codex"),
        (8, "req-3", "gemini", 200, True, 1, "alice", 21_000, 0.1135, "gemini-2.5-pro"),
        (10, "req-4", "local", 200, True, 1, "carol", 600, None, None),
        (12, "req-5", "anthropic-main", 502, False, 1, "alice", 0, 0.0, "claude-haiku-4-5"),
    ]
    attempts = con.execute(
        "SELECT request_id, attempt, provider, outcome, status, error_class FROM attempts "
        "ORDER BY seq").fetchall()
    assert attempts == [
        ("req-1", 1, "anthropic-main", "ok", 200, None),
        ("req-2", 1, "openai-backup", "fallback", 429, "http_4xx"),
        ("req-2", 2, "openai", "ok", 200, None),
        ("req-3", 1, "gemini", "ok", 200, None),
        ("req-4", 1, "local", "ok", 200, None),
        ("req-5", 1, "anthropic-main", "failed", 500, "http_5xx"),
    ]
    assert con.execute("SELECT provider, previous, state FROM circuit_transitions "
                       "ORDER BY seq").fetchall() == [
        ("openai-backup", "closed", "open"), ("openai-backup", "half_open", "closed")]
    assert con.execute("SELECT kind, rule, fired_id, channel FROM alert_history "
                       "ORDER BY seq").fetchall() == [
        ("fired", "error-rate", None, None),
        ("delivery_failed", "error-rate", None, "webhook:ops"),
        ("resolved", "error-rate", "0007f", None)]
    # a fact the ledger has no table for is kept verbatim, not dropped
    assert con.execute("SELECT seq, type, subject, event_id FROM audit").fetchall() == [
        (17, "ProviderUpdated", "admin.provider.updated", "0009p")]
    assert basic.state.last_seq == 17 and basic.state.events == 17


def test_queries_over_the_recorded_sequence(basic: Store) -> None:
    con, f = basic.con, queries.Filter()
    o = queries.overview(con, f)
    assert (o["requests"], o["errors"], o["unpriced_requests"], o["unpriced_tokens"]) == (
        5, 1, 1, 600)
    assert o["cost"] == pytest.approx(0.042 + 0.02925 + 0.1135)
    assert o["attempts"] == 6
    by_user = {r["key"]: r for r in queries.breakdown(con, f, "user")}
    assert by_user["alice"]["requests"] == 3 and by_user["carol"]["cost"] is None
    days = queries.series(con, f, "day")
    assert [d["requests"] for d in days] == [4, 1]
    hours = queries.series(con, f, "hour")
    assert [h["requests"] for h in hours] == [2, 2, 1]
    heat = queries.heatmap(con, f)
    assert [(d["day"], d["requests"]) for d in heat] == [("2025-11-17", 4), ("2025-11-18", 1)]
    assert [d["weekday"] for d in heat] == [0, 1]  # a Monday and a Tuesday
    # light (the console's charts and dashboard): the same counts, no latency quantiles
    light = queries.overview(con, f, light=True)
    assert (light["requests"], light["errors"], light["cost"]) == (5, 1, o["cost"])
    assert light["p50_latency_ms"] is None and o["p50_latency_ms"] is not None
    assert [h["requests"] for h in queries.series(con, f, "hour", light=True)] == [2, 2, 1]
    light_users = {r["key"]: r for r in queries.breakdown(con, f, "user", light=True)}
    assert light_users["alice"]["requests"] == 3 and light_users["alice"]["p95_ttfb_ms"] is None
    # fields (what a console page shows): only those, the same values as the full query
    part = queries.overview(con, f, fields=["cost", "p50_latency_ms", "p95_ttfb_ms"])
    assert set(part) == {"requests", "errors", "error_rate", "cost", "p50_latency_ms",
                         "p95_ttfb_ms"}
    assert (part["requests"], part["cost"], part["p50_latency_ms"], part["p95_ttfb_ms"]) == (
        o["requests"], o["cost"], o["p50_latency_ms"], o["p95_ttfb_ms"])
    hours_part = queries.series(con, f, "hour", fields=["cost"])
    assert [(h["t"], h["requests"], h["errors"], h["cost"]) for h in hours_part] == [
        (h["t"], h["requests"], h["errors"], h["cost"]) for h in hours]
    assert set(hours_part[0]) == {"t", "requests", "errors", "error_rate", "cost"}
    users_part = queries.breakdown(con, f, "user", fields=["total_tokens", "last_ts"])
    assert [(r["key"], r["total_tokens"], r["last_ts"]) for r in users_part] == [
        (r["key"], r["total_tokens"], r["last_ts"])
        for r in queries.breakdown(con, f, "user")]
    assert queries.heatmap(con, f, fields=["cost"]) == [
        {k: d[k] for k in ("day", "weekday", "requests", "cost")} for d in heat]
    for bad in (["nope"], "cost", [1]):
        with pytest.raises(queries.QueryError):
            queries.overview(con, f, fields=bad)  # type: ignore[arg-type]
    with pytest.raises(queries.QueryError):
        queries.heatmap(con, f, fields=["p50_latency_ms"])
    minutes = queries.series(con, f, "minute")
    assert sum(m["requests"] for m in minutes) == 5 and all(m["t"] % 60 == 0 for m in minutes)
    log = queries.request_log(con, queries.Filter(status="error"))
    assert [r["request_id"] for r in log] == ["req-5"]
    log = queries.request_log(con, queries.Filter(model="gpt-5-codex", user="bob"))
    assert [r["request_id"] for r in log] == ["req-2"]
    assert [r["request_id"] for r in queries.request_log(con, queries.Filter(status="5xx"))] \
        == ["req-5"]
    assert [a["kind"] for a in queries.alerts(con, f)] == [
        "resolved", "delivery_failed", "fired"]
    with pytest.raises(queries.QueryError):
        queries.breakdown(con, f, "nope")


def test_alert_history_shows_a_severity_on_every_row(basic: Store) -> None:
    """The recorded resolve predates AlertResolved.severity and a delivery failure has none:
    the query gives them the severity of the alert they refer to; a resolve that carries its
    own is stored and shown with it."""
    con = basic.con
    assert con.execute("SELECT kind, severity FROM alert_history ORDER BY seq").fetchall() == [
        ("fired", "critical"), ("delivery_failed", None), ("resolved", None)]
    assert [(a["kind"], a["severity"]) for a in queries.alerts(con, queries.Filter())] == [
        ("resolved", "critical"), ("delivery_failed", "critical"), ("fired", "critical")]
    # the fire outside the asked range still lends its severity; columns are unchanged
    later = queries.alerts(con, queries.Filter(since=1763456480.0), rule="error-rate")
    assert [(a["kind"], a["severity"]) for a in later] == [
        ("resolved", "critical"), ("delivery_failed", "critical")]
    assert list(later[0]) == [c for c in TABLES["alert_history"].__struct_fields__
                              if c != "event_id"]
    resolved = AlertResolved(id="0008r", ts=1763460000.0, rule="error-rate",
                             metric="error_rate", value=0.0, fired_id="0007f",
                             severity="warning", message="rule disabled")
    _apply(basic, [("alert.resolved.error-rate", encode_event(resolved))], start=18)
    newest = queries.alerts(con, queries.Filter(), limit=1)
    assert (newest[0]["message"], newest[0]["severity"]) == ("rule disabled", "warning")


def test_redelivery_changes_nothing(tmp_path: Path, basic: Store) -> None:
    before = dump_store(basic)
    events = recorded("ledger_basic.jsonl")
    _apply(basic, events, batch=3)  # everything again, other batch boundaries
    _apply(basic, events[10:], start=11, batch=7)  # a tail, as after a crash before the ack
    assert dump_store(basic) == before
    assert basic.state.events == 17
    # a batch straddling the watermark applies only its new part
    more = [(s, d.replace(b'"req-1"', b'"req-9"').replace(b'"0001', b'"9001'))
            for s, d in events[:2]]
    rows = Rows()
    book = PriceBook()
    for seq, (subject, data) in zip((16, 17, 18, 19), [*events[15:17], *more], strict=True):
        rows.add(project(seq, subject, data, book))
    assert basic.apply(rows)
    assert basic.state.last_seq == 19
    assert basic.con.execute("SELECT count(*) FROM requests").fetchone() == (6,)


def test_state_survives_reopen(tmp_path: Path, basic: Store) -> None:
    basic.close()
    again = Store(tmp_path / "ledger.duckdb")
    assert again.state.last_seq == 17
    _apply(again, recorded("ledger_basic.jsonl"))
    assert again.con.execute("SELECT count(*) FROM requests").fetchone() == (5,)
    again.close()
    assert dump(tmp_path / "ledger.duckdb")["requests"][0][0] == 2


def test_export_writes_parquet_and_csv(tmp_path: Path, basic: Store) -> None:
    assert basic.export("requests", tmp_path / "r.parquet", "parquet") == 5
    assert basic.export("attempts", tmp_path / "a.csv", "csv", where=" WHERE ts >= ?",
                        params=[1763370000.0 + 3600]) == 3
    back = basic.con.execute(
        f"SELECT count(*), sum(cost) FROM read_parquet('{tmp_path / 'r.parquet'}')").fetchone()
    assert back is not None and back[0] == 5
    assert (tmp_path / "a.csv").read_text().splitlines()[0].startswith("seq,event_id")


def dump_store(store: Store) -> dict[str, list[tuple[object, ...]]]:
    from workers.ledger.projection import TABLES

    return {t: store.con.execute(f'SELECT * FROM "{t}" ORDER BY ALL').fetchall()
            for t in TABLES}


def test_an_event_type_without_a_table_goes_to_audit() -> None:
    from typing import Any

    from schemas.events import EventBase
    from workers.ledger.projection import AuditRow, project_event

    class FutureFact(EventBase, frozen=True, kw_only=True):  # added to the union one day
        provider: str

    fact: Any = FutureFact(id="f1", ts=5.0, provider="x")
    assert project_event(1, fact, PriceBook()) is None
    row = project(3, "admin.future", b'{"type": "FutureFact", "id": "f1", "ts": 5}', PriceBook())
    assert isinstance(row, AuditRow) and (row.type, row.event_id, row.ts) == ("FutureFact",
                                                                             "f1", 5.0)
    garbage = project(4, "admin.x", b"\xff not json", PriceBook())
    assert isinstance(garbage, AuditRow) and garbage.type == "invalid"
