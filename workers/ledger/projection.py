"""Events -> rows. Pure: no NATS, no DuckDB; the same input always gives the same rows.

One row Struct per table; the field list *is* the table schema (``store.py`` derives the DDL
from it), so a new column is one new field with a default. Every row carries ``seq`` (the
CS_EVENTS stream sequence) and ``event_id``: where a row comes from is never lost.

``sessions`` is derived from ``requests`` (one row per session id, recomputed from the folded
request rows of the sessions a batch touches: ``workers/ledger/sessions.py``), so it is as
idempotent and order-independent as the request fold. A ``SessionDeleted`` tombstone becomes
one ``deleted_sessions`` row plus one ``requests`` row per request of its bill (no request id,
session or text: ``deleted:<event id>:<n>``), and the store drops what is left of the session.

``audit`` holds every admin fact (``AdminAction``: who did what to which thing, with its
details; ``codeswitch audit`` reads it), and verbatim every fact the ledger has no table for
yet (quota and part facts, unknown event types) so that nothing on the log is silently dropped.
"""

from __future__ import annotations

import msgspec

from schemas.events import (
    AdminAction,
    AlertFired,
    AlertNotificationFailed,
    AlertResolved,
    AttemptFinished,
    CircuitChanged,
    DeletedRequest,
    Event,
    RequestCompleted,
    SessionDeleted,
    Usage,
    decode_event,
)
from schemas.prices import PriceBook, Priced

__all__ = [
    "TABLES",
    "AlertRow",
    "AttemptRow",
    "AuditRow",
    "CircuitRow",
    "DeletedSessionRow",
    "RequestRow",
    "SessionRow",
    "fold_requests",
    "Row",
    "Rows",
    "project",
    "project_event",
]

_NO_USAGE = Usage()


class RequestRow(msgspec.Struct, kw_only=True):
    seq: int
    event_id: str
    request_id: str
    ts: float  # when the request completed (event time, unix seconds)
    received_at: float
    dialect: str
    operation: str
    model: str
    provider: str | None
    provider_dialect: str | None
    upstream_model: str | None
    stream: bool
    status: int
    ok: bool
    error_class: str | None
    error_message: str | None
    ttfb_ms: float | None
    duration_ms: float
    has_usage: bool
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    total_tokens: int
    attempts: int
    translated: bool
    finish_reason: str | None
    user: str | None
    session: str | None
    client: str | None
    edge: str | None
    router: str | None
    bytes_in: int
    bytes_out: int
    cost: float | None  # USD; NULL when no price is known (unpriced), never a made-up 0
    price_key: str | None  # the price entry used, e.g. "claude-sonnet-4-5" or "...>200k"
    price_source: str | None  # builtin | override | provider:<name>
    price_input: float | None  # the rates used, USD per million tokens
    price_output: float | None
    price_cache_read: float | None
    price_cache_write: float | None
    price_reasoning: float | None
    # the answer reached the client whole (False: client/edge gone, router lost, ...)
    delivered: bool = True
    # who recorded it: router | edge | recovered, joined with "+" when facts were folded
    source: str = "router"
    usage_estimated: bool = False
    client_request_id: str | None = None
    # the gateway user and key (ids) the edge authenticated; None without users
    user_id: str | None = None
    key_id: str | None = None
    device: str | None = None  # the gateway host that served it
    route: str | None = None  # the route rule that chose its providers (None: normal routing)
    # the stream sequences of every fact folded into this row, space-separated (a session
    # delete erases each of them)
    fact_seqs: str = ""


class AttemptRow(msgspec.Struct, kw_only=True):
    seq: int
    event_id: str
    request_id: str
    attempt: int
    ts: float
    started_at: float
    dialect: str
    provider: str
    provider_dialect: str
    model: str
    upstream_model: str
    stream: bool
    outcome: str
    status: int
    error_class: str | None
    error_message: str | None
    ttfb_ms: float | None
    duration_ms: float
    has_usage: bool
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    total_tokens: int
    translated: bool
    cost: float | None
    price_key: str | None


