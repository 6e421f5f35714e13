"""The AsyncAPI 3.0 document of every NATS subject codeswitch uses, generated with faststream.

    python -m codeswitch.asyncapi                       # JSON on stdout
    python -m codeswitch.asyncapi -o docs/asyncapi.json # what is committed (docs/asyncapi.md)
    python -m codeswitch.asyncapi --yaml -o FILE        # needs pyyaml, not a dependency

Documentation only: no part imports this module, and it is the only module that imports
faststream (tests/test_asyncapi.py checks both), so no gateway process pays for faststream,
pydantic and fast_depends at start (numbers in docs/architecture.md). The parts talk to NATS
with nats-py directly.

How the document is made:

* ``ENDPOINTS`` lists, for every subject, each part that sends on it and each part that
  receives it, with the payload and what the message means. ``build_broker`` declares them on
  a faststream ``NatsBroker`` (a publisher per sender, a subscriber with a typed handler per
  receiver; the broker never connects) and faststream's ``AsyncAPI(...).to_specification()``
  lays them out as servers, channels, operations, messages and ``components/schemas``.
  Channel and operation ids are ``<subject name>:<part>:<send|receive>``.
* Payload schemas are msgspec's (``msgspec.json.schema_components``): what the decoders
  really accept, tag field, defaults and ``Meta`` constraints included. faststream builds
  JSON Schema with pydantic, which cannot read a msgspec Struct, so a payload type is handed
  to it as ``Annotated[Struct, WithJsonSchema(<msgspec's schema>)]``: faststream files it
  under ``components/schemas/<Struct name>`` and points the message at it. Nested Structs
  (``Usage``) are inlined: pydantic refuses a ``$ref`` it did not make. Translating the
  Structs into pydantic models instead would be a second definition of every contract.
* What faststream 0.7.8 does not emit is added to the generated dict by ``_complete``: channel
  parameters, message headers (``Cs-Env``, ``Nats-Msg-Id``), content types and correlation
  ids (faststream writes its own ``correlation_id`` header, which codeswitch does not send),
  request/reply links, operation summaries, and the Structs carried inside a header or a
  framed reply (``RequestEnvelope``, ``ReplyStart``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from faststream.nats import NatsBroker
from faststream.nats.security import NatsUserPassword
from faststream.specification import AsyncAPI
from pydantic import Field, PlainValidator, WithJsonSchema

from runtime import names
from runtime.home import DEFAULT_NATS_URL
from schemas import subjects as s
from schemas.dialects import DIALECTS
from schemas.envelope import ENV_HEADER, ReplyStart, RequestEnvelope
from schemas.events import (
    AdminAction,
    AlertFired,
    AlertNotificationFailed,
    AlertResolved,
    AttemptFinished,
    CircuitChanged,
    PartChanged,
    QuotaUsed,
    RequestCompleted,
    SessionDeleted,
)
from schemas.ratelimit import RateNote

__all__ = [
    "ENDPOINTS",
    "SCHEMA_VERSION",
    "Body",
    "Endpoint",
    "build_broker",
    "build_document",
    "document_json",
    "main",
]

SCHEMA_VERSION = "3.0.0"

# Subjects with no constant in schemas/subjects.py (tests/test_asyncapi.py checks them against
# the code that uses them).
ACK_PREFIX = "_INBOX.csack"  # workers/router/reply.py
ALERT_PREFIX = "alert"  # workers/alerts/service.py alert_subject
ROUTERS_QUEUE = "routers"  # queue group of cs.router.ping / cs.router.models
LEDGER_QUEUE = "cs-ledger"  # queue group of cs.ledger.<query>
LEDGER_ENCODING_HEADER = "Cs-Encoding"  # workers/ledger/wire.py


# -- payloads ---------------------------------------------------------------------------------


class FailureNote(msgspec.Struct):
    """One failure a router counted toward a circuit breaker (as ``workers/router/breakers.py``
    ``_FailureNote`` decodes it)."""

    key: str
    provider: str
    ts: float
    router: str
    model: str | None = None
    reason: str | None = None


class RollCallAnswer(msgspec.Struct):
    """A live router's answer to the roll call (``workers/router/service.py``)."""

    router: str
    in_flight: int  # requests this router is serving
    applied: dict[str, int]  # per KV bucket: the revision its local copy reflects


class LedgerReply(msgspec.Struct, omit_defaults=True):
    """The ledger's answer to ``cs.ledger.<query>`` (docs/ledger.md). Over 64 KB it is
    zlib-compressed, with the header ``Cs-Encoding: zlib``."""

    ok: bool
    result: Any = None
    error: str | None = None


@dataclass(frozen=True)
class Body:
    """A message body: the type faststream is given for it, and its content type."""

    type: Any
    content_type: str = "application/json"


def _inline(node: Any, components: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if set(node) == {"$ref"}:
            return _inline(components[node["$ref"].rsplit("/", 1)[-1]], components)
        return {k: _inline(v, components) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, components) for v in node]
    return node


