"""Anthropic Messages <-> common form: requests, responses, stream events.

Finish reasons (stop_reason):
    end_turn <-> end_turn; max_tokens <-> max_tokens; stop_sequence <-> stop_sequence;
    tool_use <-> tool_use; refusal <-> refusal; pause_turn <-> pause_turn;
    model_context_window_exceeded <-> context_window; other -> refusal (Gemini OTHER is a block);
    malformed_tool_call: no equivalent, the translator reports an upstream error (502) instead.
"""

from __future__ import annotations

from typing import Any

from schemas.errors import anthropic_type
from schemas.events import Usage

from ._util import budget_for_effort, carry, dumps, parse_args, uncarry
from .common import (
    Image,
    Message,
    Part,
    Reasoning,
    Request,
    Response,
    ResponseFormat,
    StreamError,
    StreamEvent,
    StreamFinish,
    StreamReasoning,
    StreamSignature,
    StreamStart,
    StreamText,
    StreamToolArgs,
    StreamToolEnd,
    StreamToolStart,
    StreamUsage,
    Text,
    Thinking,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
)
from .sse import encode_event
from .usage import normalise_usage

DIALECT = "anthropic"

FINISH_IN = {"end_turn": "end_turn", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence",
             "tool_use": "tool_use", "refusal": "refusal", "pause_turn": "pause_turn",
             "model_context_window_exceeded": "context_window"}
FINISH_OUT = {"end_turn": "end_turn", "max_tokens": "max_tokens",
              "stop_sequence": "stop_sequence", "tool_use": "tool_use", "refusal": "refusal",
              "pause_turn": "pause_turn", "context_window": "model_context_window_exceeded",
              "other": "refusal"}
_STATUS_OF_TYPE = {"invalid_request_error": 400, "authentication_error": 401,
                   "billing_error": 402, "permission_error": 403, "not_found_error": 404,
                   "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
                   "timeout_error": 504, "overloaded_error": 529}
_DROPPED = ("context_management", "container", "mcp_servers", "service_tier")
_DEFAULT_MAX_TOKENS = 8192
_MAX_OUTPUT = 32000  # Claude Opus 4.1 is the lowest current cap


def status_of_type(kind: str | None) -> int:
    return _STATUS_OF_TYPE.get(kind or "", 500)


# -- requests ---------------------------------------------------------------------------------

def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def _image(block: dict[str, Any]) -> Image:
    src = block.get("source") or {}
    kind = src.get("type")
    if kind == "base64":
        return Image(media_type=src.get("media_type"), data=src.get("data"))
    if kind == "file":
        return Image(file_id=src.get("file_id"))
    return Image(url=src.get("url"), media_type=src.get("media_type"))


def _reasoning(block: dict[str, Any]) -> Reasoning | None:
    if block["type"] == "redacted_thinking":
        data = block.get("data") or ""
        return uncarry(data) or Reasoning(redacted=data, source=DIALECT)
    sig = block.get("signature") or ""
    carried = uncarry(sig, block.get("thinking") or "")
    if carried is not None:
        return carried
    return Reasoning(text=block.get("thinking") or "", signature=sig or None, source=DIALECT)


def _part(block: dict[str, Any], dropped: list[str]) -> Part | None:
    kind = block.get("type")
    if kind == "text":
        return Text(text=block.get("text") or "", cache_control=block.get("cache_control"))
    if kind in ("image", "document"):
        return _image(block)
    if kind == "tool_use":
        return ToolCall(id=block.get("id") or "", name=block.get("name") or "",
                        arguments=dumps(block.get("input") or {}).decode())
    if kind == "tool_result":
        inner: list[Text | Image] = []
        for b in _blocks(block.get("content")):
            p = _part(b, dropped)
            if isinstance(p, Text | Image):
                inner.append(p)
        return ToolResult(call_id=block.get("tool_use_id") or "", content=inner,
                          is_error=bool(block.get("is_error")))
    if kind in ("thinking", "redacted_thinking"):
        return _reasoning(block)
    dropped.append(f"content block {kind}")
    return None