class CircuitRow(msgspec.Struct, kw_only=True):
    seq: int
    event_id: str
    ts: float
    provider: str
    model: str | None
    state: str
    previous: str
    failures: int
    reason: str | None
    router: str | None


class AlertRow(msgspec.Struct, kw_only=True):
    seq: int
    event_id: str
    ts: float
    kind: str  # fired | resolved | delivery_failed
    rule: str
    metric: str | None = None
    scope: str | None = None
    value: float | None = None
    threshold: float | None = None
    comparison: str | None = None
    window_s: float | None = None
    severity: str | None = None
    message: str | None = None
    fired_id: str | None = None
    channel: str | None = None
    alert_id: str | None = None
    attempts: int | None = None
    error: str | None = None


class AuditRow(msgspec.Struct, kw_only=True):
    seq: int
    event_id: str | None
    ts: float | None
    subject: str
    type: str
    data: str  # the event JSON, verbatim
    # an admin fact (AdminAction): who, what, on which thing, and the details as JSON
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    details: str | None = None


class SessionRow(msgspec.Struct, kw_only=True):
    """One conversation (session id), derived from its request rows (never from an event)."""

    seq: int  # the highest sequence of its requests
    ts: float  # last seen: when its latest request completed
    session: str
    first_seq: int  # the lowest: a refresh reads its requests from there on
    first_seen: float
    user: str | None  # the gateway user (id) or the identity its client sent, latest
    client: str | None
    device: str | None  # the device of its latest request
    devices: str  # every device that served it, comma-separated
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost: float | None
    models: str  # comma-separated, sorted
    providers: str
    first_request_id: str
    last_request_id: str
    # the request carrying the most history (the largest body): its body-log entry is the
    # conversation (`sessions show`) and gives the title
    main_request_id: str


class DeletedSessionRow(msgspec.Struct, kw_only=True):
    """A ``SessionDeleted`` tombstone (one per part): what the deleted session cost."""

    seq: int
    event_id: str
    ts: float  # when it was deleted
    session_hash: str
    part: int
    parts: int
    requests: int
    errors: int
    total_tokens: int
    cache_read_tokens: int
    cost: float | None
    first_seen: float | None
    last_seen: float | None
    user: str | None
    client: str | None
    deleted_by: str | None


Row = (RequestRow | AttemptRow | CircuitRow | AlertRow | AuditRow | SessionRow
       | DeletedSessionRow)

TABLES: dict[str, type[Row]] = {
    "requests": RequestRow,
    "attempts": AttemptRow,
    "circuit_transitions": CircuitRow,
    "alert_history": AlertRow,
    "audit": AuditRow,
    "sessions": SessionRow,
    "deleted_sessions": DeletedSessionRow,
}
_TABLE_OF: dict[type, str] = {cls: name for name, cls in TABLES.items()}


def _price_cols(priced: Priced | None, usage: Usage) -> tuple[float | None, str | None]:
    if priced is None:
        return None, None
    cost = priced.price.cost(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens,
                             usage.cache_write_tokens, usage.reasoning_tokens)
    tier = priced.price.tier(usage.total_input_tokens)
    key = priced.key if tier is priced.price else f"{priced.key}>{priced.price.above_tokens}"
    return cost, key


