"""Client requests for the four dialects, and the text the fake upstream answers with.

Shared by ``fake_upstream.py`` (what it says), ``loadgen.py`` (what it sends) and ``compare.py``
(what it checks for), so that a response can be validated even after translation: every answer
is the same 20 text pieces, whatever the dialect.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = [
    "CHUNKS",
    "DIALECTS",
    "FULL_TEXT",
    "ClientRequest",
    "client_request",
    "content_markers",
]

DIALECTS = ("anthropic", "openai-chat", "openai-responses", "gemini")

# 20 content pieces; each carries a searchable marker ("piece 07") so a client can check that
# all of them arrived, in any dialect, after any translation.
CHUNKS: tuple[str, ...] = tuple(
    f"piece {i:02d} of a short answer about the refactor; " for i in range(20)
)
FULL_TEXT = "".join(CHUNKS)

_SYSTEM = (
    "You are a coding assistant. Answer briefly. The repository uses Python 3.11, asyncio "
    "and msgspec; keep changes minimal and explain them in one paragraph."
)
_USER = (
    "Rename the helper _parse_line in bench/loadgen.py to _parse_status_line and update "
    "its two call sites. Reply with the diff only."
)


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """One request as a client of ``dialect`` sends it: path (with query), body, headers."""

    dialect: str
    stream: bool
    path: str
    body: bytes
    headers: dict[str, str]
    expect: tuple[bytes, ...]  # substrings a complete, valid response body must contain


def _user_text(pad_bytes: int) -> str:
    if pad_bytes <= 0:
        return _USER
    filler = "context line for the benchmark, ignored by the fake upstream.\n"
    reps = pad_bytes // len(filler) + 1
    return _USER + "\n\n" + (filler * reps)[:pad_bytes]


def content_markers() -> tuple[bytes, ...]:
    """The first and the last content piece: both must reach the client."""
    return (b"piece 00", b"piece 19")


_TERMINATORS: dict[str, bytes] = {
    "anthropic": b"message_stop",
    "openai-chat": b"[DONE]",
    "openai-responses": b"response.completed",
    "gemini": b"STOP",
}


def client_request(
    dialect: str, stream: bool, model: str, *, api_key: str = "bench-key", pad_bytes: int = 0
) -> ClientRequest:
    """The request a ``dialect`` client would send for ``model``."""
    user = _user_text(pad_bytes)
    headers = {"content-type": "application/json"}
    body: dict[str, object]
    if dialect == "anthropic":
        path = "/v1/messages"
        headers["x-api-key"] = api_key
        headers["anthropic-version"] = "2023-06-01"
        body = {
            "model": model,
            "max_tokens": 1024,
            "system": _SYSTEM,
            "messages": [{"role": "user", "content": user}],
        }
        if stream:
            body["stream"] = True
    elif dialect == "openai-chat":
        path = "/v1/chat/completions"
        headers["authorization"] = f"Bearer {api_key}"
        body = {
            "model": model,
            "max_completion_tokens": 1024,
            "messages": [
                {"role": "system", "content": _SYSTEM},
                {"role": "user", "content": user},
            ],
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
    elif dialect == "openai-responses":
        path = "/v1/responses"
        headers["authorization"] = f"Bearer {api_key}"
        body = {
            "model": model,
            "instructions": _SYSTEM,
            "input": [
                {"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": user}]},
            ],
            "max_output_tokens": 1024,
            "store": False,
        }
        if stream:
            body["stream"] = True
    elif dialect == "gemini":
        verb = "streamGenerateContent?alt=sse" if stream else "generateContent"
        path = f"/v1beta/models/{model}:{verb}"
        headers["x-goog-api-key"] = api_key
        body = {
            "systemInstruction": {"parts": [{"text": _SYSTEM}]},
            "contents": [{"role": "user", "parts": [{"text": user}]}],
            "generationConfig": {"maxOutputTokens": 1024},
        }
    else:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}")
    expect = content_markers()
    if stream:
        expect = (*expect, _TERMINATORS[dialect])
    raw = json.dumps(body, separators=(",", ":")).encode()
    return ClientRequest(dialect, stream, path, raw, headers, expect)
