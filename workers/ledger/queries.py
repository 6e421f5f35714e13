"""Read queries over the ledger tables. Each takes a DuckDB connection and plain parameters and
returns JSON-ready data (dicts, lists, numbers, strings); the service maps ``cs.ledger.<name>``
requests onto them through ``QUERIES``.

Times are unix seconds (floats). Buckets (hour/day/heatmap) honour ``tz_offset_s`` (seconds
east of UTC, the CLI sends the local offset) so that "a day" is the user's day.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import duckdb
import msgspec

__all__ = [
    "QUERIES",
    "BREAKDOWNS",
    "Filter",
    "FIELDS",
    "QueryError",
    "alerts",
    "audit",
    "breakdown",
    "circuits",
    "heatmap",
    "overview",
    "request_log",
    "series",
]

BREAKDOWNS = ("provider", "model", "user", "key", "session", "dialect", "client",
              "upstream_model", "route")
# "user": the gateway user (its id) when the request came with a user's key, otherwise the
# identity the client sent (metadata.user_id, `user`), as before users existed
_USER = 'coalesce(user_id, "user")'
_BREAKDOWN_COLUMNS = {"user": _USER, "key": "key_id"}
_LOG_COLUMNS = (
    "seq", "ts", "request_id", "dialect", "model", "provider", "upstream_model", "status", "ok",
    "error_class", "error_message", "stream", "attempts", "ttfb_ms", "duration_ms",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "total_tokens", "cost", "price_key", "user", "session", "client",
    "finish_reason", "delivered", "usage_estimated", "source", "client_request_id", "user_id",
    "key_id", "route",
)


class QueryError(ValueError):
    """Bad query parameters; reported to the caller, never a crash."""


class Filter(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    since: float | None = None
    until: float | None = None
    provider: str | None = None
    model: str | None = None  # matches the requested or the upstream model
    status: str | None = None  # "ok" | "error" | "429" | "4xx" | "5xx"
    user: str | None = None  # a gateway user id, or the identity a client sent
    key: str | None = None  # a key id
    session: str | None = None
    dialect: str | None = None
    route: str | None = None  # a route rule's name
    tz_offset_s: int = 0


def _time_range(f: Filter) -> tuple[list[str], list[Any]]:
    """``ts`` inside [since, until): the clauses and parameters every query starts from."""
    clauses: list[str] = []
    params: list[Any] = []
    if f.since is not None:
        clauses.append("ts >= ?")
        params.append(f.since)
    if f.until is not None:
        clauses.append("ts < ?")
        params.append(f.until)
    return clauses, params


def _where(f: Filter) -> tuple[str, list[Any]]:
    clauses, params = _time_range(f)
    for col, expr in (("provider", '"provider"'), ("user", _USER), ("key", "key_id"),
                      ("session", '"session"'), ("dialect", '"dialect"'),
                      ("route", '"route"')):
        value = getattr(f, col)
        if value is not None:
            clauses.append(f"{expr} = ?")
            params.append(value)
    if f.model is not None:
        clauses.append("(model = ? OR upstream_model = ?)")
        params += [f.model, f.model]
    if f.status is not None:
        s = f.status.lower()
        if s == "ok":
            clauses.append("ok")
        elif s in ("error", "errors", "failed"):
            clauses.append("NOT ok")
        elif len(s) == 3 and s[0].isdigit() and s[1:] == "xx":
            clauses.append("status // 100 = ?")
            params.append(int(s[0]))
        elif s.isdigit():
            clauses.append("status = ?")
            params.append(int(s))
        else:
            raise QueryError(f"status must be ok, error, a code or Nxx, not {f.status!r}")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


_METRICS = """
    count(*) AS requests,
    count(*) FILTER (WHERE NOT ok) AS errors,
    coalesce(sum(input_tokens), 0) AS input_tokens,
    coalesce(sum(output_tokens), 0) AS output_tokens,
    coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens,
    coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens,
    coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens,
    coalesce(sum(total_tokens), 0) AS total_tokens,
    sum(cost) AS cost,
    count(*) FILTER (WHERE cost IS NULL AND total_tokens > 0) AS unpriced_requests,
    coalesce(sum(total_tokens) FILTER (WHERE cost IS NULL), 0) AS unpriced_tokens,
    quantile_cont(duration_ms, [0.5, 0.95]) AS _latency,
    quantile_cont(ttfb_ms, [0.5, 0.95]) AS _ttfb
