"""Error envelopes of the four dialects, as bytes: one place that knows each shape.

    anthropic         {"type":"error","error":{"type":...,"message":...},"request_id":...}
    openai-*          {"error":{"message":...,"type":...,"param":null,"code":...}}
    gemini            {"error":{"code":<int>,"message":...,"status":"INVALID_ARGUMENT"}}

In-stream errors (after HTTP 200 was sent): Anthropic ``event: error``; Responses ``error``
then ``response.failed``; Chat and Gemini have no defined in-stream error, so a
``data: {"error": {...}}`` event in the dialect's own error shape is sent (what OpenAI and
Google send themselves, and what their SDKs raise on).
"""

from __future__ import annotations

import time

import msgspec

__all__ = ["anthropic_type", "error_body", "gemini_status", "openai_type", "stream_error"]

_json = msgspec.json.Encoder()

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


def error_body(dialect: str, status: int, message: str, *, code: str | None = None,
               request_id: str | None = None) -> bytes:
    """The non-streaming error body a client of ``dialect`` expects for ``status``."""
    if dialect == "anthropic":
        doc: dict[str, object] = {
            "type": "error",
            "error": {"type": anthropic_type(status), "message": message},
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