def _request(seq: int, ev: RequestCompleted, prices: PriceBook) -> RequestRow:
    usage = ev.usage or _NO_USAGE
    priced = prices.lookup(ev.provider, ev.upstream_model or ev.model)
    cost, key = _price_cols(priced, usage)
    tier = priced.price.tier(usage.total_input_tokens) if priced else None
    return RequestRow(
        seq=seq, event_id=ev.id, request_id=ev.request_id, ts=ev.ts,
        received_at=ev.received_at, dialect=ev.dialect, operation=ev.operation, model=ev.model,
        provider=ev.provider, provider_dialect=ev.provider_dialect,
        upstream_model=ev.upstream_model, stream=ev.stream, status=ev.status,
        ok=ev.error_class is None and ev.status < 400 and ev.delivered,
        error_class=ev.error_class,
        error_message=ev.error_message, ttfb_ms=ev.ttfb_ms, duration_ms=ev.duration_ms,
        has_usage=ev.usage is not None, input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens, cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens, reasoning_tokens=usage.reasoning_tokens,
        total_tokens=usage.total_tokens, attempts=ev.attempts, translated=ev.translated,
        finish_reason=ev.finish_reason, user=ev.user, session=ev.session, client=ev.client,
        edge=ev.edge, router=ev.router, bytes_in=ev.bytes_in, bytes_out=ev.bytes_out,
        cost=cost, price_key=key, price_source=priced.source if priced else None,
        price_input=tier.input if tier else None, price_output=tier.output if tier else None,
        price_cache_read=tier.cr if tier else None, price_cache_write=tier.cw if tier else None,
        price_reasoning=tier.reasoning if tier else None,
        delivered=ev.delivered, source=ev.source, usage_estimated=ev.usage_estimated,
        client_request_id=ev.client_request_id, user_id=ev.user_id, key_id=ev.key_id,
        device=ev.device, route=ev.route, fact_seqs=str(seq),
    )


_USAGE_COLS = ("has_usage", "input_tokens", "output_tokens", "cache_read_tokens",
               "cache_write_tokens", "reasoning_tokens", "total_tokens", "cost", "price_key",
               "price_source", "price_input", "price_output", "price_cache_read",
               "price_cache_write", "price_reasoning", "usage_estimated")
_PRECEDENCE = {"router": 0, "recovered": 1, "edge": 2}


def _rank(row: RequestRow) -> tuple[int, int]:
    first = row.source.split("+", 1)[0]
    return (_PRECEDENCE.get(first, 3), -row.seq)


def fold_requests(rows: list[RequestRow]) -> RequestRow:
    """Several facts about one request (the router's answer, the edge's view of what the
    client got, a fact recovered for a router that died, the same fact published twice) ->
    the one row of that request. Order-independent and idempotent: fold(a, b) == fold(b, a)
    and fold(a, a) == a.

    - the router's fact is the base (who served, timings); else the recovered one; else the
      edge's;
    - usage and cost: real usage wins over an estimate (the larger real one when two differ);
    - the client's outcome: an edge fact with an error is what the client saw (its status and
      error); the answer counts as delivered only if no fact says otherwise; ``ok`` only when
      delivered without error.
    """
    uniq = list({r.event_id: r for r in sorted(rows, key=lambda r: r.seq)}.values())
    if len(uniq) == 1:
        return uniq[0]
    uniq.sort(key=_rank)
    base = msgspec.structs.replace(uniq[0])
    real = [r for r in uniq if r.has_usage and not r.usage_estimated]
    usage_from = (max(real, key=lambda r: (r.total_tokens, -_rank(r)[0])) if real
                  else next((r for r in uniq if r.has_usage), base))
    for col in _USAGE_COLS:
        setattr(base, col, getattr(usage_from, col))
    edge_error = next((r for r in uniq if r.source == "edge" and r.error_class), None)
    if edge_error is not None:
        base.status = edge_error.status
        base.error_class = edge_error.error_class
        base.error_message = edge_error.error_message
    base.delivered = all(r.delivered for r in uniq)
    if not base.delivered and base.error_class is None:
        base.error_class = next((r.error_class for r in uniq if r.error_class), "not_delivered")
    base.ok = base.delivered and base.error_class is None and base.status < 400
    for col in ("provider", "provider_dialect", "upstream_model", "user", "session",
                "client", "edge", "router", "client_request_id", "finish_reason", "user_id",
                "key_id", "device", "route"):
        if getattr(base, col) is None:
            setattr(base, col, next((getattr(r, col) for r in uniq
                                     if getattr(r, col) is not None), None))
    base.fact_seqs = " ".join(sorted({q for r in uniq for q in r.fact_seqs.split()},
                                     key=int))
    base.seq = max(r.seq for r in uniq)
    base.ts = max(r.ts for r in uniq)
    base.source = "+".join(sorted({part for r in uniq for part in r.source.split("+")},
                                  key=lambda x: _PRECEDENCE.get(x, 3)))
    return base


