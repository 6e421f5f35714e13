"""Every failure a client can see, and the one place that renders it in each dialect.

The tree: :class:`GatewayError` is the base of every failure the gateway raises on purpose —
``edge.errors.EdgeError`` (the edge answers alone: bad input, too large, no router, a router
lost), ``edge.auth.AuthError`` (401), ``workers.router.plan.NoProviderError`` (404/503),
``workers.router.upstream.UpstreamFailure`` (an attempt that failed talking to a provider) and
``workers.translator.common.TranslationError`` (400 for a request a dialect cannot express,
502 for an answer that cannot be). Each carries what a client needs: ``status`` (the HTTP
status the client gets), ``code`` (a stable machine code; the edge records it as the fact's
``error_class``), ``message``, ``retryable`` (``x-should-retry``), ``retry_after``, and where
known ``provider`` and ``upstream_status``.

The envelopes, as bytes (``error_body`` / ``stream_error``; ``GatewayError.render`` and
``GatewayError.render_stream`` render an exception through them)::

    anthropic         {"type":"error","error":{"type":...,"message":...},"request_id":...}
    openai-*          {"error":{"message":...,"type":...,"param":null,"code":...}}
    gemini            {"error":{"code":<int>,"message":...,"status":"INVALID_ARGUMENT"}}

In-stream errors (after HTTP 200 was sent): Anthropic ``event: error``; Responses ``error``
then ``response.failed``; Chat and Gemini have no defined in-stream error, so a
``data: {"error": {...}}`` event in the dialect's own error shape is sent (what OpenAI and
Google send themselves, and what their SDKs raise on).

Pure: no I/O (the shared contract package).
"""

from __future__ import annotations

import time
from typing import ClassVar

import msgspec

__all__ = [
    "GatewayError",
    "anthropic_type",
    "error_body",
    "final_error",
    "final_status",
    "gemini_status",
    "openai_type",
    "stream_error",
]

_json = msgspec.json.Encoder()


class GatewayError(Exception):
    """The base of every failure a client can see.

    ``status`` is the HTTP status the client gets; ``code`` a stable machine code (e.g.
    ``invalid_request``, ``authentication``, ``no_provider``, ``timeout``, ``router_lost``);
    ``retryable`` becomes ``x-should-retry`` when set (``False`` for an answer that may have
    run upstream); ``retry_after`` becomes ``retry-after``."""

    status: int = 500
    code: str = "internal"
    #: whether OpenAI's ``code`` field carries ``code`` (a kind whose clients always saw
    #: ``null`` there keeps it so: the bytes a client receives do not change)
    code_on_wire: ClassVar[bool] = True

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retryable: bool | None = None, retry_after: str | None = None,
                 provider: str | None = None, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.retryable = retryable
        self.retry_after = retry_after
        self.provider = provider
        self.upstream_status = upstream_status

    @property
    def client_message(self) -> str:
        """The message as the client reads it."""
        return self.message

    @property
    def client_code(self) -> str | None:
        """What OpenAI's ``code`` field carries."""
        return self.code if self.code_on_wire else None

    def render(self, dialect: str, *, request_id: str | None = None) -> bytes:
        """The non-streaming error body in ``dialect``'s shape."""
        return error_body(dialect, self.status, self.client_message, code=self.client_code,
                          request_id=request_id)

    def render_stream(self, dialect: str, *, response_id: str | None = None,
                     sequence_number: int = 0) -> bytes:
        """The in-stream error event in ``dialect``'s shape (the stream already started)."""
        return stream_error(dialect, self.status, self.client_message, code=self.client_code,
                            response_id=response_id, sequence_number=sequence_number)

    def http_headers(self) -> list[tuple[bytes, bytes]]:
        """``x-should-retry`` and ``retry-after``, when the error says so."""
        out: list[tuple[bytes, bytes]] = []
        if self.retryable is not None:
            out.append((b"x-should-retry", b"true" if self.retryable else b"false"))
        if self.retry_after is not None:
            out.append((b"retry-after", self.retry_after.encode("latin-1", "replace")))
        return out


# -- status -> each dialect's error type ------------------------------------------------------

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "invalid_request_error",
    408: "timeout",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "timeout",
    529: "service_unavailable",
}

_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
    529: "UNAVAILABLE",
}


def anthropic_type(status: int) -> str:
    if status in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def openai_type(status: int) -> str:
    if status in _OPENAI_TYPES:
        return _OPENAI_TYPES[status]
    return "invalid_request_error" if status < 500 else "server_error"


