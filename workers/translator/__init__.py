"""The translator: pure codecs between the four dialects (no I/O), hub and spoke.

Every dialect module (``anthropic``, ``openai_chat``, ``openai_responses``, ``gemini``) decodes
into and encodes from the common form in ``common``; any pair goes through it.

Public API (what the router calls)::

    can_translate(client_dialect, provider_dialect) -> bool
    parse_request(body) -> dict                            # the JSON document, decoded once
    prepare(client_dialect, provider_dialect, body, *, model, stream, doc=None,
            chat_max_tokens="max_completion_tokens") -> Prepared(body, context)
    translate_request(...same...) -> bytes                 # prepare(...).body
    translate_response(provider, client, body, *, model, request_id, context=None) -> bytes
    translate_error(provider, client, status, body) -> (status, bytes)
    StreamTranslator(provider, client, *, model, request_id, context=None)
        .feed(chunk) -> bytes   .close() -> bytes   .fail(status, message) -> bytes
    count_tokens_request(client_dialect, provider_dialect, body, *, model, doc=None) -> bytes
    count_tokens_estimate(client_dialect, body, *, doc=None) -> int

``doc=``: the body already decoded by ``parse_request``. A request tried on several providers
(fallback; a count, then the estimate) is decoded once and the document passed to each call:
the codecs never change it.

State from the request that the response side needs lives in ``TranslationContext``: the
reverse tool-name map (names renamed to fit the provider's rules), which tools are free-form
``custom`` tools, and whether a Chat client asked for the usage chunk. Pass ``context=`` from
``prepare`` to ``translate_response``/``StreamTranslator``; without it names pass unchanged.
Tool renames are deterministic (``_util.provider_tool_name``), so the map can also be rebuilt
from the request alone. ``model`` in the response calls is the model name shown to the client.

``TranslationError`` (status 400, or 502 for an upstream answer that cannot be expressed, e.g.
Gemini MALFORMED_FUNCTION_CALL to a non-Gemini client) carries a message for the client; render
it with ``e.render(client_dialect)`` (it is a ``schemas.errors.GatewayError``).

Hostile input (docs/hostile-input.md): whatever the bytes, the functions above return or raise
``TranslationError``, never another exception. The codecs read fields duck-typed (a client may
put any JSON type in any field); what a wrong type breaks (``_MALFORMED``: a TypeError on a
list where text was expected, a RecursionError on JSON nested ~1,000 deep...) is caught at
each public entry point and becomes a 400 for a request, a 502 for an upstream answer
(``tests/translator/test_fuzz.py``). ``translate_error`` and ``StreamTranslator.fail`` never
raise at all.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, NamedTuple

import msgspec

from schemas.dialects import DIALECTS
from schemas.errors import error_body, stream_error

from . import anthropic, gemini, openai_chat, openai_responses
from ._util import dumps, loads, parse_args, provider_tool_name
from .common import (
    Image,
    Reasoning,
    Request,
    Response,
    StreamError,
    StreamEvent,
    StreamFinish,
    StreamToolStart,
    Text,
    ToolCall,
    ToolResult,
    TranslationError,
)
from .sse import SSEDecoder, SSEEvent
from .usage import UsageTracker

__all__ = [
    "COUNTING_DIALECTS",
    "Prepared",
    "SSEDecoder",
    "SSEEvent",
    "StreamTranslator",
    "TranslationContext",
    "TranslationError",
    "UsageTracker",
    "can_translate",
    "count_tokens_estimate",
    "count_tokens_request",
    "count_tokens_result",
    "parse_request",
    "prepare",
    "translate_error",
    "translate_request",
    "translate_response",
]

_MODULES: dict[str, ModuleType] = {
    "anthropic": anthropic,
    "openai-chat": openai_chat,
    "openai-responses": openai_responses,
    "gemini": gemini,
}


class TranslationContext(msgspec.Struct, kw_only=True):
    client_dialect: str
    provider_dialect: str
    tool_names: dict[str, str] = msgspec.field(default_factory=dict)  # provider -> client
    custom_tools: list[str] = msgspec.field(default_factory=list)  # provider-side names
    # provider-side name -> Responses namespace group (Codex `namespace` tools, flattened)
    tool_namespaces: dict[str, str] = msgspec.field(default_factory=dict)
    include_usage: bool = True  # Chat clients: send the usage chunk
    dropped: list[str] = msgspec.field(default_factory=list)


class Prepared(NamedTuple):
    body: bytes
    context: TranslationContext


def can_translate(client_dialect: str, provider_dialect: str) -> bool:
    return client_dialect in DIALECTS and provider_dialect in DIALECTS


def _module(dialect: str) -> ModuleType:
    try:
        return _MODULES[dialect]
    except KeyError:
        raise ValueError(f"unknown dialect {dialect!r}") from None


# What a value of the wrong type or shape makes the duck-typed codecs raise. RecursionError:
# msgspec (and the schema walkers) on JSON nested deeper than the interpreter's stack allows.
_MALFORMED = (LookupError, TypeError, AttributeError, ValueError, ArithmeticError,
              RecursionError, msgspec.MsgspecError)


def _malformed(what: str, exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return f"{what}: JSON nested too deeply"
    return f"{what}: {exc!r}"[:500]


def _doc(body: bytes) -> dict[str, Any]:
    try:
        doc = loads(body)
    except RecursionError:
        raise TranslationError("request body is JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise TranslationError("request body must be a JSON object")
    return doc


def parse_request(body: bytes) -> dict[str, Any]:
    """A request body as its JSON document (TranslationError when it is not a JSON object).
    Pass it as ``doc=`` to the calls below instead of decoding the same bytes again."""
    return _doc(body)


def decode_request(client_dialect: str, body: bytes) -> Request:
    """The client's request in the common form (raises TranslationError)."""
    return _decode_doc(client_dialect, _doc(body))