"""
# one list-valued quantile per column sorts it once (about 2x faster than two scalar ones)
# the same without the latency quantiles (``light``): what a chart or a dashboard total needs.
# The quantiles are most of a query's time: 7 days of hourly series over 1,000,000 requests,
# 126 ms with them, 45 ms without (load 14; bench/bench_console.py)
_LIGHT_METRICS = _METRICS.split("    quantile_cont(duration_ms")[0].rstrip().rstrip(",") + "\n"


# ``fields``: only these metrics (a page that shows four of them asks for four). Each is a
# column less to aggregate and to send: the console's statistics page, 1,000,000 requests, 7
# days by hour, DuckDB alone (load 4-6): series 24 -> 12 ms, breakdown 19 -> 11 ms, overview
# 36 -> 20 ms (its two quantiles instead of four), a year's heatmap 44 -> 24 ms
_FIELDS: dict[str, str] = {
    "requests": "count(*)",
    "errors": "count(*) FILTER (WHERE NOT ok)",
    **{t: f"coalesce(sum({t}), 0)" for t in (
        "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
        "reasoning_tokens", "total_tokens")},
    "cost": "sum(cost)",
    "unpriced_requests": "count(*) FILTER (WHERE cost IS NULL AND total_tokens > 0)",
    "unpriced_tokens": "coalesce(sum(total_tokens) FILTER (WHERE cost IS NULL), 0)",
    "first_ts": "min(ts)",
    "last_ts": "max(ts)",
    "attempts": "coalesce(sum(attempts), 0)",
}
_QUANTILE_FIELDS = {"p50_latency_ms": ("duration_ms", 0.5), "p95_latency_ms": ("duration_ms", 0.95),
                    "p50_ttfb_ms": ("ttfb_ms", 0.5), "p95_ttfb_ms": ("ttfb_ms", 0.95)}
FIELDS = (*_FIELDS, *_QUANTILE_FIELDS)


def _fields(fields: Any, always: tuple[str, ...] = ("requests", "errors")) -> str:
    """The SELECT list for ``fields`` (plus ``always``: the error rate needs both)."""
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise QueryError("fields must be a list of metric names")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise QueryError(f"unknown fields {', '.join(unknown)}: choose from {', '.join(FIELDS)}")
    wanted = set(fields) | set(always)
    parts = [f"{expr} AS {name}" for name, expr in _FIELDS.items() if name in wanted]
    parts += [f"quantile_cont({col}, {q}) AS {name}"
              for name, (col, q) in _QUANTILE_FIELDS.items() if name in wanted]
    return ", ".join(parts)


def _dicts(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description or []]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def _with_rate(row: dict[str, Any], fields: Any = None) -> dict[str, Any]:
    row["error_rate"] = (row["errors"] / row["requests"]) if row["requests"] else 0.0
    if fields is not None:
        return row
    for name, key in (("latency", "_latency"), ("ttfb", "_ttfb")):
        q = row.pop(key, None) or [None, None]
        row[f"p50_{name}_ms"], row[f"p95_{name}_ms"] = q[0], q[1]
    return row


def overview(con: duckdb.DuckDBPyConnection, f: Filter, light: bool = False,
             fields: list[str] | None = None) -> dict[str, Any]:
    """Totals: requests, errors, tokens, cost (plus unpriced), p50/p95 latency and TTFB (None
    with ``light``); with ``fields``, only those (and requests, errors, error_rate)."""
    where, params = _where(f)
    if fields is not None:
        return _with_rate(_dicts(con.execute(
            f"SELECT {_fields(fields)} FROM requests{where}", params))[0], fields)
    row = _dicts(con.execute(
        f"SELECT {_LIGHT_METRICS if light else _METRICS}, min(ts) AS first_ts, max(ts) AS last_ts, "
        f"coalesce(sum(attempts), 0) AS attempts FROM requests{where}", params))[0]
    return _with_rate(row)


def series(con: duckdb.DuckDBPyConnection, f: Filter, bucket: str = "hour",
           light: bool = False, fields: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per minute, hour or day that has requests: ``t`` is the bucket start (unix
    seconds). Minutes serve the console's last hour."""
    width = {"minute": 60, "hour": 3600, "day": 86400}.get(bucket)
    if width is None:
        raise QueryError("bucket must be minute, hour or day")
    where, params = _where(f)
    off = int(f.tz_offset_s)
    rows = _dicts(con.execute(
        f"SELECT (floor((ts + {off}) / {width}) * {width} - {off})::BIGINT AS t, "
        f"{_metrics(light, fields)} "
        f"FROM requests{where} GROUP BY ALL ORDER BY t", params))
    return [_with_rate(r, fields) for r in rows]


def _metrics(light: bool, fields: Any, always: tuple[str, ...] = ("requests", "errors")
             ) -> str:
    if fields is not None:
        return _fields(fields, always)
    return _LIGHT_METRICS if light else _METRICS


