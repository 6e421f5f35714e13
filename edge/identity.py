"""Who is calling: the client program, the user and the session, from what clients send.

Sessions, first found wins (``session_of``, pure; checked against the recorded requests in
``tests/fixtures/clients``):

- ``x-codeswitch-session``: any client or SDK that wants its requests grouped says so;
- Claude Code: ``metadata.user_id``, a JSON string {device_id, account_uuid, session_id} (1.x:
  ``user_<hash>_account_<uuid>_session_<uuid>``), and the header ``x-claude-code-session-id``
  (the same id);
- Codex: the header ``session-id`` (or ``session_id``) and ``prompt_cache_key`` in the
  body (the same id; any OpenAI client that sets ``prompt_cache_key`` is grouped by it);
- Gemini CLI sends no session id with an API key (its ``sessionId`` only goes to Code Assist;
  the bundled 0.61 source): its session is derived from the conversation's opening, the
  ``<session_context>`` text (date, directories) and the first prompt, which every request of
  the session repeats (``gemini-cli-<16 hex>``; a compressed history starts a new one). Set
  ``GEMINI_CLI_CUSTOM_HEADERS="x-codeswitch-session: <id>"`` for an id of your own.

Users: Claude Code's ``account_uuid`` (else its ``device_id``); OpenAI SDK users may send
``user``/``safety_identifier`` in the body.

``peek_body`` is the edge's one read of a body: it raises ``EdgeError`` 400 for an empty body,
invalid JSON, wrong field types and JSON nested deeper than msgspec's recursion budget (about
980 levels on CPython 3.11): msgspec raises ``RecursionError`` there, which used to escape as
a 500 with a traceback per request.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

import msgspec

from edge.errors import EdgeError

__all__ = ["Identity", "Peek", "client_family", "gemini_session", "identify", "peek_body",
           "peek_decoder", "session_of"]


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
    prompt_cache_key: str | None = None  # Codex: its session id
    # Gemini: kept undecoded (a slice of the body) unless a session is derived from it
    contents: msgspec.Raw = msgspec.Raw()


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
# Claude Code 1.x: user_<sha256>_account_<uuid or empty>_session_<uuid>
_CLAUDE_V1 = re.compile(r"user_([0-9a-f]+)_account_([0-9a-f-]*)_session_([0-9a-f-]+)")


class _GeminiPart(msgspec.Struct):
    text: str | None = None


class _GeminiContent(msgspec.Struct):
    role: str | None = None
    parts: list[_GeminiPart] = []


_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_gemini_content = msgspec.json.Decoder(_GeminiContent)


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


# the client family from the headers alone (before the body is read): "codex", ...
client_family = _client_family


def _claude_metadata(raw: str) -> tuple[str | None, str | None]:
    """(user, session) from Claude Code's ``metadata.user_id``; any other string is the
    user."""
    if raw.startswith("{"):
        try:
            parsed = _claude_user.decode(raw)
            return parsed.account_uuid or parsed.device_id, parsed.session_id
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError, RecursionError):
            return raw, None
    m = _CLAUDE_V1.fullmatch(raw)
    if m:
        return m.group(2) or m.group(1), m.group(3)
    return raw, None


def gemini_session(contents: bytes) -> str | None:
    """Gemini CLI's session, derived from the opening of its conversation: the first two
    texts of the leading user turns (the ``<session_context>`` block and the first prompt;
    the routing classifier sends them as two turns, the chat as one). Every request of the
    session starts with them; none carries an id of its own."""
    try:
        items = _raw_list.decode(contents)
        texts: list[str] = []
        for item in items[:2]:
            turn = _gemini_content.decode(item)
            if turn.role not in (None, "user"):
                break
            texts += [p.text for p in turn.parts if p.text]
            if len(texts) >= 2:
                break
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    if not texts:
        return None
    digest = hashlib.blake2b("\x00".join(texts[:2]).encode("utf-8", "replace"),
                             digest_size=8).hexdigest()
    return f"gemini-cli-{digest}"


def session_of(headers: dict[str, str], peek: Peek | None, client: str | None = None,
               *, derive: bool = True) -> tuple[str | None, str | None]:
    """(user, session) from the headers and the peeked body, first found wins (see the module
    docstring). ``derive=False``: no session made up from the content (a token count is no
    turn of the conversation)."""
    user = session = None
    if peek is not None:
        if peek.metadata is not None and peek.metadata.user_id:
            user, session = _claude_metadata(peek.metadata.user_id)
        user = user or peek.user or peek.safety_identifier
    session = (
        headers.get("x-codeswitch-session")
        or session
        or headers.get("x-claude-code-session-id")
        or headers.get("session-id")
        or headers.get("session_id")
        or (peek.prompt_cache_key if peek is not None else None)
    )
    if session is None and derive and client == "gemini-cli" and peek is not None \
            and peek.contents:
        session = gemini_session(bytes(peek.contents))
    return user, session


def identify(headers: dict[str, str], peek: Peek | None, *, derive: bool = True) -> Identity:
    client = _client_family(headers)
    user, session = session_of(headers, peek, client, derive=derive)
    return Identity(client, user and user[:128], session and session[:128])