def _decode_doc(client_dialect: str, doc: dict[str, Any]) -> Request:
    try:
        return _module(client_dialect).decode_request(doc)  # type: ignore[no-any-return]
    except TranslationError:
        raise
    except _MALFORMED as exc:
        raise TranslationError(_malformed(f"malformed {client_dialect} request", exc)) \
            from None


def _rename_tools(req: Request, provider: str) -> dict[str, str]:
    back: dict[str, str] = {}

    def rename(name: str) -> str:
        new = provider_tool_name(name, provider)
        if new != name:
            back[new] = name
        return new

    for t in req.tools:
        t.name = rename(t.name)
    if req.tool_choice is not None and req.tool_choice.name:
        req.tool_choice.name = rename(req.tool_choice.name)
    for m in req.messages:
        for p in m.parts:
            if isinstance(p, ToolCall | ToolResult) and p.name:
                p.name = rename(p.name)
    return back


def prepare(client_dialect: str, provider_dialect: str, body: bytes, *, model: str,
            stream: bool, doc: dict[str, Any] | None = None,
            chat_max_tokens: str = "max_completion_tokens") -> Prepared:
    """Translate a request body and keep what the response side needs.

    ``doc``: ``parse_request(body)`` when the caller has it already (``body`` is then not read
    again). ``chat_max_tokens``: the field an OpenAI Chat provider reads the output limit from
    (``ProviderConfig.max_tokens_field``; DeepSeek, vLLM, Ollama... read only ``max_tokens``)."""
    out, ctx = _prepare(client_dialect, provider_dialect, body, doc, model=model,
                        stream=stream)
    if provider_dialect == "openai-chat" and chat_max_tokens != "max_completion_tokens":
        limit = out.pop("max_completion_tokens", None)
        if limit is not None:
            out[chat_max_tokens] = limit
    try:
        return Prepared(dumps(out), ctx)
    except _MALFORMED as exc:
        raise TranslationError(_malformed(
            f"malformed {client_dialect} request for a {provider_dialect} provider", exc)) \
            from None


def _prepare(client_dialect: str, provider_dialect: str, body: bytes,
             doc: dict[str, Any] | None, *, model: str,
             stream: bool) -> tuple[dict[str, Any], TranslationContext]:
    """The provider's request as a document (not yet encoded) and the context."""
    encoder = _module(provider_dialect)
    try:
        if doc is None:
            doc = _doc(body)
        req = _decode_doc(client_dialect, doc)
        names = _rename_tools(req, provider_dialect)
        include_usage = True
        if client_dialect == "openai-chat":
            include_usage = bool((doc.get("stream_options") or {}).get("include_usage"))
        out = encoder.encode_request(req, model=model, stream=stream)
        ctx = TranslationContext(client_dialect=client_dialect,
                                 provider_dialect=provider_dialect, tool_names=names,
                                 custom_tools=[t.name for t in req.tools if t.kind == "custom"],
                                 tool_namespaces={t.name: t.namespace for t in req.tools
                                                  if t.namespace},
                                 include_usage=include_usage, dropped=req.dropped)
        return out, ctx
    except TranslationError:
        raise
    except _MALFORMED as exc:
        raise TranslationError(_malformed(
            f"malformed {client_dialect} request for a {provider_dialect} provider", exc)) \
            from None