def decode_request(doc: dict[str, Any]) -> Request:
    req = Request(model=doc.get("model") or "", stream=bool(doc.get("stream")))
    for b in _blocks(doc.get("system")):
        if b.get("type") == "text":
            text = b.get("text") or ""
            if text.startswith("x-anthropic-billing-header:"):
                # Claude Code's billing line for Anthropic; noise in another model's prompt
                req.dropped.append("system billing header")
                continue
            req.system.append(Text(text=text, cache_control=b.get("cache_control")))
    for m in doc.get("messages") or []:
        parts = [p for b in _blocks(m.get("content")) if (p := _part(b, req.dropped))]
        req.messages.append(Message(role=m.get("role") or "user", parts=parts))
    for t in doc.get("tools") or []:
        if "input_schema" not in t and t.get("type") not in (None, "custom"):
            req.dropped.append(f"server tool {t.get('type')}")
            continue
        extra = {"cache_control": t["cache_control"]} if t.get("cache_control") else None
        req.tools.append(Tool(name=t.get("name") or "", description=t.get("description"),
                              parameters=t.get("input_schema"), extra=extra))
    tc = doc.get("tool_choice")
    if isinstance(tc, dict):
        mode = {"auto": "auto", "any": "required", "tool": "tool", "none": "none"}.get(
            tc.get("type") or "auto", "auto")
        req.tool_choice = ToolChoice(mode=mode, name=tc.get("name"))
        if tc.get("disable_parallel_tool_use"):
            req.parallel_tool_calls = False
    req.max_tokens = doc.get("max_tokens")
    req.temperature = doc.get("temperature")
    req.top_p = doc.get("top_p")
    req.top_k = doc.get("top_k")
    req.stop = doc.get("stop_sequences") or None
    th = doc.get("thinking")
    effort = (doc.get("output_config") or {}).get("effort")
    if isinstance(th, dict) and th.get("type") in ("enabled", "adaptive"):
        req.thinking = Thinking(budget_tokens=th.get("budget_tokens"), effort=effort,
                                adaptive=th.get("type") == "adaptive")
    elif effort:
        req.reasoning_effort = effort
    fmt = doc.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        req.response_format = ResponseFormat(type="json_schema", schema=fmt.get("schema"))
    meta = doc.get("metadata")
    if isinstance(meta, dict) and meta.get("user_id"):
        req.user = str(meta["user_id"])
    req.dropped += [k for k in _DROPPED if k in doc]
    return req


def _encode_part(p: Part, out: list[dict[str, Any]]) -> None:
    if isinstance(p, Text):
        if p.text:  # Anthropic rejects empty text blocks (claude-code#53473)
            b: dict[str, Any] = {"type": "text", "text": p.text}
            if p.cache_control:
                b["cache_control"] = p.cache_control
            out.append(b)
    elif isinstance(p, Image):
        out.append(_encode_image(p))
    elif isinstance(p, ToolCall):
        out.append({"type": "tool_use", "id": p.id, "name": p.name,
                    "input": parse_args(p.arguments) or {}})
    elif isinstance(p, ToolResult):
        content: list[dict[str, Any]] = []
        for q in p.content:
            _encode_part(q, content)
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": p.call_id}
        if content:
            block["content"] = content
        if p.is_error:
            block["is_error"] = True
        out.append(block)
    elif isinstance(p, Reasoning) and p.source == DIALECT:
        # Only Anthropic's own signed blocks go back; foreign or unsigned ones are dropped.
        if p.redacted:
            out.append({"type": "redacted_thinking", "data": p.redacted})
        elif p.signature:
            out.append({"type": "thinking", "thinking": p.text, "signature": p.signature})