def _attempt(seq: int, ev: AttemptFinished, prices: PriceBook) -> AttemptRow:
    usage = ev.usage or _NO_USAGE
    cost, key = _price_cols(prices.lookup(ev.provider, ev.upstream_model or ev.model), usage)
    return AttemptRow(
        seq=seq, event_id=ev.id, request_id=ev.request_id, attempt=ev.attempt, ts=ev.ts,
        started_at=ev.started_at, dialect=ev.dialect, provider=ev.provider,
        provider_dialect=ev.provider_dialect, model=ev.model, upstream_model=ev.upstream_model,
        stream=ev.stream, outcome=ev.outcome, status=ev.status, error_class=ev.error_class,
        error_message=ev.error_message, ttfb_ms=ev.ttfb_ms, duration_ms=ev.duration_ms,
        has_usage=ev.usage is not None, input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens, cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens, reasoning_tokens=usage.reasoning_tokens,
        total_tokens=usage.total_tokens, translated=ev.translated, cost=cost, price_key=key,
    )


def _deleted_request(seq: int, ev: SessionDeleted, n: int, d: DeletedRequest,
                     prices: PriceBook) -> RequestRow:
    """One request of a deleted session's bill: a row for the statistics, priced like any."""
    row = _request(seq, RequestCompleted(
        id=ev.id, ts=d.ts, request_id=f"deleted:{ev.id}:{n}", dialect=d.dialect,
        operation=d.operation, model=d.model, provider=d.provider,
        provider_dialect=d.provider_dialect, upstream_model=d.upstream_model, stream=d.stream,
        status=d.status, error_class=d.error_class, received_at=d.received_at,
        ttfb_ms=d.ttfb_ms, duration_ms=d.duration_ms, usage=d.usage, attempts=d.attempts,
        translated=d.translated, user=d.user, client=d.client, delivered=d.delivered,
        source="deleted", usage_estimated=d.usage_estimated, user_id=d.user_id,
        key_id=d.key_id, device=d.device), prices)
    row.fact_seqs = ""
    return row


def _session_deleted(seq: int, ev: SessionDeleted, prices: PriceBook) -> list[Row]:
    requests = [_deleted_request(seq, ev, n, d, prices) for n, d in enumerate(ev.requests)]
    priced = [r.cost for r in requests if r.cost is not None]
    first = min((r.received_at or r.ts for r in requests), default=None)
    last = max((r.ts for r in requests), default=None)
    latest = max(requests, key=lambda r: r.ts, default=None)
    tomb = DeletedSessionRow(
        seq=seq, event_id=ev.id, ts=ev.ts, session_hash=ev.session_hash, part=ev.part,
        parts=ev.parts, requests=len(requests), errors=sum(not r.ok for r in requests),
        total_tokens=sum(r.total_tokens for r in requests),
        cache_read_tokens=sum(r.cache_read_tokens for r in requests),
        cost=sum(priced) if priced else None, first_seen=first, last_seen=last,
        user=(latest.user_id or latest.user) if latest else None,
        client=latest.client if latest else None, deleted_by=ev.deleted_by)
    return [*requests, tomb]  # the tombstone last: the batch's last event time is its own