def breakdown(con: duckdb.DuckDBPyConnection, f: Filter, by: str = "provider",
              limit: int = 50, light: bool = False, fields: list[str] | None = None
              ) -> list[dict[str, Any]]:
    """Metrics per provider, model, user, key, session, dialect or client; by cost then
    count."""
    if by not in BREAKDOWNS:
        raise QueryError(f"by must be one of {', '.join(BREAKDOWNS)}")
    where, params = _where(f)
    column = _BREAKDOWN_COLUMNS.get(by, f'"{by}"')
    rows = _dicts(con.execute(
        f'SELECT {column} AS key, '
        + (_fields(fields, ("requests", "errors", "cost")) if fields is not None
           else f"{_LIGHT_METRICS if light else _METRICS}, max(ts) AS last_ts")
        + f" FROM requests{where} "
        f"GROUP BY ALL ORDER BY cost DESC NULLS LAST, requests DESC, key LIMIT ?",
        [*params, int(limit)]))
    return [_with_rate(r, fields) for r in rows]


def request_log(con: duckdb.DuckDBPyConnection, f: Filter, limit: int = 50,
                before_seq: int | None = None) -> list[dict[str, Any]]:
    """Most recent requests first; page with ``before_seq``."""
    where, params = _where(f)
    if before_seq is not None:
        where += (" AND " if where else " WHERE ") + "seq < ?"
        params.append(int(before_seq))
    cols = ", ".join(f'"{c}"' for c in _LOG_COLUMNS)
    return _dicts(con.execute(
        f"SELECT {cols} FROM requests{where} ORDER BY ts DESC, seq DESC LIMIT ?",
        [*params, max(1, min(int(limit), 1000))]))


_HEAT_FIELDS = ("requests", "errors", "total_tokens", "cost")