def _encode_image(p: Image) -> dict[str, Any]:
    kind = "document" if p.media_type and not p.media_type.startswith("image/") else "image"
    if p.data is not None:
        src: dict[str, Any] = {"type": "base64", "media_type": p.media_type or "image/png",
                               "data": p.data}
    elif p.file_id:
        src = {"type": "file", "file_id": p.file_id}
    else:
        src = {"type": "url", "url": p.url}
    return {"type": kind, "source": src}


def encode_request(req: Request, *, model: str, stream: bool) -> dict[str, Any]:
    system = list(req.system)
    messages: list[dict[str, Any]] = []
    for m in req.messages:
        if m.role in ("system", "developer"):
            system += [p for p in m.parts if isinstance(p, Text)]
            continue
        role = "assistant" if m.role == "assistant" else "user"
        blocks: list[dict[str, Any]] = []
        for p in m.parts:
            _encode_part(p, blocks)
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += blocks
        else:
            messages.append({"role": role, "content": blocks})
    for msg in messages:  # tool_result blocks must lead a user turn
        if msg["role"] == "user":
            msg["content"].sort(key=lambda b: b["type"] != "tool_result")
    doc: dict[str, Any] = {"model": model, "messages": messages,
                           "max_tokens": req.max_tokens or _DEFAULT_MAX_TOKENS}
    if req.response_format and req.response_format.type != "text":
        schema = dumps(req.response_format.schema or {"type": "object"}).decode()
        system.append(Text(text="Respond with a single JSON value only, no prose, matching "
                                f"this JSON Schema: {schema}"))
    if system:
        doc["system"] = [
            {"type": "text", "text": t.text, **({"cache_control": t.cache_control}
                                                 if t.cache_control else {})}
            for t in system if t.text]
    if req.tools:
        doc["tools"] = [_encode_tool(t) for t in req.tools]
    choice = req.tool_choice
    if choice is not None or req.parallel_tool_calls is False:
        mode = choice.mode if choice else "auto"
        tc: dict[str, Any] = {"type": {"auto": "auto", "none": "none", "required": "any",
                                       "tool": "tool"}[mode]}
        if mode == "tool" and choice is not None:
            tc["name"] = choice.name
        if req.parallel_tool_calls is False and mode != "none":
            tc["disable_parallel_tool_use"] = True
        if req.tools or mode == "none":
            doc["tool_choice"] = tc
    if req.max_tokens is None:
        # No client limit: leave room for the thinking budget *and* a normal answer (a default
        # of 8192 would clamp the budget to 8191 and leave the answer about one token), within
        # the 32k output every current Claude model takes.
        thinking = _thinking(req, messages, 1 << 30)  # no cap yet; capped just below
        if thinking is not None and thinking["type"] == "enabled":
            total = min(thinking["budget_tokens"] + _DEFAULT_MAX_TOKENS, _MAX_OUTPUT)
            thinking["budget_tokens"] = max(1024, min(thinking["budget_tokens"], total - 4096))
            doc["max_tokens"] = total
    else:
        thinking = _thinking(req, messages, doc["max_tokens"])
    if thinking is not None:
        doc["thinking"] = thinking
    else:
        if req.temperature is not None:
            doc["temperature"] = min(max(req.temperature, 0.0), 1.0)
        if req.top_k is not None:
            doc["top_k"] = req.top_k
    if req.top_p is not None and thinking is None and "temperature" not in doc:
        # Claude 4.5+ models reject temperature and top_p together (400); temperature wins.
        doc["top_p"] = req.top_p
    if req.stop:
        doc["stop_sequences"] = req.stop
    if req.user:
        doc["metadata"] = {"user_id": req.user}
    if stream:
        doc["stream"] = True
    return doc


def _encode_tool(t: Tool) -> dict[str, Any]:
    if t.kind == "custom":
        schema: dict[str, Any] = {"type": "object", "properties": {"input": {
            "type": "string", "description": "The raw tool input."}}, "required": ["input"]}
    else:
        schema = t.parameters or {"type": "object", "properties": {}}
    out: dict[str, Any] = {"name": t.name, "input_schema": schema}
    if t.description:
        out["description"] = t.description
    if t.extra and t.extra.get("cache_control"):
        out["cache_control"] = t.extra["cache_control"]
    return out