def translate_request(client_dialect: str, provider_dialect: str, body: bytes, *, model: str,
                      stream: bool) -> bytes:
    return prepare(client_dialect, provider_dialect, body, model=model, stream=stream).body


def _fix_response(resp: Response, ctx: TranslationContext | None, client: str) -> None:
    calls = [p for p in resp.content if isinstance(p, ToolCall)]
    if resp.finish == "max_tokens":
        # A call cut off mid-arguments is not a call (edge case 9).
        resp.content = [p for p in resp.content
                        if not (isinstance(p, ToolCall) and parse_args(p.arguments) is None)]
        calls = [p for p in resp.content if isinstance(p, ToolCall)]
    if resp.finish == "end_turn" and calls:
        resp.finish = "tool_use"  # Gemini STOP / OpenAI "stop" with function calls
    elif resp.finish == "tool_use" and not calls:
        resp.finish = "end_turn"
    if resp.finish == "malformed_tool_call" and client != "gemini":
        raise TranslationError("the upstream model produced a malformed function call "
                               "(Gemini MALFORMED_FUNCTION_CALL)", 502)
    if ctx is not None:
        for c in calls:
            if c.name in ctx.custom_tools:
                c.kind = "custom"
            c.namespace = ctx.tool_namespaces.get(c.name)
            c.name = ctx.tool_names.get(c.name, c.name)


def translate_response(provider_dialect: str, client_dialect: str, body: bytes, *, model: str,
                       request_id: str, context: TranslationContext | None = None) -> bytes:
    """A provider's non-streaming success body as the client's dialect."""
    decoder, encoder = _module(provider_dialect), _module(client_dialect)
    try:
        doc = loads(body)
        if isinstance(doc, list) and provider_dialect == "gemini":
            doc = _merge_gemini_array(doc)
        resp: Response = decoder.decode_response(doc)
    except TranslationError as exc:
        raise TranslationError(f"upstream response could not be read: {exc.message}",
                               502) from None
    except _MALFORMED as exc:
        raise TranslationError(_malformed("upstream response could not be read", exc),
                               502) from None
    try:
        _fix_response(resp, context, client_dialect)
        return dumps(encoder.encode_response(resp, model=model, request_id=request_id))
    except TranslationError:
        raise
    except _MALFORMED as exc:
        raise TranslationError(_malformed(
            f"upstream {provider_dialect} response could not be expressed for a "
            f"{client_dialect} client", exc), 502) from None


def _merge_gemini_array(chunks: list[Any]) -> dict[str, Any]:
    """A non-SSE streamGenerateContent body (JSON array) as one response."""
    parts: list[Any] = []
    last: dict[str, Any] = {}
    for c in chunks:
        if isinstance(c, dict):
            if "error" in c:
                raise TranslationError(str(c["error"].get("message")), 502)
            for cand in c.get("candidates") or []:
                parts += (cand.get("content") or {}).get("parts") or []
            last = c
    merged = dict(last)
    if merged.get("candidates"):
        cand = dict(merged["candidates"][0])
        cand["content"] = {"role": "model", "parts": parts}
        merged["candidates"] = [cand]
    return merged


# -- errors -----------------------------------------------------------------------------------

def _error_fields(provider: str, doc: Any) -> tuple[str, str | None, str | None]:
    """(message, type/status, reason) from a provider error body."""
    if isinstance(doc, list):
        doc = doc[0] if doc else {}
    if not isinstance(doc, dict):
        return "", None, None
    err = doc.get("error")
    if isinstance(err, dict):
        reason = None
        for d in err.get("details") or []:
            if isinstance(d, dict) and d.get("reason"):
                reason = str(d["reason"])
        kind = err.get("type") or err.get("status") or err.get("code")
        return str(err.get("message") or ""), str(kind) if kind else None, reason
    if isinstance(err, str):
        return err, None, None
    return str(doc.get("message") or ""), None, None


