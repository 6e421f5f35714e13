"""Who is calling: the client program, the user and the session, from what clients send.

Claude Code: ``metadata.user_id`` is a JSON string {device_id, account_uuid, session_id};
header ``x-claude-code-session-id``. Codex: headers ``session-id``/``session_id`` and
``originator``. OpenAI SDK users may send ``user``/``safety_identifier`` in the body.

``peek_body`` is the edge's one read of a body: it raises ``EdgeError`` 400 for an empty body,
invalid JSON, wrong field types and JSON nested deeper than msgspec's recursion budget (about
980 levels on CPython 3.11): msgspec raises ``RecursionError`` there, which used to escape as
a 500 with a traceback per request.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from edge.errors import EdgeError

__all__ = ["Identity", "Peek", "identify", "peek_body", "peek_decoder"]


class _Metadata(msgspec.Struct):
    user_id: str | None = None


class Peek(msgspec.Struct):
    """The only fields the edge reads from a body; msgspec skips the rest without building it."""

    model: str | None = None
    stream: bool | None = None
    metadata: _Metadata | None = None
    user: str | None = None
    safety_identifier: str | None = None
    previous_response_id: str | None = None


peek_decoder = msgspec.json.Decoder(Peek)


def peek_body(body: bytes) -> Peek:
    """The fields the edge reads, or ``EdgeError`` 400 (never another exception)."""
    if not body:
        raise EdgeError(400, "request body is empty; expected a JSON object", "invalid_json")
    try:
        return peek_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise EdgeError(400, f"invalid request: {exc}", "invalid_request") from None
    except msgspec.DecodeError as exc:
        raise EdgeError(400, f"request body is not valid JSON: {exc}", "invalid_json") from None
    except RecursionError:
        raise EdgeError(400, "request body is JSON nested too deeply", "invalid_request") \
            from None


class _ClaudeUser(msgspec.Struct):
    device_id: str | None = None
    account_uuid: str | None = None
    session_id: str | None = None


_claude_user = msgspec.json.Decoder(_ClaudeUser)


class Identity(NamedTuple):
    client: str | None
    user: str | None
    session: str | None


def _client_family(headers: dict[str, str]) -> str | None:
    ua = headers.get("user-agent", "")
    if ua.startswith("claude-cli") or headers.get("x-app") == "cli":
        return "claude-code"
    if "codex" in headers.get("originator", "") or ua.lower().startswith("codex"):
        return "codex"
    if ua.startswith("GeminiCLI"):
        return "gemini-cli"
    goog = headers.get("x-goog-api-client", "")
    if "genai-py" in goog or "google-genai" in goog:
        return "google-genai"
    if ua.startswith("Anthropic/"):
        return "anthropic-sdk"
    if ua.startswith(("OpenAI/", "AsyncOpenAI/")):
        return "openai-sdk"
    return ua.split("/", 1)[0][:40] or None


def identify(headers: dict[str, str], peek: Peek | None) -> Identity:
    user = session = None
    if peek is not None:
        if peek.metadata is not None and peek.metadata.user_id:
            raw = peek.metadata.user_id
            try:
                parsed = _claude_user.decode(raw)
                user = parsed.account_uuid or parsed.device_id
                session = parsed.session_id
            except (msgspec.DecodeError, TypeError, RecursionError):
                user = raw
        user = user or peek.user or peek.safety_identifier
    session = (
        session
        or headers.get("x-claude-code-session-id")
        or headers.get("session-id")
        or headers.get("session_id")
    )
    return Identity(_client_family(headers), user and user[:128], session and session[:128])