def struct_schema(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """msgspec's JSON Schema of ``struct``, nested Structs inlined."""
    (top,), components = msgspec.json.schema_components([struct])
    schema: dict[str, Any] = _inline(top, components)
    return schema


def _as_is(value: Any) -> Any:  # pragma: no cover - nothing is ever validated
    return value


def _struct(struct: type[msgspec.Struct]) -> Body:
    # PlainValidator: pydantic builds no schema of its own for the Struct (it cannot)
    return Body(Annotated[struct, PlainValidator(_as_is), WithJsonSchema(struct_schema(struct)),
                          Field(title=struct.__name__)])


def _opaque(title: str, description: str, content_type: str = "application/octet-stream",
            **schema: Any) -> Body:
    """A body that is not a JSON document of ours (bytes, a word, a client's JSON)."""
    if content_type == "application/octet-stream":
        schema = {"type": "string", "format": "binary", **schema}
    json_schema = {"title": title, "description": description, **schema}
    return Body(Annotated[bytes, WithJsonSchema(json_schema), Field(title=title)], content_type)


EMPTY = _opaque("Empty", "No payload (zero bytes): the subject says it all.", maxLength=0)
ALIVE = _opaque("Alive", 'The answer `1`: alive.', "text/plain", type="string", enum=["1"])
CLIENT_BODY = _opaque(
    "ClientBody",
    "The client's request body, byte for byte as it arrived, in the client's dialect. Empty "
    "when it was over the server's max_payload: then the envelope's `body_ref` names it in "
    f"the object store `{names.BODIES_BUCKET}`.", "application/json")
REPLY_FRAME = _opaque(
    "ReplyFrame",
    "One frame of an answer; the first byte is its kind. `A` (0x41) accepted/heartbeat, then "
    "the router's id. `S` (0x53) start: `ReplyStart` JSON, a newline, the first body bytes. "
    "`D` (0x44) data: a 4-byte big-endian sequence number (1, 2, ... after the start), then "
    "body bytes relayed as they are. `E` (0x45) end: the sequence number. `F` (0x46) full: "
    "`ReplyStart` JSON, a newline, the whole body (non-streaming answers). See "
    "#/components/schemas/ReplyStart and schemas/envelope.py.")
DELIVERED = _opaque(
    "DeliveredWord",
    "`1`: the request is still the edge's, the answer is delivered; `0`: the client went "
    "away. A dead edge makes the server answer `no responders` (an empty message with the "
    "header `Status: 503`).", "text/plain", type="string", enum=["1", "0"])
ROUTER_ID = _opaque("RouterId", "The answering router's id.", "text/plain", type="string")
DIALECT_NAME = _opaque(
    "DialectName", "The dialect to render the model list in; empty means `openai-chat`.",
    "text/plain", type="string", enum=["", *DIALECTS])
MODEL_LIST = _opaque(
    "ModelList", "The model list as that dialect's models endpoint returns it "
    "(`workers/router/models.py`).", "application/json", type="object")
LEDGER_QUERY = _opaque(
    "LedgerQuery", "The query's parameters: the filter fields and the query's own "
    "(docs/ledger.md).", "application/json", type="object")
ANY_FACT = _opaque(
    "Fact", "A fact: a JSON object whose `type` names its schema (one of the event "
    "schemas), with a unique `id` and `ts` (unix seconds).", "application/json",
    type="object", required=["type", "id", "ts"])


# -- endpoints --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One part sending (``send``) or receiving (``receive``) on one subject."""

    name: str  # the subject's short name
    address: str  # the subject, with {parameters}
    part: str  # edge | router | ledger | alerts | supervisor | cli
    action: Literal["send", "receive"]
    body: Body
    description: str
    queue: str = ""  # NATS queue group (receive)
    stream: str | None = None  # the JetStream stream the subject is stored in
    reply: Body | None = None  # request/reply: the answer's body
    headers: dict[str, Any] = field(default_factory=dict)  # header name -> JSON Schema
    correlation: str | None = None  # runtime expression of the correlation id
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # parameter overrides

    @property
    def id(self) -> str:
        """The channel's and the operation's id."""
        return f"{self.name}:{self.part}:{self.action}"


PARAMETERS: dict[str, dict[str, Any]] = {
    "dialect": {"description": "The client's dialect.", "enum": list(DIALECTS)},
    "provider": {"description": "The provider's name as one subject token (`safe_token`: dots,"
                                " wildcards and whitespace become `_`; `-` when none)."},
    "request_id": {"description": "The request id (`x-codeswitch-request-id`)."},
    "edge": {"description": "The edge process's id."},
    "router": {"description": "The router process's id."},
    "key": {"description": "The breaker key: `<provider>` (transport failures) or "
                           "`<provider>.<model>` (failing answers), so one or two tokens."},
    "query": {"description": "The query's name: overview, series, breakdown, log, heatmap, "
                             "alerts, circuits, audit, sessions, session, session_delete, "
                             "online, status, prices, export, replay (docs/ledger.md)."},
    "rule": {"description": "The alert rule's name (`safe_token`)."},
    "user": {"description": "The user's name (`safe_token`)."},
    "part": {"description": "The part: edge, router, router-2, ledger, alerts, nats-server, "
                            "supervisor."},
}

MSG_ID = {"Nats-Msg-Id": {"type": "string", "description": (
    "The fact's `id`: JetStream drops a re-publish inside the stream's duplicate window.")}}
FACT_HEADERS = MSG_ID
REQUEST_HEADERS = {
    ENV_HEADER: {
        "type": "string", "contentMediaType": "application/json",
        "contentSchema": {"$ref": "#/components/schemas/RequestEnvelope"},
        "description": "The RequestEnvelope as JSON: request id, reply subject, dialect, "
                       "identity, pass-through headers, deadline.",
    },
    "Nats-Msg-Id": {"type": "string", "description": (
        "The request id: JetStream drops a re-publish inside the stream's duplicate window.")},
}
BY_REQUEST = "$message.payload#/request_id"
EVENTS = names.EVENTS_STREAM
FACTS = (f"A fact on the event log (JetStream `{EVENTS}`, file storage), published through "
         "the part's write-ahead `FactPublisher` (`runtime/facts.py`) with `Nats-Msg-Id` = "
         "the event id.")
LEDGER_READS = (f"The ledger's durable pull consumer `{names.LEDGER_DURABLE}` reads all of "
                f"`{EVENTS}` and folds it into DuckDB (docs/ledger.md).")
ALERTS_READS = (f"The alerts worker's durable pull consumer `{names.ALERTS_EVAL_DURABLE}` "
                "feeds the rule windows (docs/alerts.md).")
NOTIFY_READS = (f"The alerts worker's durable pull consumer `{names.ALERTS_NOTIFY_DURABLE}` "
                "sends it to the rule's webhooks (an outbox: redelivered until delivered).")
TAIL_READS = "`codeswitch tail` prints each one (a core NATS subscription)."
QUOTA_READS = (f"The quota worker's durable pull consumer `{names.QUOTA_DURABLE}` (no acks, "
               "positioned from its state file) folds it into the spend per user and key "
               f"(KV `{names.QUOTA_BUCKET}`, workers/quota).")

_request = f"{s.REQUEST_PREFIX}.{{dialect}}"
_reply = f"{s.REPLY_PREFIX}.{{edge}}.{{request_id}}"
_ack = f"{ACK_PREFIX}.{{router}}.{{request_id}}"
_cancel = f"{s.CANCEL_PREFIX}.{{request_id}}"
_alive = f"{s.ROUTER_ALIVE_PREFIX}.{{router}}"
_edge_ping = f"{s.REPLY_PREFIX}.{{edge}}.ping"
_breaker = f"{s.BREAKER_FAIL_PREFIX}.{{key}}"
_ledger = f"{s.LEDGER_QUERY_PREFIX}.{{query}}"
_attempt = f"{s.ATTEMPT_PREFIX}.{{dialect}}.{{provider}}"
_response = f"{s.RESPONSE_PREFIX}.{{dialect}}.{{provider}}"
_circuit = "provider.circuit.{provider}.{state}"
_quota = "user.{user}.quota"
_part = "gateway.part.{part}.{state}"
_admin = f"{s.ADMIN_PREFIX}.{{thing}}.{{verb}}"
_ADMIN_PARAMS = {
    "thing": {"description": "What changed: user, key, limit, provider, active, unified, "
              "routing, settings, rule, mcp, skill, skill_repo, body_log."},
    "verb": {"description": "created, updated, removed, enabled, disabled, promoted, demoted, "
             "revoked, changed, added, installed, on, off, ..."}}

ENDPOINTS: tuple[Endpoint, ...] = (
    # -- the request and its answer ----------------------------------------------------------
    Endpoint(
        "llm.request", _request, "edge", "send", CLIENT_BODY,
        "One command per client request, the one JetStream write on the request path "
        f"(`js.publish` to the work queue `{names.REQUESTS_STREAM}`: memory storage, max age "
        "120 s). The body is the client's, unchanged; the envelope rides in the `Cs-Env` "
        "header. With no router taking it within `pickup_timeout` the edge deletes it by its "
        "stream sequence (503 if it was still there).",
        stream=names.REQUESTS_STREAM, headers=REQUEST_HEADERS,
        correlation="$message.header#/Nats-Msg-Id"),
    Endpoint(
        "llm.request", _request, "router", "receive", CLIENT_BODY,
        f"Every router shares the durable push consumer `{names.ROUTER_DURABLE}` on "
        f"`{names.REQUESTS_STREAM}` (deliver subject `{names.ROUTER_DELIVER}`, deliver group "
        f"`{names.ROUTER_DURABLE}`), so each request goes to one router. Acked on pickup: a "
        "request runs at most once (a lost router is reported to the client as 424, never "
        "re-run); one past its deadline is dropped.",
        queue=names.ROUTER_DURABLE, stream=names.REQUESTS_STREAM, headers=REQUEST_HEADERS,
        correlation="$message.header#/Nats-Msg-Id"),
    Endpoint(
        "reply", _reply, "router", "send", REPLY_FRAME,
        "The answer to one request, as core NATS frames to the subject named in the "
        "envelope's `reply`. `A` only when the answer has not started after 0.2 s, then every "
        "5 s; `E` and `F` are published with the reply subject "
        f"`{ACK_PREFIX}.<router>.<request id>`, where the edge says whether it delivered them."),
    Endpoint(
        "reply", _reply, "edge", "receive", REPLY_FRAME,
        f"Each edge subscribes to `{s.REPLY_PREFIX}.<edge>.*` and relays the frames to the "
        "HTTP client: `S` starts the response, `D` are body chunks, `E` ends it, `F` is a "
        "whole non-streaming answer. A gap in the sequence numbers (a NATS restart) ends the "
        "stream with an error; no frame for 15 s means the router is lost."),
    Endpoint(
        "delivered", _ack, "edge", "send", DELIVERED,
        "The edge's answer to a final `E`/`F` frame, to that frame's reply subject."),
    Endpoint(
        "delivered", _ack, "router", "receive", DELIVERED,
        f"Each router subscribes to `{ACK_PREFIX}.<router>.*` and waits for the word (5 s at "
        "most, off the client's path) before it writes the request's fact with `delivered`."),
    Endpoint(
        "cancel", _cancel, "edge", "send", EMPTY,
        "The client went away before its answer ended."),
    Endpoint(
        "cancel", _cancel, "router", "receive", EMPTY,
        f"Every router subscribes to `{s.CANCEL_PREFIX}.*` and cancels the request's upstream "
        "call (the upstream sees the connection close within 200 ms); a cancel that overtakes "
        "its request (NATS reconnecting) is remembered and the request dropped when it comes."),
    # -- liveness and discovery -----------------------------------------------------------------
    Endpoint(
        "router.ping", s.ROUTER_PING, "edge", "send", EMPTY,
        "The edge's `/readiness` probe (request/reply, 1 s): any answer means a request sent "
        "now is picked up; `no responders` means no router takes work.", reply=ROUTER_ID),
    Endpoint(
        "router.ping", s.ROUTER_PING, "router", "receive", EMPTY,
        f"Answered by one router of the queue group `{ROUTERS_QUEUE}`. A router subscribes "
        "only after its work-queue subscription is in place, and a stopping router stops "
        "answering.", queue=ROUTERS_QUEUE, reply=ROUTER_ID),
    Endpoint(
        "router.models", s.ROUTER_MODELS, "edge", "send", DIALECT_NAME,
        "`GET /v1/models` (request/reply, 2 s).", reply=MODEL_LIST),
    Endpoint(
        "router.models", s.ROUTER_MODELS, "router", "receive", DIALECT_NAME,
        f"Answered by one router of the queue group `{ROUTERS_QUEUE}`: the configured model "
        "names plus each provider's own model list (cached 5 min).",
        queue=ROUTERS_QUEUE, reply=MODEL_LIST),
    Endpoint(
        "router.rollcall", s.ROUTER_ROLLCALL, "cli", "send", EMPTY,
        "`codeswitch status` and every config write that waits until it is in effect "
        "(`admin.wait_applied`): published with a reply inbox, every answer collected.",
        reply=_struct(RollCallAnswer)),
    Endpoint(
        "router.rollcall", s.ROUTER_ROLLCALL, "router", "receive", EMPTY,
        "Every router taking work answers (no queue group) with its id, its requests in "
        "flight and, per KV bucket, the revision it has applied.",
        reply=_struct(RollCallAnswer)),
    Endpoint(
        "router.alive", _alive, "edge", "send", EMPTY,
        "Every 0.5 s, one request per router holding one of the edge's requests: "
        "`no responders` means that router died, and its requests end at once (424 before "
        "the answer started, the dialect's in-stream error after).", reply=ALIVE),
    Endpoint(
        "router.alive", _alive, "router", "receive", EMPTY,
        "Each router answers on its own subject.", reply=ALIVE),
    Endpoint(
        "edge.ping", _edge_ping, "router", "send", EMPTY,
        "Every 0.5 s, one request per edge with requests in flight at this router: "
        "`no responders` means the edge died with its clients; the router cancels those "
        "upstream calls and records them as `edge_lost`.", reply=ALIVE),
    Endpoint(
        "edge.ping", _edge_ping, "edge", "receive", EMPTY,
        f"The edge's `{s.REPLY_PREFIX}.<edge>.*` subscription answers it.", reply=ALIVE),
    Endpoint(
        "breaker.fail", _breaker, "router", "send", _struct(FailureNote),
        "One failure counted toward a circuit breaker, fire and forget (core NATS): every "
        "router keeps the window in memory; the one that sees the threshold first opens the "
        f"breaker with a compare-and-set in KV `{names.CIRCUITS_BUCKET}`."),
    Endpoint(
        "breaker.fail", _breaker, "router", "receive", _struct(FailureNote),
        f"Every router subscribes to `{s.BREAKER_FAIL_PREFIX}.>` (its own notes are skipped: "
        "counted when they happened)."),
    Endpoint(
        "rate.note", s.RATE_NOTE, "edge", "send", _struct(RateNote),
        "What an edge counted toward users' and keys' rate limits since its last note (the "
        "requests it admitted with their prompt estimates, its requests in flight), fire and "
        "forget (core NATS), as soon as its event loop comes round; its requests in flight "
        "again every second while it holds any."),
    Endpoint(
        "rate.note", s.RATE_NOTE, "edge", "receive", _struct(RateNote),
        "Every edge folds the other edges' notes into its RPM/TPM windows and in-flight "
        "counts at its own clock (its own notes are skipped); an edge silent for 3 s is "
        "forgotten."),
    # -- the ledger's queries -------------------------------------------------------------------
    Endpoint(
        "ledger", _ledger, "cli", "send", LEDGER_QUERY,
        "`codeswitch stats`, `log`, `replay`, `alerts history`, ... ask the ledger "
        "(request/reply).", reply=_struct(LedgerReply)),
    Endpoint(
        "ledger", _ledger, "ledger", "receive", LEDGER_QUERY,
        f"Answered by one ledger of the queue group `{LEDGER_QUEUE}`, from DuckDB.",
        queue=LEDGER_QUEUE, reply=_struct(LedgerReply)),
    # -- facts ----------------------------------------------------------------------------------
    Endpoint(
        "llm.attempt", _attempt, "router", "send", _struct(AttemptFinished),
        f"One per upstream attempt of a request, whatever its outcome. {FACTS}",
        stream=EVENTS, headers=FACT_HEADERS, correlation=BY_REQUEST),
    Endpoint(
        "llm.attempt", _attempt, "ledger", "receive", _struct(AttemptFinished),
        LEDGER_READS, stream=EVENTS, headers=FACT_HEADERS, correlation=BY_REQUEST),
    Endpoint(
        "llm.attempt", _attempt, "cli", "receive", _struct(AttemptFinished),
        TAIL_READS, headers=FACT_HEADERS, correlation=BY_REQUEST),
    Endpoint(
        "llm.response", _response, "router", "send", _struct(RequestCompleted),
        "The final word on a request the router served (provider `-` when none did), and "
        "before each upstream call an intent (`source` `recovered`) published only if the "
        f"router dies first. {FACTS}",
        stream=EVENTS, headers=FACT_HEADERS, correlation=BY_REQUEST),
    Endpoint(
        "llm.response", _response, "edge", "send", _struct(RequestCompleted),
        "The edge's view (`source` `edge`): requests it answered alone (bad input, auth, no "
        f"router) and what the client got when a router was lost. {FACTS}",
        stream=EVENTS, headers=FACT_HEADERS, correlation=BY_REQUEST),
    Endpoint(
        "llm.response", _response, "ledger", "receive", _struct(RequestCompleted),
        f"{LEDGER_READS} Several facts of one request id fold into one row.",
        stream=EVENTS, headers=FACT_HEADERS, correlation=BY_REQUEST),
    Endpoint(
        "llm.response", _response, "alerts", "receive", _struct(RequestCompleted),
        ALERTS_READS, stream=EVENTS, headers=FACT_HEADERS, correlation=BY_REQUEST),
    Endpoint(
        "llm.response", _response, "quota", "receive", _struct(RequestCompleted),
        f"{QUOTA_READS} One count per request id.", stream=EVENTS, headers=FACT_HEADERS,
        correlation=BY_REQUEST),
    Endpoint(
        "llm.response", _response, "cli", "receive", _struct(RequestCompleted),
        TAIL_READS, headers=FACT_HEADERS, correlation=BY_REQUEST),
    Endpoint(
        "llm.response", _response, "edge", "receive", _struct(RequestCompleted),
        "Every edge (a core NATS subscription) settles the request's prompt estimate with "
        "its usage in the windows of users' and keys' tokens-per-minute limits.",
        headers=FACT_HEADERS, correlation=BY_REQUEST),
    Endpoint(
        "provider.circuit", _circuit, "router", "send", _struct(CircuitChanged),
        "A circuit breaker changed state; published only by the router whose KV write won, "
        f"so each transition is on the log once. {FACTS}",
        stream=EVENTS, headers=FACT_HEADERS,
        params={"state": {"description": "The new state.",
                          "enum": ["closed", "open", "half_open"]}}),
    Endpoint(
        "provider.circuit", _circuit, "ledger", "receive", _struct(CircuitChanged),
        LEDGER_READS, stream=EVENTS, headers=FACT_HEADERS,
        params={"state": {"description": "The new state.",
                          "enum": ["closed", "open", "half_open"]}}),
    Endpoint(
        "provider.circuit", _circuit, "alerts", "receive", _struct(CircuitChanged),
        f"{ALERTS_READS} At start the latest transition of each breaker is read back.",
        stream=EVENTS, headers=FACT_HEADERS,
        params={"state": {"description": "The new state.",
                          "enum": ["closed", "open", "half_open"]}}),
    Endpoint(
        "alert.fired", f"{ALERT_PREFIX}.fired.{{rule}}", "alerts", "send", _struct(AlertFired),
        "An alert rule crossed its threshold (or a reminder of one still firing), published "
        "with `js.publish` and a deterministic id, so a replay after a crash is dropped as a "
        "duplicate.", stream=EVENTS, headers=FACT_HEADERS),
    Endpoint(
        "alert.fired", f"{ALERT_PREFIX}.fired.{{rule}}", "alerts-notify", "receive",
        _struct(AlertFired), NOTIFY_READS, stream=EVENTS, headers=FACT_HEADERS),
    Endpoint(
        "alert.fired", f"{ALERT_PREFIX}.fired.{{rule}}", "ledger", "receive",
        _struct(AlertFired), f"{LEDGER_READS} The alert history.", stream=EVENTS,
        headers=FACT_HEADERS),
    Endpoint(
        "alert.resolved", f"{ALERT_PREFIX}.resolved.{{rule}}", "alerts", "send",
        _struct(AlertResolved), "A firing alert cleared.", stream=EVENTS,
        headers=FACT_HEADERS),
    Endpoint(
        "alert.resolved", f"{ALERT_PREFIX}.resolved.{{rule}}", "alerts-notify", "receive",
        _struct(AlertResolved), NOTIFY_READS, stream=EVENTS, headers=FACT_HEADERS),
    Endpoint(
        "alert.resolved", f"{ALERT_PREFIX}.resolved.{{rule}}", "ledger", "receive",
        _struct(AlertResolved), f"{LEDGER_READS} The alert history.", stream=EVENTS,
        headers=FACT_HEADERS),
    Endpoint(
        "alert.delivery_failed", f"{ALERT_PREFIX}.delivery_failed.{{rule}}", "alerts", "send",
        _struct(AlertNotificationFailed),
        "A webhook delivery gave up after its retries.", stream=EVENTS, headers=FACT_HEADERS),
    Endpoint(
        "alert.delivery_failed", f"{ALERT_PREFIX}.delivery_failed.{{rule}}", "ledger",
        "receive", _struct(AlertNotificationFailed), LEDGER_READS, stream=EVENTS,
        headers=FACT_HEADERS),
    Endpoint(
        "user.quota", _quota, "quota", "send", _struct(QuotaUsed),
        "A user's (or, with `key`, one of its keys') spend against its budget in the current "
        "period, on each change (per batch of folded facts); `crossed` marks the change that "
        f"reached the soft threshold or the limit, once per period. {FACTS}", stream=EVENTS,
        headers=FACT_HEADERS),
    Endpoint(
        "user.quota", _quota, "alerts", "receive", _struct(QuotaUsed),
        f"A user's quota level, the latest per user and key. {ALERTS_READS} "
        "At start the latest level of each user is read back.", stream=EVENTS,
        headers=FACT_HEADERS),
    Endpoint(
        "user.quota", _quota, "ledger", "receive", _struct(QuotaUsed),
        LEDGER_READS, stream=EVENTS, headers=FACT_HEADERS),
    Endpoint(
        "gateway.part", _part, "supervisor", "send", _struct(PartChanged),
        "`codeswitch up` started, restarted or saw a part exit or crash-loop (5 restarts in "
        f"60 s). {FACTS}", stream=EVENTS, headers=FACT_HEADERS,
        params={"state": {"description": "What happened to the part.", "enum": [
            "started", "exited", "restarted", "crash_loop", "recovered"]}}),
    Endpoint(
        "gateway.part", _part, "ledger", "receive", _struct(PartChanged),
        LEDGER_READS, stream=EVENTS, headers=FACT_HEADERS,
        params={"state": {"description": "What happened to the part.", "enum": [
            "started", "exited", "restarted", "crash_loop", "recovered"]}}),
    Endpoint(
        "admin", _admin, "cli", "send", _struct(AdminAction),
        "An administrator changed the gateway (users, keys, limits, providers, settings, alert "
        "rules, MCP servers, skills, the body log): published by the command right after its "
        "write, the JetStream ack awaited (`codeswitch/audit.py`); one that cannot be "
        "published waits in `<home>/outbox` for the next part to start.", stream=EVENTS,
        headers=FACT_HEADERS, params=_ADMIN_PARAMS),
    Endpoint(
        "admin", _admin, "supervisor", "send", _struct(AdminAction),
        "`codeswitch up` applied the config file (providers, settings, `[[users]]`, "
        "`[[keys]]`): one fact per change, `details.via` says so.", stream=EVENTS,
        headers=FACT_HEADERS, params=_ADMIN_PARAMS),
    Endpoint(
        "admin", _admin, "ledger", "receive", _struct(AdminAction),
        f"{LEDGER_READS} Kept in its audit table (`codeswitch audit`).", stream=EVENTS,
        headers=FACT_HEADERS, params=_ADMIN_PARAMS),
    Endpoint(
        "session.deleted", s.SESSION_DELETED, "ledger", "send", _struct(SessionDeleted),
        "A session was deleted for real (`cs.ledger.session_delete`): its facts were erased "
        "from the event log by sequence and its bodies from the body log first; this "
        "tombstone keeps its bill (no ids, no text), one per 500 requests. Published with "
        "the JetStream ack awaited.", stream=EVENTS, headers=FACT_HEADERS),
    Endpoint(
        "session.deleted", s.SESSION_DELETED, "ledger", "receive", _struct(SessionDeleted),
        f"{LEDGER_READS} Drops what is left of the session (rows before the tombstone, by "
        "`sha256(session)`) and adds its bill's rows, live and in a replay alike.",
        stream=EVENTS, headers=FACT_HEADERS),
    Endpoint(
        "session.deleted", s.SESSION_DELETED, "quota", "receive", _struct(SessionDeleted),
        f"{QUOTA_READS} Takes back what the session's requests counted and counts its bill.",
        stream=EVENTS, headers=FACT_HEADERS),
)

# Structs carried inside a header or a framed reply, not as a whole payload.
EMBEDDED: tuple[type[msgspec.Struct], ...] = (RequestEnvelope, ReplyStart)

DESCRIPTION = """\
Every NATS subject of the codeswitch gateway: who sends, who receives, and the payload.
Generated from `schemas/` by `python -m codeswitch.asyncapi` (docs/asyncapi.md); the prose
behind it is docs/architecture.md, "Subjects and streams".

Commands and facts never share a subject tree. **Commands** (the request, its answer,
cancellation, liveness, queries) are core NATS except the request itself. **Facts** are JSON
events on the event log, each with a unique `id` (also its `Nats-Msg-Id`).

Channel and operation ids are `<subject name>:<part>:<send|receive>`; the parts: edge,
router, ledger, alerts (`alerts-notify` is its webhook consumer), supervisor (`codeswitch up`),
cli. A request/reply operation links its answer (`reply`, to the requester's inbox).

JetStream (declared once in `runtime/names.py`, created by `runtime/bus.py`):

| name | what |
|---|---|
"""
_STORES: tuple[tuple[str, str], ...] = (
    (f"stream `{names.REQUESTS_STREAM}`",
     f"`{s.REQUEST_PREFIX}.>`: the work queue of requests (memory storage, max age 120 s)"),
    (f"stream `{names.EVENTS_STREAM}`",
     ", ".join(f"`{x}`" for x in s.FACT_SUBJECTS) + ": the event log (file storage)"),
    (f"consumer `{names.ROUTER_DURABLE}`",
     f"on `{names.REQUESTS_STREAM}`: push, deliver subject `{names.ROUTER_DELIVER}`, "
     f"deliver group `{names.ROUTER_DURABLE}`"),
    (f"consumer `{names.LEDGER_DURABLE}`", f"on `{names.EVENTS_STREAM}`: pull, every fact"),
    (f"consumer `{names.ALERTS_EVAL_DURABLE}`",
     f"on `{names.EVENTS_STREAM}`: pull, responses, circuits, quotas"),
    (f"consumer `{names.ALERTS_NOTIFY_DURABLE}`",
     f"on `{names.EVENTS_STREAM}`: pull, fired and resolved alerts"),
    (f"consumer `{names.QUOTA_DURABLE}`",
     f"(`{names.QUOTA_DURABLE}-<hash of host and data directory>`, one per quota worker) on "
     f"`{names.EVENTS_STREAM}`: pull, no acks, responses and session tombstones"),
    *((f"KV `{bucket}`", str(spec["description"])) for bucket, spec in names.KV_BUCKETS.items()),
    (f"object store `{names.BODIES_BUCKET}`",
     "request bodies too large for one message (TTL 10 min)"),
    (f"object store `{names.BODY_LOG_BUCKET}`", "the body log, when it is on (TTL 7 days, 1 GiB)"),
    (f"object store `{names.PEER_BODIES_BUCKET}`",
     "joined to a hub: the other devices' body logs, sourced from the hub (TTL 7 days, 1 GiB; "
     "docs/architecture.md, 'Several devices')"),
)
DESCRIPTION += "".join(f"| {name} | {what} |\n" for name, what in _STORES)


# -- the broker and the document --------------------------------------------------------------


def _handler(body: Body) -> Callable[[Any], Coroutine[Any, Any, None]]:
    """A subscriber's handler, for its signature only: faststream reads the payload type from
    the handler's parameter. Never called."""

    async def handler(message: Any) -> None:  # pragma: no cover - never called
        raise NotImplementedError("documentation only")

    parameter = inspect.Parameter("message", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                  annotation=body.type)
    setattr(handler, "__signature__", inspect.Signature([parameter]))  # noqa: B010
    return handler


def build_broker() -> NatsBroker:
    """A faststream broker declaring every endpoint. It never connects."""
    broker = NatsBroker(
        DEFAULT_NATS_URL,
        security=NatsUserPassword("codeswitch", "generated"),
        description="The embedded nats-server that `codeswitch up` starts (port 18122 or a "
                    "free one; a generated user and password), or an operator's NATS with "
                    "JetStream.",
        protocol_version=None,
    )
    for ep in ENDPOINTS:
        if ep.action == "send":
            broker.publisher(ep.address, title=ep.id, description=ep.description,
                             schema=ep.body.type)
        else:
            broker.subscriber(ep.address, queue=ep.queue, stream=ep.stream, title=ep.id,
                              description=ep.description)(_handler(ep.body))
        if ep.reply is not None:
            broker.publisher("", title=f"{ep.id}:reply", schema=ep.reply.type,
                             description="The requester's reply inbox.")
    return broker


def _versions() -> str:
    return ", ".join(f"{p} {version(p)}" for p in ("faststream", "pydantic", "msgspec"))


def build_document() -> dict[str, Any]:
    """The AsyncAPI document as a JSON-ready dict."""
    spec = AsyncAPI(
        build_broker(),
        title="codeswitch NATS subjects",
        version=version("codeswitch"),
        description=DESCRIPTION,
        schema_version=SCHEMA_VERSION,
    ).to_specification()
    doc: dict[str, Any] = spec.to_jsonable()
    _complete(doc)
    return doc


_PARAM = re.compile(r"\{(\w+)\}")


def _message(doc: dict[str, Any], channel_id: str) -> dict[str, Any]:
    (ref,) = doc["channels"][channel_id]["messages"].values()
    message: dict[str, Any] = doc["components"]["messages"][ref["$ref"].rsplit("/", 1)[-1]]
    return message


def _complete(doc: dict[str, Any]) -> None:
    """Add what faststream does not emit (see the module's docstring)."""
    doc["info"]["x-generator"] = _versions()
    channels, operations = doc["channels"], doc["operations"]
    for ep in ENDPOINTS:
        channel, operation = channels[ep.id], operations[ep.id]
        names_ = _PARAM.findall(ep.address)
        if names_:
            channel["parameters"] = {n: {**PARAMETERS.get(n, {}), **ep.params.get(n, {})}
                                     for n in names_}
        operation["summary"] = f"{ep.part} {ep.action}s"
        message = _message(doc, ep.id)
        message.pop("correlationId", None)  # faststream's own header; codeswitch sends none
        if ep.correlation:
            message["correlationId"] = {"location": ep.correlation}
        message["contentType"] = ep.body.content_type
        if ep.headers:
            message["headers"] = {"type": "object", "properties": ep.headers}
        if ep.reply is not None:
            reply_id = f"{ep.id}:reply"
            del operations[reply_id]  # faststream's "send" of the reply: the link below says it
            reply_channel = channels[reply_id]
            reply_channel["address"] = None  # a reply inbox: dynamic (AsyncAPI 3.0 "null")
            reply_channel.pop("bindings", None)
            _message(doc, reply_id)["contentType"] = ep.reply.content_type
            _message(doc, reply_id).pop("correlationId", None)
            operation["reply"] = {
                "channel": {"$ref": f"#/channels/{reply_id}"},
                "messages": [{"$ref": f"#/channels/{reply_id}/messages/{key}"}
                             for key in reply_channel["messages"]],
            }
    schemas = doc["components"]["schemas"]
    for struct in EMBEDDED:
        schemas[struct.__name__] = struct_schema(struct)
    # in the order of ENDPOINTS (faststream lists subscribers first, then publishers)
    order = [i for ep in ENDPOINTS for i in (ep.id, f"{ep.id}:reply") if i in channels]
    messages = doc["components"]["messages"]
    doc["channels"] = {i: channels[i] for i in order}
    doc["operations"] = {i: operations[i] for i in order if i in operations}
    doc["components"]["messages"] = {
        key: messages[key] for i in order
        for key in (ref["$ref"].rsplit("/", 1)[-1] for ref in channels[i]["messages"].values())}
    doc["components"]["schemas"] = dict(sorted(schemas.items()))


def document_json(doc: dict[str, Any] | None = None) -> str:
    """The document as committed in docs/asyncapi.json."""
    return json.dumps(build_document() if doc is None else doc, indent=2,
                      ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codeswitch.asyncapi", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="fmt", action="store_const", const="json", default="json",
                     help="JSON (the default)")
    fmt.add_argument("--yaml", dest="fmt", action="store_const", const="yaml",
                     help="YAML (needs pyyaml, which codeswitch does not depend on)")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    doc = build_document()
    if args.fmt == "yaml":
        try:
            import yaml
        except ImportError:
            print("--yaml needs pyyaml (pip install pyyaml); JSON needs nothing",
                  file=sys.stderr)
            return 2
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    else:
        text = document_json(doc)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