def translate_error(provider_dialect: str, client_dialect: str, status: int,
                    body: bytes) -> tuple[int, bytes]:
    """An upstream error response as the client's status and envelope."""
    try:
        doc = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        doc = None
    try:
        message, kind, reason = _error_fields(provider_dialect, doc)
    except _MALFORMED:
        message, kind, reason = "", None, None
    if not message:
        message = body.decode("utf-8", "replace")[:500] or f"upstream error {status}"
    out_status = status
    if reason == "API_KEY_INVALID" or kind == "UNAUTHENTICATED":
        out_status = 401
    if client_dialect == "anthropic" and status == 503 and kind in (
            "UNAVAILABLE", "service_unavailable", None):
        out_status = 529 if provider_dialect != "gemini" else 503
    if client_dialect != "anthropic" and status == 529:
        out_status = 503
    code = kind if client_dialect in ("openai-chat", "openai-responses") else None
    return out_status, error_body(client_dialect, out_status, message, code=code)


# -- streams ----------------------------------------------------------------------------------

class StreamTranslator:
    """Raw upstream SSE bytes in, client-dialect SSE bytes out, one event at a time."""

    def __init__(self, provider_dialect: str, client_dialect: str, *, model: str,
                 request_id: str, context: TranslationContext | None = None) -> None:
        self.provider = provider_dialect
        self.client = client_dialect
        self._sse = SSEDecoder()
        self._dec = _module(provider_dialect).StreamDecoder()
        enc_cls = _module(client_dialect).StreamEncoder
        if client_dialect == "openai-chat":
            self._enc = enc_cls(model=model, request_id=request_id,
                                include_usage=context.include_usage if context else True)
        else:
            self._enc = enc_cls(model=model, request_id=request_id)
        self._ctx = context
        self._saw_tool = False
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        if self._done:
            return b""
        return self._events(self._sse.feed(chunk))

    def _events(self, events: list[SSEEvent]) -> bytes:
        out: list[bytes] = []
        for sse in events:
            if self._done:
                break
            try:
                for doc in _json_docs(sse.data):
                    for ev in self._dec.decode(sse.event, doc):
                        out.append(self._one(ev))
                        if self._done:
                            break
                    if self._done:
                        break
            except TranslationError:
                raise
            except _MALFORMED as exc:
                # a malformed upstream event: the provider's protocol error, typed, so the
                # caller can fall back (before content) or fail the stream (after)
                detail = "nested too deeply" if isinstance(exc, RecursionError) else \
                    f"{type(exc).__name__}: {exc}"
                raise TranslationError(f"unreadable {self.provider} stream event "
                                       f"({detail})"[:300], 502) from None
        return b"".join(out)

    def _one(self, ev: StreamEvent) -> bytes:
        if isinstance(ev, StreamToolStart):
            self._saw_tool = True
            if self._ctx is not None:
                if ev.name in self._ctx.custom_tools:
                    ev.kind = "custom"
                ev.namespace = self._ctx.tool_namespaces.get(ev.name)
                ev.name = self._ctx.tool_names.get(ev.name, ev.name)
        elif isinstance(ev, StreamFinish):
            if ev.reason == "end_turn" and self._saw_tool:
                ev.reason = "tool_use"
            elif ev.reason == "tool_use" and not self._saw_tool:
                ev.reason = "end_turn"
            elif ev.reason == "malformed_tool_call" and self.client != "gemini":
                return self.fail(502, "the upstream model produced a malformed function call "
                                      "(Gemini MALFORMED_FUNCTION_CALL)")
        elif isinstance(ev, StreamError):
            return self.fail(ev.status, ev.message)
        return self._enc.encode(ev)  # type: ignore[no-any-return]

    def close(self) -> bytes:
        """Upstream ended: the client's terminal events, or an error if it ended early."""
        out = self._events(self._sse.flush())
        if self._done:
            return out
        if not self._dec.terminal:
            return out + self.fail(502, "upstream stream ended before its terminal event")
        self._done = True
        try:
            return out + self._enc.close()  # type: ignore[no-any-return]
        except _MALFORMED as exc:
            self._done = False  # so that the caller's fail() still ends the stream
            raise TranslationError(_malformed(f"unreadable {self.provider} stream", exc),
                                   502) from None

    def fail(self, status: int, message: str) -> bytes:
        """An error after the stream started, in the client's in-stream error shape (never
        raises: the encoder's state may be whatever a malformed upstream left it in)."""
        if self._done:
            return b""
        self._done = True
        try:
            return self._enc.fail(status, message)  # type: ignore[no-any-return]
        except _MALFORMED:
            return stream_error(self.client, status if isinstance(status, int) else 502,
                                str(message))


