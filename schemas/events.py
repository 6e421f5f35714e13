"""Facts on the event log (stream CS_EVENTS). One tagged union, dispatched with ``match``.

Schema evolution (msgspec docs/schema-evolution.rst): a new field always gets a default and an
existing field never changes type. Every event carries a unique ``id`` (also sent as the
``Nats-Msg-Id`` header, so a re-publish is de-duplicated by JetStream) and ``ts`` (unix seconds).

Usage semantics (normalised across dialects; see docs/architecture.md "Usage"):
    input_tokens        prompt tokens neither read from nor written to a cache
    cache_read_tokens   prompt tokens served from a cache
    cache_write_tokens  prompt tokens written to a cache
    output_tokens       generated tokens, reasoning included
    reasoning_tokens    the part of output_tokens spent on reasoning/thinking
    total input = input + cache_read + cache_write; total = total input + output.

No event carries a key, an auth header or a body: a request's facts name the gateway user and
key by id (``user_id``, ``key_id``), never the secret.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from schemas.ids import new_id

__all__ = [
    "AdminAction",
    "AlertFired",
    "AlertNotificationFailed",
    "AlertResolved",
    "AttemptFinished",
    "CircuitChanged",
    "DeletedRequest",
    "Event",
    "EventBase",
    "PartChanged",
    "QuotaUsed",
    "RequestCompleted",
    "SessionDeleted",
    "Usage",
    "decode_event",
    "encode_event",
    "new_id",
]


class Usage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.total_input_tokens + self.output_tokens


class EventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    id: str
    ts: float


class AttemptFinished(EventBase, frozen=True, kw_only=True):
    """One upstream attempt of a request, whatever its outcome."""

    request_id: str
    attempt: int  # 1-based
    dialect: str  # the client's dialect
    provider: str
    provider_dialect: str
    model: str  # as requested by the client
    upstream_model: str  # as sent to the provider
    stream: bool
    outcome: str  # "ok" | "fallback" (failed, next provider tried) | "failed" (client saw it)
    status: int = 0  # upstream HTTP status, 0 when none was received
    error_class: str | None = None  # connect | timeout | http_4xx | http_5xx | stream_error | ...
    error_message: str | None = None  # sanitised, no secrets
    started_at: float = 0.0
    ttfb_ms: float | None = None
    duration_ms: float = 0.0
    usage: Usage | None = None
    translated: bool = False
    route: str | None = None  # the route rule whose providers this attempt used


class RequestCompleted(EventBase, frozen=True, kw_only=True):
    """The final word on one client request: who served it, how, and what it used."""

    request_id: str
    dialect: str
    operation: str = "generate"
    model: str = ""  # as requested
    provider: str | None = None  # the provider that served it, None if none did
    provider_dialect: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    status: int = 0  # HTTP status the client got
    error_class: str | None = None
    error_message: str | None = None
    received_at: float = 0.0
    ttfb_ms: float | None = None
    duration_ms: float = 0.0
    usage: Usage | None = None
    attempts: int = 0
    translated: bool = False
    finish_reason: str | None = None
    user: str | None = None  # client identity where the client sends one
    session: str | None = None
    client: str | None = None  # e.g. "claude-code", "codex", "gemini-cli", "anthropic-sdk"
    edge: str | None = None
    router: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    # the client's own id for the request (Codex's x-client-request-id), when it sent one
    client_request_id: str | None = None
    # False when the answer did not reach the client whole (client or edge gone, router lost);
    # the usage still counts, the request counts as an error
    delivered: bool = True
    # "edge" | "router" | "recovered": who wrote this fact (a request can have several; the
    # ledger folds them into one row per request id)
    source: str = "router"
    usage_estimated: bool = False  # usage is an estimate (the router died before the end)
    # the gateway user and key the request was authenticated with (ids, never the key);
    # None when the gateway has no users (or the key was refused before it was known)
    user_id: str | None = None
    key_id: str | None = None
    # the gateway host that served it (``CODESWITCH_DEVICE`` or the host name): with several
    # devices joined, where the session ran
    device: str | None = None
    # the route rule that chose its providers (schemas/routes.py); None: normal routing (or
    # a pinned provider). Facts from before route rules have none.
    route: str | None = None


class CircuitChanged(EventBase, frozen=True, kw_only=True):
    """A provider's (or provider+model's) circuit breaker changed state.

    Subject: provider.circuit.<provider>.<state>."""

    provider: str
    model: str | None = None  # set when the breaker is per provider+model
    state: str  # "closed" | "open" | "half_open"
    previous: str
    failures: int = 0  # failures counted in the window when it opened
    reason: str | None = None
    router: str | None = None


class AlertFired(EventBase, frozen=True, kw_only=True):
    """An alert rule crossed its threshold. Subject: alert.fired.<rule>."""

    rule: str
    metric: str
    scope: str = "all"  # "all" or "<kind>:<value>", e.g. "provider:main"
    value: float
    threshold: float
    comparison: str  # ">", ">=", "<", "<="
    window_s: float
    severity: str = "warning"
    message: str = ""
    repeat_of: str | None = None  # set on a reminder: id of the AlertFired it repeats


class AlertResolved(EventBase, frozen=True, kw_only=True):
    """A firing alert cleared. Subject: alert.resolved.<rule>."""

    rule: str
    metric: str
    scope: str = "all"
    value: float
    fired_id: str | None = None  # id of the AlertFired it resolves
    message: str = ""
    severity: str | None = None  # the rule's; None on facts written before it was recorded


class AlertNotificationFailed(EventBase, frozen=True, kw_only=True):
    """A webhook delivery gave up after its retries. Subject: alert.delivery_failed.<rule>."""

    rule: str
    channel: str
    alert_id: str
    attempts: int
    error: str


class QuotaUsed(EventBase, frozen=True, kw_only=True):
    """How much of a user's quota the current period has used: the latest one per user is the
    level (a new period starts with ``used`` back at 0). Subject: user.<user>.quota."""

    user: str
    used: float  # consumed in the period, in ``unit``
    limit: Annotated[float, msgspec.Meta(gt=0)]  # the period's quota, in ``unit``
    unit: str = "usd"  # "usd" | "tokens" | ...
    period: str = "month"  # "day" | "month" | ...
    # published by the quota worker (workers/quota): a key's budget is on its owner's subject
    # with ``key`` set; ``crossed`` marks the one fact per period that crossed the soft
    # threshold ("soft") or the limit ("hard")
    key: str | None = None  # the key id when this is a key's budget
    name: str | None = None  # the user's name (``user`` is its id)
    key_name: str | None = None
    crossed: str | None = None  # "soft" | "hard" | None
    soft_pct: float | None = None
    period_start: float | None = None
    resets_at: float | None = None  # None: never (total)


class PartChanged(EventBase, frozen=True, kw_only=True):
    """A part of a running gateway started, exited, was restarted or is crash-looping.
    Subject: gateway.part.<part>.<state>; published by the supervisor."""

    part: str  # edge | router | router-2 | ledger | alerts | nats-server | supervisor
    state: str  # "started" | "exited" | "restarted" | "crash_loop" | "recovered"
    pid: int | None = None
    exit_code: int | None = None
    restarts: int = 0  # restarts in the last 10 minutes
    backoff_s: float = 0.0  # wait before the next start
    message: str = ""
    host: str | None = None


class AdminAction(EventBase, frozen=True, kw_only=True):
    """An administrator changed the gateway: users, keys, limits, providers, settings, alert
    rules, MCP servers, skills, the body log. Subject: ``admin.<action>``, e.g.
    ``admin.user.created``, ``admin.key.revoked``, ``admin.provider.removed``. The ledger keeps
    every one in its audit table (``codeswitch audit``)."""

    actor: str  # who: "local:<os user>" for the CLI and `codeswitch up`, later a user id
    action: str  # "<thing>.<verb>": user.created, key.revoked, limit.changed, provider.added...
    target: str  # "<kind>:<name>": user:alice, key:alice/laptop, provider:main, setting:routing
    details: dict[str, Any] = {}  # what changed (ids, fields); never a secret


class DeletedRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The bill of one request of a deleted session: what statistics and budgets need, without
    the request id, the session, the messages or any text (error messages included)."""

    ts: float
    received_at: float = 0.0
    dialect: str
    operation: str = "generate"
    model: str = ""
    provider: str | None = None
    provider_dialect: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    status: int = 0
    error_class: str | None = None
    ttfb_ms: float | None = None
    duration_ms: float = 0.0
    usage: Usage | None = None
    usage_estimated: bool = False
    attempts: int = 0
    translated: bool = False
    delivered: bool = True
    user: str | None = None
    client: str | None = None
    device: str | None = None
    user_id: str | None = None
    key_id: str | None = None


class SessionDeleted(EventBase, frozen=True, kw_only=True):
    """A session was deleted for real (``codeswitch sessions delete``): its requests' facts
    were erased from the event log, its bodies from the body log, its rows from the ledger.
    This tombstone keeps the bill, so replay, budgets and statistics stay right without the
    details: one ``DeletedRequest`` per request, in ``parts`` facts when there are many.
    Subject: ``session.deleted``.

    ``session_hash`` (sha256 of the session id, hex) lets a replay drop rows of the session it
    still finds (facts an erase missed); the id itself never goes on the log again."""

    session_hash: str
    requests: list[DeletedRequest] = []
    part: int = 1
    parts: int = 1
    deleted_by: str | None = None  # "local:<os user>" for the CLI


Event = (
    AttemptFinished
    | RequestCompleted
    | CircuitChanged
    | AlertFired
    | AlertResolved
    | AlertNotificationFailed
    | QuotaUsed
    | PartChanged
    | AdminAction
    | SessionDeleted
)

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> Event:
    return _decoder.decode(data)


