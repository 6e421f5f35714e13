"""Usage, finish reason, model and in-stream errors read off a raw upstream body, cheaply.

``UsageTracker(dialect, stream)`` is fed every raw upstream chunk in order, then ``finish()``.
It runs on every pass-through request, so it decodes as little JSON as it can:

* streams go through ``SSEDecoder``; an event is JSON-decoded only when a substring check says
  it can carry what we want. Values that are snapshots (Anthropic ``message_delta`` usage is
  cumulative, Chat's usage chunk, Responses' terminal event, Gemini's ``usageMetadata`` which is
  repeated on every chunk) are kept as the *raw* last event and decoded once, lazily, when a
  property is read. Last one wins; nothing is ever summed.
* non-streaming bodies (and Gemini's non-``alt=sse`` stream, a JSON array) are buffered and
  decoded once at ``finish()``.

Normalised ``Usage`` (schemas/events.py): input = uncached prompt tokens.
    anthropic      input_tokens already excludes cache_read/cache_creation
    openai-chat    prompt_tokens includes cached_tokens (and cache_write_tokens when reported)
    openai-resp.   input_tokens likewise includes input_tokens_details.cached_tokens
    gemini         promptTokenCount includes cachedContentTokenCount; toolUsePromptTokenCount is
                   extra prompt; candidatesTokenCount excludes thoughtsTokenCount, so
                   output = candidates + thoughts and reasoning = thoughts
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from schemas.events import Usage

from .sse import SSEDecoder

__all__ = ["UsageTracker", "normalise_usage"]

_decode = msgspec.json.Decoder().decode

_CHAT_FINISH = re.compile(r'"finish_reason"\s*:\s*"')
_CHAT_USAGE = re.compile(r'"usage"\s*:\s*\{')
_CHAT_CONTENT = re.compile(
    r'"(?:content|reasoning_content|reasoning|refusal|arguments)"\s*:\s*"(?!")|"tool_calls"\s*:\s*\['
)
_GEMINI_CONTENT = re.compile(r'"text"\s*:\s*"(?!")|"functionCall"|"inlineData"|"executableCode"')
_JSON_TYPE = re.compile(r'"type"\s*:\s*"([^"]*)"')
_RESP_CONTENT = frozenset({
    "response.output_text.delta",
    "response.refusal.delta",
    "response.function_call_arguments.delta",
    "response.custom_tool_call_input.delta",
    "response.reasoning_summary_text.delta",
    "response.reasoning_text.delta",
})
_RESP_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


_MAX_TOKENS = 2 ** 53  # a count above this is garbage (and would not fit the ledger's BIGINT)


def _int(d: Any, key: str) -> int:
    if not isinstance(d, dict):
        return 0
    v = d.get(key)
    return v if type(v) is int and 0 <= v < _MAX_TOKENS else 0


def normalise_usage(dialect: str, raw: Any) -> Usage | None:
    """A dialect's usage object (``usage`` / ``usageMetadata``) as the normalised ``Usage``."""
    if not isinstance(raw, dict):
        return None
    if dialect == "anthropic":
        write = _int(raw, "cache_creation_input_tokens")
        if not write and isinstance(raw.get("cache_creation"), dict):
            write = sum(_int(raw["cache_creation"], k) for k in raw["cache_creation"])
        return Usage(
            input_tokens=_int(raw, "input_tokens"),
            output_tokens=_int(raw, "output_tokens"),
            cache_read_tokens=_int(raw, "cache_read_input_tokens"),
            cache_write_tokens=write,
        )
    if dialect == "gemini":
        prompt = _int(raw, "promptTokenCount") + _int(raw, "toolUsePromptTokenCount")
        cached = _int(raw, "cachedContentTokenCount")
        thoughts = _int(raw, "thoughtsTokenCount")
        return Usage(
            input_tokens=max(prompt - cached, 0),
            output_tokens=_int(raw, "candidatesTokenCount") + thoughts,
            cache_read_tokens=cached,
            reasoning_tokens=thoughts,
        )
    if dialect == "openai-chat":
        prompt, output = _int(raw, "prompt_tokens"), _int(raw, "completion_tokens")
        pdet, odet = raw.get("prompt_tokens_details"), raw.get("completion_tokens_details")
        # DeepSeek-style providers report the cache hit at top level.
        cached = _int(pdet, "cached_tokens") or _int(raw, "prompt_cache_hit_tokens")
    else:
        prompt, output = _int(raw, "input_tokens"), _int(raw, "output_tokens")
        pdet, odet = raw.get("input_tokens_details"), raw.get("output_tokens_details")
        cached = _int(pdet, "cached_tokens")
    write = _int(pdet, "cache_write_tokens") or _int(pdet, "cache_creation_tokens")
    return Usage(
        input_tokens=max(prompt - cached - write, 0),
        output_tokens=output,
        cache_read_tokens=cached,
        cache_write_tokens=write,
        reasoning_tokens=_int(odet, "reasoning_tokens"),
    )