def _json_docs(data: str) -> list[Any]:
    if not data:
        return []
    if data == "[DONE]":
        return ["[DONE]"]
    try:
        return [msgspec.json.decode(data)]
    except msgspec.DecodeError:
        # Several JSON documents on consecutive data lines (no blank line between events).
        docs = []
        for line in data.split("\n"):
            try:
                docs.append(msgspec.json.decode(line))
            except msgspec.DecodeError:
                continue
        return docs


# -- count_tokens -----------------------------------------------------------------------------

_IMAGE_TOKENS = 1600  # Anthropic's upper bound for a ~1.15 MP image; a fixed guess


COUNTING_DIALECTS = ("anthropic", "gemini")  # providers with a count endpoint of their own
_ANTHROPIC_COUNT_KEYS = ("model", "messages", "system", "tools", "tool_choice", "thinking")
_GEMINI_COUNT_KEYS = ("contents", "systemInstruction", "tools", "toolConfig")


def _count_doc(client_dialect: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Gemini's countTokens takes ``{"contents"}`` or ``{"generateContentRequest": {...}}``
    (the latter with system instruction and tools); both read as a request body."""
    if client_dialect == "gemini":
        inner = doc.get("generateContentRequest") or doc.get("generate_content_request")
        if isinstance(inner, dict):
            return inner
    return doc


def count_tokens_request(client_dialect: str, provider_dialect: str, body: bytes, *,
                         model: str, doc: dict[str, Any] | None = None) -> bytes:
    """A client's count request as the body of the provider's own count endpoint (Anthropic
    ``/v1/messages/count_tokens``, Gemini ``:countTokens``): the same translation as a
    generation request, then only the fields that endpoint takes. ``doc``: as in
    ``prepare``."""
    if provider_dialect not in COUNTING_DIALECTS:
        raise TranslationError(f"{provider_dialect} has no count endpoint")
    if doc is None:
        doc = _doc(body)
    out, _ = _prepare(client_dialect, provider_dialect, b"", _count_doc(client_dialect, doc),
                      model=model, stream=False)
    if provider_dialect == "anthropic":
        return dumps({k: out[k] for k in _ANTHROPIC_COUNT_KEYS if k in out})
    inner = {k: out[k] for k in _GEMINI_COUNT_KEYS if k in out}
    return dumps({"generateContentRequest": {"model": f"models/{model}", **inner}})


def count_tokens_result(provider_dialect: str, raw: bytes) -> int:
    """The count out of the provider's answer (``input_tokens`` / ``totalTokens``)."""
    doc = _doc(raw)
    value = doc.get("input_tokens" if provider_dialect == "anthropic" else "totalTokens")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TranslationError(f"no token count in the {provider_dialect} answer", 502)
    return value


def count_tokens_estimate(client_dialect: str, body: bytes, *,
                          doc: dict[str, Any] | None = None) -> int:
    """An estimate for providers without count_tokens: ceil(characters / 4) over every text,
    tool argument, tool result and tool definition (name, description, JSON schema), plus 4
    tokens per message and 1600 per image. Documented in docs/translator.md; not exact.
    ``doc``: as in ``prepare``."""
    req = _decode_doc(client_dialect, _count_doc(client_dialect,
                                                 _doc(body) if doc is None else doc))
    try:
        return _estimate(req)
    except _MALFORMED as exc:
        raise TranslationError(_malformed(f"malformed {client_dialect} request", exc)) \
            from None


def _estimate(req: Request) -> int:
    chars = sum(len(t.text) for t in req.system)
    tokens = 0
    for m in req.messages:
        tokens += 4
        for p in m.parts:
            if isinstance(p, Text):
                chars += len(p.text)
            elif isinstance(p, Image):
                tokens += _IMAGE_TOKENS
            elif isinstance(p, ToolCall):
                chars += len(p.name) + len(p.arguments)
            elif isinstance(p, ToolResult):
                for q in p.content:
                    if isinstance(q, Text):
                        chars += len(q.text)
                    else:
                        tokens += _IMAGE_TOKENS
            elif isinstance(p, Reasoning):
                chars += len(p.text)
    for t in req.tools:
        chars += len(t.name) + len(t.description or "") + len(dumps(t.parameters or {}))
    return tokens + math.ceil(chars / 4)