def _thinking(req: Request, messages: list[dict[str, Any]],
              max_tokens: int) -> dict[str, Any] | None:
    th = req.thinking
    effort = req.reasoning_effort
    if th is None and effort in (None, "none", "minimal"):
        return None
    if th is not None and not th.enabled:
        return None
    if req.tool_choice and req.tool_choice.mode in ("required", "tool"):
        return None  # Anthropic rejects forced tool use with extended thinking
    last = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
    if last is not None and any(b["type"] == "tool_use" for b in last["content"]) and not any(
            b["type"] in ("thinking", "redacted_thinking") for b in last["content"]):
        return None  # a tool loop started without a signed thinking block cannot enable it
    if th is not None and th.adaptive:
        return {"type": "adaptive"}
    if th and th.budget_tokens and th.budget_tokens > 0:
        budget = th.budget_tokens  # the client's own number
    else:  # from an effort level: keep at least half of the client's limit for the answer
        budget = min(budget_for_effort((th.effort if th else None) or effort),
                     max(1024, max_tokens // 2))
    budget = max(1024, min(budget, max_tokens - 1))
    if budget >= max_tokens:
        return None
    return {"type": "enabled", "budget_tokens": budget}


# -- responses --------------------------------------------------------------------------------

def decode_response(doc: dict[str, Any]) -> Response:
    resp = Response(id=doc.get("id") or "", model=doc.get("model") or "",
                    finish=FINISH_IN.get(doc.get("stop_reason") or "end_turn", "end_turn"),
                    stop_sequence=doc.get("stop_sequence"),
                    usage=normalise_usage(DIALECT, doc.get("usage")))
    for b in doc.get("content") or []:
        p = _part(b, [])
        if isinstance(p, Text | ToolCall | Reasoning):
            resp.content.append(p)
    return resp


def wire_usage(u: Usage | None) -> dict[str, int]:
    u = u or Usage()
    return {"input_tokens": u.input_tokens, "cache_creation_input_tokens": u.cache_write_tokens,
            "cache_read_input_tokens": u.cache_read_tokens, "output_tokens": u.output_tokens}


def _client_reasoning(r: Reasoning) -> dict[str, Any]:
    if r.source == DIALECT:
        if r.redacted:
            return {"type": "redacted_thinking", "data": r.redacted}
        return {"type": "thinking", "thinking": r.text, "signature": r.signature or ""}
    # A foreign provider's reasoning: shown as thinking, its signature carried opaquely.
    return {"type": "thinking", "thinking": r.text, "signature": carry(r)}


def encode_response(resp: Response, *, model: str, request_id: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for p in resp.content:
        if isinstance(p, Reasoning):
            content.append(_client_reasoning(p))
        elif isinstance(p, ToolCall) and p.signature:
            content.append(_client_reasoning(Reasoning(signature=p.signature, source="gemini")))
            _encode_part(p, content)
        else:
            _encode_part(p, content)
    return {"id": resp.id if resp.id.startswith("msg_") else "msg_" + request_id,
            "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": FINISH_OUT.get(resp.finish, "end_turn"),
            "stop_sequence": resp.stop_sequence, "usage": wire_usage(resp.usage)}


# -- streams ----------------------------------------------------------------------------------

class StreamDecoder:
    """Anthropic SSE events -> common stream events."""

    def __init__(self) -> None:
        self.terminal = False
        self._kinds: dict[int, str] = {}
        self._usage: dict[str, Any] = {}

    def decode(self, event: str | None, doc: dict[str, Any]) -> list[StreamEvent]:
        kind = doc.get("type") or event
        if kind == "content_block_delta":
            idx = doc.get("index", 0)
            delta = doc.get("delta") or {}
            dt = delta.get("type")
            if dt == "text_delta":
                return [StreamText(text=delta.get("text") or "")]
            if dt == "input_json_delta":
                frag = delta.get("partial_json") or ""
                return [StreamToolArgs(key=idx, delta=frag)] if frag else []
            if dt == "thinking_delta":
                return [StreamReasoning(text=delta.get("thinking") or "")]
            if dt == "signature_delta":
                sig = delta.get("signature") or ""
                r = uncarry(sig)
                if r is not None:
                    return [StreamSignature(signature=r.signature, encrypted=r.encrypted,
                                            source=r.source, item_id=r.item_id)]
                return [StreamSignature(signature=sig, source=DIALECT)]
            return []
        if kind == "content_block_start":
            idx = doc.get("index", 0)
            block = doc.get("content_block") or {}
            bt = block.get("type") or ""
            self._kinds[idx] = bt
            if bt == "tool_use":
                # input:{} on the start event is a placeholder: args come from the deltas only.
                return [StreamToolStart(key=idx, id=block.get("id") or "",
                                        name=block.get("name") or "")]
            if bt == "text" and block.get("text"):
                return [StreamText(text=block["text"])]
            if bt == "thinking" and block.get("thinking"):
                return [StreamReasoning(text=block["thinking"])]
            if bt == "redacted_thinking":
                return [StreamSignature(redacted=block.get("data") or "", source=DIALECT)]
            return []
        if kind == "content_block_stop":
            idx = doc.get("index", 0)
            if self._kinds.get(idx) == "tool_use":
                return [StreamToolEnd(key=idx)]
            return []
        if kind == "message_start":
            msg = doc.get("message") or {}
            self._usage = dict(msg.get("usage") or {})
            return [StreamStart(id=msg.get("id"), model=msg.get("model"),
                                usage=normalise_usage(DIALECT, self._usage))]
        if kind == "message_delta":
            out: list[StreamEvent] = []
            if isinstance(doc.get("usage"), dict):
                self._usage.update(doc["usage"])  # cumulative
                u = normalise_usage(DIALECT, self._usage)
                if u is not None:
                    out.append(StreamUsage(usage=u))
            delta = doc.get("delta") or {}
            if delta.get("stop_reason"):
                out.append(StreamFinish(reason=FINISH_IN.get(delta["stop_reason"], "end_turn"),
                                        stop_sequence=delta.get("stop_sequence")))
            return out
        if kind == "message_stop":
            self.terminal = True
            return []
        if kind == "error":
            err = doc.get("error") or {}
            self.terminal = True
            return [StreamError(status=status_of_type(err.get("type")),
                                message=err.get("message") or "upstream error",
                                code=err.get("type"))]
        return []


class StreamEncoder:
    """Common stream events -> Anthropic SSE: one message_start, blocks opened and closed in
    order (a thinking block never receives text), message_delta + message_stop at the end."""

    def __init__(self, *, model: str, request_id: str) -> None:
        self.model = model
        self.id = "msg_" + request_id
        self._started = False
        self._next = 0
        self._cur: tuple[str, int] | None = None  # open text/thinking block
        self._tools: dict[int | str, int] = {}  # open tool_use blocks
        self._usage: Usage | None = None
        self._start_usage: Usage | None = None
        self._finish: StreamFinish | None = None

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        msg: dict[str, Any] = {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": wire_usage(self._start_usage)}
        return [_ev("message_start", {"type": "message_start", "message": msg})]

    def _close_cur(self) -> list[bytes]:
        if self._cur is None:
            return []
        idx = self._cur[1]
        self._cur = None
        return [_ev("content_block_stop", {"type": "content_block_stop", "index": idx})]

    def _close_all(self) -> list[bytes]:
        out = self._close_cur()
        for idx in self._tools.values():
            out.append(_ev("content_block_stop", {"type": "content_block_stop", "index": idx}))
        self._tools.clear()
        return out

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close_all()
        idx = self._next
        self._next += 1
        self._cur = (kind, idx)
        out.append(_ev("content_block_start",
                       {"type": "content_block_start", "index": idx, "content_block": block}))
        return out

    def encode(self, ev: StreamEvent) -> bytes:
        if isinstance(ev, StreamStart):
            self._start_usage = ev.usage
            return b"".join(self._start())
        out = self._start()
        if isinstance(ev, StreamText):
            if not ev.text:
                return b"".join(out)
            if self._cur is None or self._cur[0] != "text" or self._tools:
                out += self._open("text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": ev.text}))
        elif isinstance(ev, StreamReasoning):
            if not ev.text:
                return b"".join(out)
            if self._cur is None or self._cur[0] != "thinking" or self._tools:
                out += self._open("thinking", {"type": "thinking", "thinking": "",
                                               "signature": ""})
            out.append(self._delta({"type": "thinking_delta", "thinking": ev.text}))
        elif isinstance(ev, StreamSignature):
            out += self._signature(ev)
        elif isinstance(ev, StreamToolStart):
            if ev.signature:
                out += self._signature(StreamSignature(signature=ev.signature, source="gemini"))
            out += self._close_cur()
            idx = self._next
            self._next += 1
            self._tools[ev.key] = idx
            out.append(_ev("content_block_start", {
                "type": "content_block_start", "index": idx,
                "content_block": {"type": "tool_use", "id": ev.id, "name": ev.name,
                                  "input": {}}}))
        elif isinstance(ev, StreamToolArgs):
            idx2 = self._tools.get(ev.key)
            if idx2 is not None and ev.delta:
                out.append(_ev("content_block_delta", {
                    "type": "content_block_delta", "index": idx2,
                    "delta": {"type": "input_json_delta", "partial_json": ev.delta}}))
        elif isinstance(ev, StreamToolEnd):
            idx3 = self._tools.pop(ev.key, None)
            if idx3 is not None:
                out.append(_ev("content_block_stop",
                               {"type": "content_block_stop", "index": idx3}))
        elif isinstance(ev, StreamUsage):
            self._usage = ev.usage
        elif isinstance(ev, StreamFinish):
            self._finish = ev
        return b"".join(out)

    def _signature(self, ev: StreamSignature) -> list[bytes]:
        out: list[bytes] = []
        if ev.source == DIALECT and ev.redacted:
            out += self._open("redacted", {"type": "redacted_thinking", "data": ev.redacted})
            return out + self._close_cur()
        if ev.source == DIALECT:
            sig = ev.signature or ""
        else:
            sig = carry(Reasoning(signature=ev.signature, encrypted=ev.encrypted,
                                  redacted=ev.redacted, source=ev.source, item_id=ev.item_id))
        if self._cur is None or self._cur[0] != "thinking" or self._tools:
            out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        out.append(self._delta({"type": "signature_delta", "signature": sig}))
        return out + self._close_cur()

    def _delta(self, delta: dict[str, Any]) -> bytes:
        assert self._cur is not None
        return _ev("content_block_delta",
                   {"type": "content_block_delta", "index": self._cur[1], "delta": delta})

    def close(self) -> bytes:
        out = self._start() + self._close_all()
        fin = self._finish or StreamFinish(reason="end_turn")
        usage = self._usage or self._start_usage
        out.append(_ev("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": FINISH_OUT.get(fin.reason, "end_turn"),
                      "stop_sequence": fin.stop_sequence},
            "usage": wire_usage(usage)}))
        out.append(_ev("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def fail(self, status: int, message: str) -> bytes:
        out = self._start() + self._close_all()
        out.append(_ev("error", {"type": "error", "error": {"type": anthropic_type(status),
                                                           "message": message}}))
        return b"".join(out)


def _ev(name: str, doc: dict[str, Any]) -> bytes:
    return encode_event(dumps(doc), name)