def _error_of(doc: Any) -> tuple[str, str] | None:
    """(type or code, message) of an error envelope in any dialect, else None."""
    if isinstance(doc, list):
        doc = doc[0] if doc else None
    if not isinstance(doc, dict):
        return None
    err = doc.get("error")
    if isinstance(err, dict):
        kind = err.get("type") or err.get("status") or err.get("code") or "error"
        if doc.get("type") == "error" and err.get("code"):
            kind = err["code"]  # Responses nested error: code is the specific one
        return _str(kind), _str(err.get("message") or "")
    if doc.get("type") == "error":  # Responses flat error event
        return _str(doc.get("code") or "error"), _str(doc.get("message") or "")
    return None


def _str(value: Any) -> str:
    """``str(value)``; a value nested too deeply to print is not worth printing."""
    try:
        return value if isinstance(value, str) else str(value)[:500]
    except RecursionError:
        return "(nested too deeply)"


class UsageTracker:
    """Watches one upstream body; see the module docstring."""

    def __init__(self, dialect: str, stream: bool) -> None:
        self.dialect = dialect
        self.stream = stream
        self.error: tuple[str, str] | None = None
        self.saw_content = False
        self._sse = SSEDecoder()
        self._body: list[bytes] = []
        self._array: bool | None = None if (stream and dialect == "gemini") else False
        self._finished = False
        # Raw JSON of the events that matter, decoded lazily.
        self._first: str | None = None  # Anthropic message_start / first chunk (model)
        self._last_usage: str | None = None
        self._last_finish: str | None = None
        self._doc: Any = None  # non-stream body, decoded
        self._cache: tuple[Usage | None, str | None, str | None] | None = None

    # -- feeding -----------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if not self.stream or self._array:
            self._body.append(chunk)
            if self._array and not self.saw_content and _GEMINI_CONTENT.search(
                    chunk.decode("utf-8", "ignore")):
                self.saw_content = True
            return
        if self._array is None:
            stripped = chunk.lstrip()
            if not stripped:
                return
            self._array = stripped[:1] == b"["
            if self._array:
                self.feed(chunk)
                return
        for ev in self._sse.feed(chunk):
            self._event(ev.event, ev.data)

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.stream and not self._array:
            for ev in self._sse.flush():
                self._event(ev.event, ev.data)
            return
        body = b"".join(self._body)
        self._body = []
        try:
            self._doc = _decode(body) if body.strip() else None
        except (msgspec.DecodeError, RecursionError):
            self._doc = None
            return
        err = _error_of(self._doc)
        if err is not None:
            self.error = err
            return
        self._cache = None
        if not self.saw_content:
            self.saw_content = self._doc_has_content()

    # -- results -----------------------------------------------------------------------------

    @property
    def usage(self) -> Usage | None:
        return self._results()[0]

    @property
    def finish_reason(self) -> str | None:
        return self._results()[1]

    @property
    def model(self) -> str | None:
        return self._results()[2]

    def _results(self) -> tuple[Usage | None, str | None, str | None]:
        if self._cache is None:
            try:
                usage, finish, model = self._compute()
            except RecursionError:  # an upstream event nested too deeply: nothing to read
                usage, finish, model = None, None, None
            self._cache = (usage, _text(finish), _text(model))
        return self._cache

    # -- streams -----------------------------------------------------------------------------

    def _event(self, name: str | None, data: str) -> None:
        d = self.dialect
        if d == "anthropic":
            kind = name or _json_type(data)
            if kind == "message_delta":
                self._last_usage = data
            elif kind == "content_block_delta":
                self.saw_content = True
            elif kind == "message_start":
                self._first = data
            elif kind == "content_block_start":
                if not self.saw_content and '"text"' not in data and '"thinking"' not in data:
                    self.saw_content = True  # tool_use, redacted_thinking, server tools
            elif kind == "error":
                self._set_error(data)
            else:
                return
        elif d == "openai-chat":
            if data == "[DONE]":
                return
            if self._first is None:
                self._first = data
            if not self.saw_content and _CHAT_CONTENT.search(data):
                self.saw_content = True
            if _CHAT_USAGE.search(data):
                self._last_usage = data
            if _CHAT_FINISH.search(data):
                self._last_finish = data
            if '"error"' in data and '"choices"' not in data:
                self._set_error(data)
        elif d == "openai-responses":
            kind = _json_type(data) or name
            if kind in _RESP_CONTENT:
                self.saw_content = True
            elif kind in _RESP_TERMINAL:
                self._last_usage = data
                if kind == "response.failed" and self.error is None:
                    self._set_error(data, failed=True)
            elif kind == "response.created":
                self._first = data
            elif kind == "response.output_item.added":
                if '"function_call"' in data or '"custom_tool_call"' in data:
                    self.saw_content = True
            elif kind == "error":
                self._set_error(data)
            else:
                return
        elif d == "gemini":
            if not self.saw_content and _GEMINI_CONTENT.search(data):
                self.saw_content = True
            if "usageMetadata" in data:
                self._last_usage = data
            if "finishReason" in data:
                self._last_finish = data
            if self._first is None:
                self._first = data
            if '"error"' in data and '"candidates"' not in data:
                self._set_error(data)
        else:
            return
        self._cache = None

    def _set_error(self, data: str, *, failed: bool = False) -> None:
        doc = _loads(data)
        if failed:
            resp = doc.get("response") if isinstance(doc, dict) else None
            doc = resp if isinstance(resp, dict) else {}
            err = doc.get("error")
            if isinstance(err, dict):
                self.error = (_str(err.get("code") or "failed"), _str(err.get("message") or ""))
            return
        found = _error_of(doc)
        if found is not None:
            self.error = found

    def _compute(self) -> tuple[Usage | None, str | None, str | None]:
        if self._doc is not None:
            return self._from_doc(self._doc)
        d = self.dialect
        usage: Usage | None = None
        finish: str | None = None
        model: str | None = None
        if d == "anthropic":
            start = _loads(self._first)
            msg = start.get("message") if isinstance(start, dict) else None
            base: dict[str, Any] = {}
            if isinstance(msg, dict):
                model = msg.get("model")
                if isinstance(msg.get("usage"), dict):
                    base = dict(msg["usage"])
            delta = _loads(self._last_usage)
            if isinstance(delta, dict):
                if isinstance(delta.get("usage"), dict):
                    base.update(delta["usage"])  # cumulative: overrides, never adds
                if isinstance(delta.get("delta"), dict):
                    finish = delta["delta"].get("stop_reason")
            usage = normalise_usage(d, base) if base else None
        elif d == "openai-chat":
            first = _loads(self._first)
            model = first.get("model") if isinstance(first, dict) else None
            last = _loads(self._last_usage)
            if isinstance(last, dict):
                usage = normalise_usage(d, last.get("usage"))
            finish = _chat_finish(_loads(self._last_finish))
        elif d == "openai-responses":
            first = _loads(self._first)
            if isinstance(first, dict) and isinstance(first.get("response"), dict):
                model = first["response"].get("model")
            term = _loads(self._last_usage)
            if isinstance(term, dict) and isinstance(term.get("response"), dict):
                resp = term["response"]
                model = resp.get("model") or model
                usage = normalise_usage(d, resp.get("usage"))
                finish = _responses_finish(resp)
        elif d == "gemini":
            first = _loads(self._first)
            last = _loads(self._last_usage)
            for doc in (first, last):
                if isinstance(doc, dict) and doc.get("modelVersion"):
                    model = doc["modelVersion"]
            if isinstance(last, dict):
                usage = normalise_usage(d, last.get("usageMetadata"))
            finish = _gemini_finish(_loads(self._last_finish))
        return usage, finish, model

    # -- whole bodies ------------------------------------------------------------------------

    def _from_doc(self, doc: Any) -> tuple[Usage | None, str | None, str | None]:
        d = self.dialect
        if d == "gemini" and isinstance(doc, list):
            usage, finish, model = None, None, None
            for item in doc:
                if not isinstance(item, dict):
                    continue
                if isinstance(item.get("usageMetadata"), dict):
                    usage = normalise_usage(d, item["usageMetadata"])
                finish = _gemini_finish(item) or finish
                model = item.get("modelVersion") or model
            return usage, finish, model
        if not isinstance(doc, dict):
            return None, None, None
        if d == "anthropic":
            return normalise_usage(d, doc.get("usage")), doc.get("stop_reason"), doc.get("model")
        if d == "openai-chat":
            return normalise_usage(d, doc.get("usage")), _chat_finish(doc), doc.get("model")
        if d == "openai-responses":
            return normalise_usage(d, doc.get("usage")), _responses_finish(doc), doc.get("model")
        if d == "gemini":
            return (normalise_usage(d, doc.get("usageMetadata")), _gemini_finish(doc),
                    doc.get("modelVersion"))
        return None, None, None

    def _doc_has_content(self) -> bool:
        doc = self._doc
        try:
            if self.dialect == "anthropic":
                return bool(doc["content"])
            if self.dialect == "openai-chat":
                msg = doc["choices"][0]["message"]
                return bool(msg.get("content") or msg.get("tool_calls"))
            if self.dialect == "openai-responses":
                return bool(doc["output"])
            items = doc if isinstance(doc, list) else [doc]
            return any(c.get("content", {}).get("parts") for i in items
                       for c in i.get("candidates") or [])
        except (KeyError, IndexError, TypeError, AttributeError):
            return False


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    """A model name or finish reason as read off the wire: a string, or nothing."""
    return value if isinstance(value, str) else None


