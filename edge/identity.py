"""Who is calling: the client program, the user and the session, from what clients send.

Claude Code: ``metadata.user_id`` is a JSON string {device_id, account_uuid, session_id};
header ``x-claude-code-session-id``. Codex: headers ``session-id``/``session_id`` and
``originator``. OpenAI SDK users may send ``user``/``safety_identifier`` in the body.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

__all__ = ["Identity", "Peek", "identify", "peek_decoder"]


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
            except (msgspec.DecodeError, TypeError):
                user = raw
        user = user or peek.user or peek.safety_identifier
    session = (
        session
        or headers.get("x-claude-code-session-id")
        or headers.get("session-id")
        or headers.get("session_id")
    )
    return Identity(_client_family(headers), user and user[:128], session and session[:128])