def heatmap(con: duckdb.DuckDBPyConnection, f: Filter,
            fields: list[str] | None = None, *, cache: HeatCache | None = None,
            now: float | None = None) -> list[dict[str, Any]]:
    """One row per calendar day (user's offset): date, weekday (0 = Monday) and totals
    (requests, errors, total_tokens, cost; with ``fields``, requests and those).

    With ``cache`` (the store's ``heat_cache``): the days before today are kept between calls
    and only today is grouped again; the store drops an entry when it writes or removes a
    request row older than that entry's today (a late or folded fact, a deleted session, a
    tombstone's bill), so a kept day is never stale. A year over 1,000,000 requests: 18 -> 4 ms
    (docs/console.md)."""
    where, params = _where(f)
    off = int(f.tz_offset_s)
    if fields is not None and (not isinstance(fields, list)
                               or not set(fields) <= set(_HEAT_FIELDS)):
        raise QueryError(f"heatmap fields: a list of {', '.join(_HEAT_FIELDS)}")
    cols = [c for c in _HEAT_FIELDS if fields is None or c == "requests" or c in fields]
    if cache is None or f.until is not None:
        return _heat(con, where, params, off, cols)
    # three parts, whole days apart: the partial first day (``since`` is rarely midnight: the
    # console asks for "a year ago, now"), the whole days before today (kept), today
    day = 86400
    today = float(int(((time.time() if now is None else now) + off) // day) * day - off)
    first = (None if f.since is None
             else float(math.ceil((f.since + off) / day) * day - off))  # the next midnight
    if first is not None and first >= today:
        return _heat(con, where, params, off, cols)
    base_where, base_params = _where(msgspec.structs.replace(f, since=None))
    key = (base_where, tuple(base_params), off, tuple(cols), first, today)
    kept = cache.get(key)
    if kept is None:
        mid_where, mid_params = _where(msgspec.structs.replace(f, since=first, until=today))
        kept = (today, _heat(con, mid_where, mid_params, off, cols))
        while len(cache) >= 32:
            cache.pop(next(iter(cache)))
        cache[key] = kept
    out = list(kept[1])
    if first is not None and first > f.since:  # type: ignore[operator]
        head_where, head_params = _where(msgspec.structs.replace(f, until=first))
        out = [*_heat(con, head_where, head_params, off, cols), *out]
    tail_where, tail_params = _where(msgspec.structs.replace(f, since=today))
    return [*out, *_heat(con, tail_where, tail_params, off, cols)]


HeatCache = dict[tuple[Any, ...], tuple[float, list[dict[str, Any]]]]


def _heat(con: duckdb.DuckDBPyConnection, where: str, params: list[Any], off: int,
          cols: list[str]) -> list[dict[str, Any]]:
    # grouped by the day's number, converted to a date once per day, not per row: 1,000,000
    # requests 498 -> 60 ms (load 14)
    return _dicts(con.execute(
        f"SELECT strftime(d, '%Y-%m-%d') AS day, isodow(d) - 1 AS weekday, {', '.join(cols)} "
        f"FROM (SELECT to_timestamp(k * 86400)::DATE AS d, * FROM ("
        f"SELECT floor((ts + {off}) / 86400)::BIGINT AS k, "
        f"{', '.join(f'{_FIELDS[c]} AS {c}' for c in cols)} "
        f"FROM requests{where} GROUP BY ALL)) ORDER BY day", params))


def alerts(con: duckdb.DuckDBPyConnection, f: Filter, rule: str | None = None,
           limit: int = 100) -> list[dict[str, Any]]:
    """Alert history (fired, resolved, delivery failures), newest first.

    ``severity`` of a row that does not carry one (a resolve recorded before AlertResolved had
    it, a delivery failure) is the one of the alert it refers to: ``fired_id`` / ``alert_id``,
    through a resolve to its fire."""
    clauses, params = _time_range(f)
    if rule is not None:
        clauses.append("rule = ?")
        params.append(rule)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    return _dicts(con.execute(
        f"WITH h AS (SELECT * FROM alert_history{where} ORDER BY ts DESC, seq DESC LIMIT ?), "
        "sev AS (SELECT a.event_id, max(coalesce(a.severity, f.severity)) AS severity "
        "FROM alert_history a LEFT JOIN alert_history f ON f.event_id = a.fired_id "
        "AND f.kind = 'fired' WHERE a.kind IN ('fired', 'resolved') "
        "AND a.event_id IN (SELECT coalesce(fired_id, alert_id) FROM h) GROUP BY a.event_id) "
        "SELECT h.* EXCLUDE (event_id) REPLACE (coalesce(h.severity, sev.severity) AS severity) "
        "FROM h LEFT JOIN sev ON sev.event_id = coalesce(h.fired_id, h.alert_id) "
        "ORDER BY h.ts DESC, h.seq DESC", [*params, int(limit)]))


def circuits(con: duckdb.DuckDBPyConnection, f: Filter, limit: int = 100) -> list[dict[str, Any]]:
    """Circuit breaker transitions, newest first."""
    clauses, params = _time_range(f)
    if f.provider is not None:
        clauses.append("provider = ?")
        params.append(f.provider)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    return _dicts(con.execute(
        f"SELECT * EXCLUDE (event_id) FROM circuit_transitions{where} "
        f"ORDER BY ts DESC, seq DESC LIMIT ?", [*params, int(limit)]))


def audit(con: duckdb.DuckDBPyConnection, f: Filter, actor: str | None = None,
          action: str | None = None, target: str | None = None,
          limit: int = 1000) -> list[dict[str, Any]]:
    """Admin facts, oldest first (the latest ``limit``): time (unix seconds), actor, action,
    target, details (an object). ``actor``/``action``/``target`` match exactly or as a glob
    (``local:*``, ``key.*``)."""
    clauses, params = _time_range(f)
    clauses.append("action IS NOT NULL")
    for col, value in (("actor", actor), ("action", action), ("target", target)):
        if value is not None:
            clauses.append(f"{col} GLOB ?" if any(c in value for c in "*?[") else f"{col} = ?")
            params.append(value)
    rows = con.execute(
        "SELECT ts, actor, action, target, details, event_id FROM (SELECT * FROM audit WHERE "
        + " AND ".join(clauses) + " ORDER BY ts DESC, seq DESC LIMIT ?) ORDER BY ts, seq",
        [*params, max(1, min(int(limit), 100_000))]).fetchall()
    return [{"time": ts, "actor": who, "action": what, "target": target_,
             "details": msgspec.json.decode(details) if details else {}, "id": event_id}
            for ts, who, what, target_, details, event_id in rows]


def table_counts(con: duckdb.DuckDBPyConnection, tables: list[str]) -> dict[str, int]:
    return {t: int(con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])  # type: ignore[index]
            for t in tables}


# name -> (function, names of extra keyword parameters it accepts besides the filter)
QUERIES: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "overview": (overview, ("light", "fields")),
    "series": (series, ("bucket", "light", "fields")),
    "breakdown": (breakdown, ("by", "limit", "light", "fields")),
    "log": (request_log, ("limit", "before_seq")),
    "heatmap": (heatmap, ("fields",)),
    "alerts": (alerts, ("rule", "limit")),
    "alert_history": (alerts, ("rule", "limit")),  # what `codeswitch alerts history` asks
    "circuits": (circuits, ("limit",)),
    "audit": (audit, ("actor", "action", "target", "limit")),
}
