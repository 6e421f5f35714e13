"""The request command (edge -> router) and the reply stream (router -> edge).

A request is one JetStream message on ``llm.request.<dialect>``: the client's body bytes
unchanged as the payload (or empty with ``body_ref`` when it was too large for one message),
and this envelope as JSON in the ``Cs-Env`` header.

Replies are core NATS messages on ``reply``; the first payload byte says what they are:
    b"A"  accepted/heartbeat: a router is working on it (sent when the answer takes >0.2 s
          to start, then every 5 s; any reply stops the edge's no-router timer); the rest of
          the payload is the router's id (the edge asks ``cs.router.alive.<id>`` whether it
          still lives)
    b"S"  start: ReplyStart JSON, a newline, then the first body bytes (may be none)
    b"D"  data: a 4-byte big-endian sequence number (1, 2, ... after the start), then body
          bytes, relayed to the client as they are; a gap means a message was lost (a NATS
          restart): the edge ends the stream with an error instead of a silently broken answer
    b"E"  end: the sequence number; the response is complete
    b"F"  full: ReplyStart JSON, a newline, then the whole body (non-streaming answers)

``E`` and ``F`` are published with a NATS reply subject: the edge answers b"1" when the request
is still its own (the answer is delivered) and b"0" when it no longer is (the client went
away); a dead edge makes the server answer "no responders". The router records the outcome as
``delivered`` on the request's fact.
"""

from __future__ import annotations

import msgspec

__all__ = ["ENV_HEADER", "KIND_ACCEPTED", "KIND_DATA", "KIND_END", "KIND_FULL", "KIND_START",
           "SEQ_BYTES", "ReplyStart", "RequestEnvelope"]

ENV_HEADER = "Cs-Env"

KIND_ACCEPTED = 0x41  # "A"
KIND_START = 0x53  # "S"
KIND_DATA = 0x44  # "D"
KIND_END = 0x45  # "E"
KIND_FULL = 0x46  # "F"
SEQ_BYTES = 4


class RequestEnvelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    request_id: str
    reply: str  # subject the router streams the answer to
    dialect: str
    operation: str = "generate"  # generate | count_tokens
    model: str = ""
    stream: bool = False
    deadline: float = 0.0  # unix time after which the edge no longer waits for pickup
    received_at: float = 0.0
    headers: dict[str, str] = {}  # allow-listed client headers passed upstream
    query: str = ""  # client query string minus auth parameters
    api_version: str = ""  # gemini: "v1" or "v1beta" as the client called it
    body_ref: str | None = None  # object-store name when the body did not fit a message
    body_size: int = 0
    user: str | None = None
    session: str | None = None
    client: str | None = None
    pin_provider: str | None = None  # x-codeswitch-provider
    edge: str | None = None
    key_hash: str | None = None  # sha256 of the client's key (never the key itself)
    client_request_id: str | None = None  # the client's own id (x-client-request-id), if sent
    # the gateway user and key the edge authenticated (ids; None when there are no users)
    user_id: str | None = None
    key_id: str | None = None
    # for route rules (schemas/routes.py): the gateway user's name and the key as USER/NAME,
    # and the client headers the rules name (never a secret one)
    user_name: str | None = None
    key_name: str | None = None
    match_headers: dict[str, str] = {}


class ReplyStart(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    status: int
    content_type: str = "application/json"
    provider: str | None = None
    upstream_model: str | None = None
    headers: dict[str, str] = {}
    router: str | None = None  # the router answering (the edge watches that it stays alive)
    route: str | None = None  # the route rule that chose the providers (x-codeswitch-route)
