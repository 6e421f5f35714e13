"""A session's conversation, readable: from one body-log entry (a request body and the
response as the client received it) to turns — who said what, tool calls and their results.
Pure; ``codeswitch sessions show`` renders it.

Coding CLIs send the whole history with every turn, so the entry of a session's largest
request (``main_request_id`` in the ledger) plus its own answer is the conversation. The
request is read with the translator's decoders (any of the four dialects, into the common
form), the answer with its response or stream decoder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from workers import translator
from workers.translator import anthropic, gemini, openai_chat, openai_responses
from workers.translator.common import (
    Image,
    Reasoning,
    StreamReasoning,
    StreamText,
    StreamToolArgs,
    StreamToolStart,
    Text,
    ToolCall,
    ToolResult,
)
from workers.translator.sse import SSEDecoder

__all__ = ["Turn", "conversation", "title"]

_DECODERS: dict[str, Any] = {
    "anthropic": anthropic,
    "openai-chat": openai_chat,
    "openai-responses": openai_responses,
    "gemini": gemini,
}
TITLE_CHARS = 80


class Turn(NamedTuple):
    role: str  # system | user | assistant | error
    kind: str  # text | thinking | tool_call | tool_result | image
    text: str
    name: str | None = None  # the tool, for a call or a result


def _context_block(text: str) -> bool:
    """What the CLIs put before the user's words: <system-reminder>, <environment_context>,
    <session_context>, AGENTS.md instructions, Claude Code's caveats."""
    head = text.lstrip()
    return head.startswith(("<", "# AGENTS.md", "Caveat:")) or not head


def _parts(role: str, parts: Iterable[Any]) -> list[Turn]:
    out = []
    for p in parts:
        if isinstance(p, Text):
            out.append(Turn(role, "text", p.text))
        elif isinstance(p, ToolCall):
            out.append(Turn(role, "tool_call", p.arguments, p.name))
        elif isinstance(p, ToolResult):
            text = "\n".join(c.text if isinstance(c, Text) else "[image]" for c in p.content)
            out.append(Turn(role, "tool_result", text, p.name or p.call_id))
        elif isinstance(p, Reasoning):
            if p.text:
                out.append(Turn(role, "thinking", p.text))
        elif isinstance(p, Image):
            out.append(Turn(role, "image", p.url or p.media_type or "image"))
    return out


def _request_turns(dialect: str, body: bytes) -> list[Turn]:
    req = translator.decode_request(dialect, body)
    turns = [Turn("system", "text", "\n\n".join(t.text for t in req.system))] \
        if req.system else []
    for m in req.messages:
        role = "system" if m.role in ("system", "developer") else m.role
        turns += _parts(role, m.parts)
    return turns


def _stream_turns(dialect: str, body: bytes) -> list[Turn]:
    decoder = _DECODERS[dialect].StreamDecoder()
    events: list[Any] = []
    text = body.lstrip()
    if dialect == "gemini" and text.startswith(b"["):  # the JSON-array stream (no alt=sse)
        events = decoder.decode(None, json.loads(text))
    else:
        sse = SSEDecoder()
        for ev in [*sse.feed(body), *sse.flush()]:
            if not ev.data or ev.data == "[DONE]":
                continue
            try:
                events += decoder.decode(ev.event, json.loads(ev.data))
            except ValueError:
                continue
    turns: list[Turn] = []
    calls: dict[Any, int] = {}
    for e in events:
        if isinstance(e, StreamText | StreamReasoning):
            kind = "text" if isinstance(e, StreamText) else "thinking"
            if turns and turns[-1].kind == kind and turns[-1].name is None:
                turns[-1] = turns[-1]._replace(text=turns[-1].text + e.text)
            else:
                turns.append(Turn("assistant", kind, e.text))
        elif isinstance(e, StreamToolStart):
            calls[e.key] = len(turns)
            turns.append(Turn("assistant", "tool_call", "", e.name))
        elif isinstance(e, StreamToolArgs) and e.key in calls:
            i = calls[e.key]
            turns[i] = turns[i]._replace(text=turns[i].text + e.delta)
    return turns


def _response_turns(dialect: str, status: int, body: bytes) -> list[Turn]:
    if status >= 400:
        return [Turn("error", "text", f"{status}: {body.decode('utf-8', 'replace')[:2000]}")]
    stripped = body.lstrip()
    if stripped.startswith((b"event:", b"data:", b":")) or (
            dialect == "gemini" and stripped.startswith(b"[")):
        return _stream_turns(dialect, body)
    try:
        resp = _DECODERS[dialect].decode_response(json.loads(body))
    except (ValueError, KeyError, TypeError, AttributeError):
        return []
    return _parts("assistant", resp.content)


def conversation(entry: dict[str, Any]) -> list[Turn]:
    """The turns of a body-log entry: the request's history, then its answer. A body the
    decoders cannot read gives what could be read (an unreadable request: its answer only)."""
    dialect = entry.get("dialect") or ""
    if dialect not in _DECODERS:
        return []
    turns: list[Turn] = []
    try:
        turns = _request_turns(dialect, (entry.get("request") or "").encode())
    except translator.TranslationError:
        pass
    try:
        turns += _response_turns(dialect, int(entry.get("status") or 0),
                                 (entry.get("response") or "").encode())
    except Exception:  # a cut or odd answer: the history is still worth showing
        pass
    return turns


def title(turns: Iterable[Turn]) -> str | None:
    """The first line the user wrote (context blocks the CLIs add skipped), at most 80
    characters."""
    for t in turns:
        if t.role == "user" and t.kind == "text" and not _context_block(t.text):
            line = next(ln.strip() for ln in t.text.splitlines() if ln.strip())
            return line if len(line) <= TITLE_CHARS else line[:TITLE_CHARS - 1] + "…"
    return None