def project_event(seq: int, event: Event, prices: PriceBook) -> Row | list[Row] | None:
    """The row(s) one decoded event becomes; None for an event type without a table."""
    match event:
        case RequestCompleted():
            return _request(seq, event, prices)
        case AttemptFinished():
            return _attempt(seq, event, prices)
        case CircuitChanged():
            return CircuitRow(
                seq=seq, event_id=event.id, ts=event.ts, provider=event.provider,
                model=event.model, state=event.state, previous=event.previous,
                failures=event.failures, reason=event.reason, router=event.router,
            )
        case AlertFired():
            return AlertRow(
                seq=seq, event_id=event.id, ts=event.ts, kind="fired", rule=event.rule,
                metric=event.metric, scope=event.scope, value=event.value,
                threshold=event.threshold, comparison=event.comparison,
                window_s=event.window_s, severity=event.severity, message=event.message,
            )
        case AlertResolved():
            return AlertRow(
                seq=seq, event_id=event.id, ts=event.ts, kind="resolved", rule=event.rule,
                metric=event.metric, scope=event.scope, value=event.value,
                severity=event.severity, fired_id=event.fired_id, message=event.message,
            )
        case SessionDeleted():
            return _session_deleted(seq, event, prices)
        case AlertNotificationFailed():
            return AlertRow(
                seq=seq, event_id=event.id, ts=event.ts, kind="delivery_failed",
                rule=event.rule, channel=event.channel, alert_id=event.alert_id,
                attempts=event.attempts, error=event.error,
            )
    return None  # admin facts and facts without a table: kept in audit by project()


_generic = msgspec.json.Decoder()
_encode = msgspec.json.Encoder().encode


def _admin(seq: int, subject: str, data: bytes, ev: AdminAction) -> AuditRow:
    return AuditRow(seq=seq, event_id=ev.id, ts=ev.ts, subject=subject, type="AdminAction",
                    data=data.decode("utf-8", "replace"), actor=ev.actor, action=ev.action,
                    target=ev.target, details=_encode(ev.details).decode())


def _audit(seq: int, subject: str, data: bytes) -> AuditRow:
    try:
        raw = _generic.decode(data)
    except msgspec.DecodeError:
        raw = None
    text = data.decode("utf-8", "replace")
    if not isinstance(raw, dict):
        return AuditRow(seq=seq, event_id=None, ts=None, subject=subject, type="invalid",
                        data=msgspec.json.encode(text).decode())
    ts = raw.get("ts")
    return AuditRow(
        seq=seq, event_id=raw.get("id") if isinstance(raw.get("id"), str) else None,
        ts=float(ts) if isinstance(ts, int | float) else None, subject=subject,
        type=str(raw.get("type", "unknown")), data=text,
    )


def project(seq: int, subject: str, data: bytes, prices: PriceBook) -> Row | list[Row]:
    """The row(s) one stream message becomes; anything not understood lands in ``audit``."""
    try:
        event = decode_event(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _audit(seq, subject, data)
    if isinstance(event, AdminAction):
        return _admin(seq, subject, data, event)
    row = project_event(seq, event, prices)
    return row if row is not None else _audit(seq, subject, data)


class Rows:
    """Rows of one batch, grouped by table, plus the batch's sequence range."""

    def __init__(self) -> None:
        self.by_table: dict[str, list[Row]] = {name: [] for name in TABLES}
        self.first_seq = 0
        self.last_seq = 0
        self.last_ts: float | None = None
        self.count = 0
        # tombstones that came from another device (runtime/sync.py): this ledger erases its
        # own copies of their sessions' facts once they are folded
        self.peer_tombstones: set[int] = set()

    def add(self, row: Row | list[Row]) -> None:
        if isinstance(row, list):  # one event, several rows (a session's tombstone)
            for one in row:
                self.add(one)
            self.count -= len(row) - 1  # counted as one event
            return
        self.by_table[_TABLE_OF[type(row)]].append(row)
        if not self.first_seq or row.seq < self.first_seq:
            self.first_seq = row.seq
        self.last_seq = max(self.last_seq, row.seq)
        if row.ts is not None:
            self.last_ts = row.ts
        self.count += 1

    def __len__(self) -> int:
        return self.count