def _loads(data: str | None) -> Any:
    if data is None:
        return None
    try:
        return _decode(data)
    except RecursionError:
        return None
    except msgspec.DecodeError:
        # Some upstreams omit the blank line between events, so one SSE event holds several
        # JSON documents on separate data lines: take the last one.
        if "\n" in data:
            return _loads(data.rsplit("\n", 1)[1])
        return None


def _json_type(data: str) -> str | None:
    m = _JSON_TYPE.search(data, 0, 200)
    return m.group(1) if m else None


def _chat_finish(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return None
    for choice in _list(doc.get("choices")):
        if isinstance(choice, dict) and choice.get("finish_reason"):
            return str(choice["finish_reason"])
    return None


def _responses_finish(resp: dict[str, Any]) -> str | None:
    status = resp.get("status")
    det = resp.get("incomplete_details")
    if status == "incomplete" and isinstance(det, dict) and det.get("reason"):
        return str(det["reason"])
    return str(status) if status else None


def _gemini_finish(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return None
    for cand in _list(doc.get("candidates")):
        if isinstance(cand, dict) and cand.get("finishReason"):
            return str(cand["finishReason"])
    fb = doc.get("promptFeedback")
    if isinstance(fb, dict) and fb.get("blockReason"):
        return str(fb["blockReason"])
    return None