def gemini_status(status: int) -> str:
    if status in _GEMINI_STATUS:
        return _GEMINI_STATUS[status]
    return "FAILED_PRECONDITION" if status < 500 else "INTERNAL"


# -- the envelopes ------------------------------------------------------------------------------

def error_body(dialect: str, status: int, message: str, *, code: str | None = None,
               request_id: str | None = None, final: bool = False) -> bytes:
    """The non-streaming error body a client of ``dialect`` expects for ``status``.
    ``final``: an error the client must not retry (``final_error``): never Anthropic's
    ``overloaded_error``, which Claude Code retries whatever ``x-should-retry`` says."""
    if dialect == "anthropic":
        kind = anthropic_type(status)
        if final and kind == "overloaded_error":
            kind = "api_error"
        doc: dict[str, object] = {
            "type": "error",
            "error": {"type": kind, "message": message},
        }
        if request_id:
            doc["request_id"] = request_id
        return _json.encode(doc)
    if dialect == "gemini":
        return _json.encode(
            {"error": {"code": status, "message": message, "status": gemini_status(status)}}
        )
    return _json.encode(
        {"error": {"message": message, "type": openai_type(status), "param": None,
                   "code": code}}
    )


def stream_error(dialect: str, status: int, message: str, *, code: str | None = None,
                 response_id: str | None = None, sequence_number: int = 0) -> bytes:
    """An SSE error event for a stream that already started (HTTP 200 sent)."""
    if dialect == "anthropic":
        doc = {"type": "error", "error": {"type": anthropic_type(status), "message": message}}
        return b"event: error\ndata: " + _json.encode(doc) + b"\n\n"
    if dialect == "openai-responses":
        err = {"type": "error", "sequence_number": sequence_number,
               "error": {"type": openai_type(status), "code": code or openai_type(status),
                         "message": message, "param": None}}
        failed = {
            "type": "response.failed",
            "sequence_number": sequence_number + 1,
            "response": {
                "id": response_id or "resp_error",
                "object": "response",
                "created_at": int(time.time()),
                "status": "failed",
                "error": {"code": code or "server_error", "message": message},
                "output": [],
                "usage": None,
            },
        }
        return (b"event: error\ndata: " + _json.encode(err) + b"\n\n"
                + b"event: response.failed\ndata: " + _json.encode(failed) + b"\n\n")
    return b"data: " + error_body(dialect, status, message, code=code) + b"\n\n"


# -- final errors: the ones no client should retry ----------------------------------------------

# The status a client family gets for a final error (no provider for the request, every
# provider failed, a refusal) when the honest one would be retried or misread. Checked in each
# CLI's bundled source and with bench/real_clients/ (docs/clients.md):
# - the Anthropic and OpenAI SDKs stop at ``x-should-retry: false`` for any status: they keep
#   the honest status;
# - Claude Code reads the header too, but retries a body of type ``overloaded_error`` (and,
#   with its retry watchdog, a 529) before it reads it, and prints "This is a server-side
#   issue, usually temporary — try again" after a 5xx: a 429 or 5xx becomes 424, which it
#   shows as it is (as the gateway's "maybe executed" 424);
# - Codex CLI retries every status but 400, 401 and 429 and does not read the header; 400 is
#   the one it neither retries nor hides the body of (edge/auth.py, edge/app.py do the same);
# - Gemini CLI retries 429, 499 and every 5xx (``isRetryableError``) and does not read the
#   header: 424 too.
_FINAL_STATUS = {"codex": 400}
_FINAL_4XX = frozenset({"claude-code", "gemini-cli"})


def final_status(status: int, client: str | None) -> int:
    """The status ``client`` (a family, ``edge.identity.client_family``) stops at for a final
    error whose honest status is ``status``."""
    fixed = _FINAL_STATUS.get(client or "")
    if fixed is not None:
        return fixed
    if client in _FINAL_4XX and (status in (429, 499) or status >= 500):
        return 424
    if status == 529:
        return 503
    return status


def final_error(dialect: str, status: int, message: str, *, client: str | None,
                code: str | None = None, request_id: str | None = None
                ) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) of an error the client must not retry: its dialect's shape,
    the status that client stops at, ``x-should-retry: false`` for those that read it."""
    status = final_status(status, client)
    body = error_body(dialect, status, message, code=code, request_id=request_id, final=True)
    return status, body, {"x-should-retry": "false"}
