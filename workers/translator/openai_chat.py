"""OpenAI Chat Completions <-> common form: requests, responses, stream events.

Finish reasons (finish_reason):
    in:  stop -> end_turn (tool_use when the message has tool calls); length -> max_tokens;
         tool_calls, function_call -> tool_use; content_filter -> refusal;
         a compat provider's Anthropic-style value (end_turn, max_tokens...) -> itself;
         anything else -> end_turn (documented fallback)
    out: end_turn, stop_sequence -> stop; max_tokens, pause_turn, context_window -> length;
         tool_use -> tool_calls; refusal, other -> content_filter;
         malformed_tool_call -> upstream error (502), never a silent stop
Reasoning: no official field; ``reasoning_content`` (DeepSeek-style) is read and written so it
never becomes visible text.
"""

from __future__ import annotations

import time
from typing import Any

from schemas.errors import error_body
from schemas.events import Usage

from ._util import data_url, dumps, new_id, opaque_user, parse_data_url
from .anthropic import FINISH_IN as _ANTHROPIC_FINISH
from .common import (
    Image,
    Message,
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
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
    TranslationError,
)
from .sse import encode_event
from .usage import normalise_usage

DIALECT = "openai-chat"

FINISH_IN = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
             "function_call": "tool_use", "content_filter": "refusal"}
FINISH_OUT = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
              "pause_turn": "length", "context_window": "length", "tool_use": "tool_calls",
              "refusal": "content_filter", "other": "content_filter"}
_DROPPED = ("frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs",
            "modalities", "audio", "prediction", "web_search_options", "store")


def finish_in(value: str | None) -> str:
    if not value:
        return "end_turn"
    return FINISH_IN.get(value) or _ANTHROPIC_FINISH.get(value) or "end_turn"


# -- requests ---------------------------------------------------------------------------------

def _content(content: Any) -> list[Text | Image]:
    if isinstance(content, str):
        return [Text(text=content)]
    out: list[Text | Image] = []
    for p in content or []:
        kind = p.get("type")
        if kind in ("text", "input_text", "output_text", "refusal"):
            out.append(Text(text=p.get("text") or p.get("refusal") or ""))
        elif kind == "image_url":
            iu = p.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            img = parse_data_url(url or "")
            if isinstance(iu, dict):
                img.detail = iu.get("detail")
            out.append(img)
        elif kind == "file":
            f = p.get("file") or {}
            if f.get("file_data"):
                out.append(parse_data_url(f["file_data"]))
            elif f.get("file_id"):
                out.append(Image(file_id=f["file_id"]))
    return out


def decode_request(doc: dict[str, Any]) -> Request:
    if (doc.get("n") or 1) > 1:
        raise TranslationError("n > 1 (several choices) cannot be translated to this provider")
    req = Request(model=doc.get("model") or "", stream=bool(doc.get("stream")))
    tool_msg: Message | None = None
    for m in doc.get("messages") or []:
        role = m.get("role") or "user"
        if role in ("tool", "function"):
            content = _content(m.get("content"))
            result = ToolResult(call_id=m.get("tool_call_id") or m.get("name") or "",
                                content=content, name=m.get("name"))
            if tool_msg is None:  # consecutive tool messages are one turn of results
                tool_msg = Message(role="user", parts=[])
                req.messages.append(tool_msg)
            tool_msg.parts.append(result)
            continue
        tool_msg = None
        parts: list[Any] = []
        if role == "assistant" and m.get("reasoning_content"):
            parts.append(Reasoning(text=m["reasoning_content"], source=DIALECT))
        parts += _content(m.get("content"))
        if m.get("refusal"):
            parts.append(Text(text=m["refusal"]))
        for tc in m.get("tool_calls") or []:
            if tc.get("type") == "custom":
                c = tc.get("custom") or {}
                parts.append(ToolCall(id=tc.get("id") or "", name=c.get("name") or "",
                                      arguments=dumps({"input": c.get("input") or ""}).decode(),
                                      kind="custom"))
            else:
                f = tc.get("function") or {}
                parts.append(ToolCall(id=tc.get("id") or "", name=f.get("name") or "",
                                      arguments=f.get("arguments") or ""))
        if m.get("function_call"):
            f = m["function_call"]
            parts.append(ToolCall(id=f.get("name") or "", name=f.get("name") or "",
                                  arguments=f.get("arguments") or ""))
        req.messages.append(Message(role=role, parts=parts))
    for t in doc.get("tools") or []:
        if t.get("type") == "custom":
            c = t.get("custom") or {}
            req.tools.append(Tool(name=c.get("name") or "", description=c.get("description"),
                                  kind="custom", extra={"format": c.get("format")}))
        else:
            f = t.get("function") or {}
            req.tools.append(Tool(name=f.get("name") or "", description=f.get("description"),
                                  parameters=f.get("parameters"), strict=f.get("strict")))
    req.tool_choice = decode_tool_choice(doc.get("tool_choice"))
    req.parallel_tool_calls = doc.get("parallel_tool_calls")
    req.max_tokens = doc.get("max_completion_tokens") or doc.get("max_tokens")
    req.temperature = doc.get("temperature")
    req.top_p = doc.get("top_p")
    stop = doc.get("stop")
    req.stop = [stop] if isinstance(stop, str) else (stop or None)
    req.reasoning_effort = doc.get("reasoning_effort")
    rf = doc.get("response_format")
    if isinstance(rf, dict) and rf.get("type") in ("json_schema", "json_object"):
        js = rf.get("json_schema") or {}
        req.response_format = ResponseFormat(type=rf["type"], schema=js.get("schema"),
                                             name=js.get("name"), strict=js.get("strict"))
    req.user = doc.get("user") or doc.get("safety_identifier")
    req.seed = doc.get("seed")
    req.service_tier = doc.get("service_tier")
    req.prompt_cache_key = doc.get("prompt_cache_key")
    req.verbosity = doc.get("verbosity")
    req.metadata = doc.get("metadata")
    req.dropped += [k for k in _DROPPED if k in doc]
    return req


def decode_tool_choice(tc: Any) -> ToolChoice | None:
    if isinstance(tc, str):
        return ToolChoice(mode=tc if tc in ("auto", "none", "required") else "auto")
    if isinstance(tc, dict):
        name = (tc.get("function") or tc.get("custom") or {}).get("name") or tc.get("name")
        if name:
            return ToolChoice(mode="tool", name=name)
        if tc.get("type") == "allowed_tools":
            return ToolChoice(mode=(tc.get("allowed_tools") or {}).get("mode") or "auto")
    return None


def _image_part(p: Image) -> dict[str, Any]:
    if p.media_type and not p.media_type.startswith("image/"):
        f: dict[str, Any] = {"file_id": p.file_id} if p.file_id else {"file_data": data_url(p)}
        return {"type": "file", "file": f}
    iu: dict[str, Any] = {"url": data_url(p) or p.file_id or ""}
    if p.detail:
        iu["detail"] = p.detail
    return {"type": "image_url", "image_url": iu}


def _user_content(parts: list[Any]) -> str | list[dict[str, Any]]:
    if all(isinstance(p, Text) for p in parts):
        return "".join(p.text for p in parts)
    return [{"type": "text", "text": p.text} if isinstance(p, Text) else _image_part(p)
            for p in parts if isinstance(p, Text | Image)]


def encode_request(req: Request, *, model: str, stream: bool) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": "\n\n".join(t.text for t in req.system)})
    for m in req.messages:
        if m.role in ("system", "developer"):
            messages.append({"role": m.role, "content": "".join(
                p.text for p in m.parts if isinstance(p, Text))})
        elif m.role == "assistant":
            text = "".join(p.text for p in m.parts if isinstance(p, Text))
            msg: dict[str, Any] = {"role": "assistant", "content": text or None}
            calls = [_tool_call(p) for p in m.parts if isinstance(p, ToolCall)]
            if calls:
                msg["tool_calls"] = calls
                # DeepSeek/Kimi thinking mode: the reasoning of a tool-call turn must come back
                # as reasoning_content, or the next request is a 400. Only unsigned reasoning
                # text (what a Chat provider produced); signed or encrypted reasoning belongs
                # to another provider.
                reasoning = "".join(p.text for p in m.parts
                                    if isinstance(p, Reasoning) and p.text and _unsigned(p))
                if reasoning:
                    msg["reasoning_content"] = reasoning
            if not text and not calls:
                continue
            messages.append(msg)
        else:
            images: list[Image] = []
            for p in m.parts:
                if isinstance(p, ToolResult):  # one tool message per call
                    body = "".join(q.text for q in p.content if isinstance(q, Text))
                    images += [q for q in p.content if isinstance(q, Image)]
                    if p.is_error:
                        body = "Error: " + body if body else "Error"
                    messages.append({"role": "tool", "tool_call_id": p.call_id,
                                     "content": body})
            rest = [p for p in m.parts if isinstance(p, Text | Image)] + images
            if rest:
                messages.append({"role": "user", "content": _user_content(rest)})
    doc: dict[str, Any] = {"model": model, "messages": messages}
    if req.tools:
        doc["tools"] = [_tool(t) for t in req.tools]
    if req.tool_choice is not None:
        tc = req.tool_choice
        doc["tool_choice"] = ({"type": "function", "function": {"name": tc.name}}
                              if tc.mode == "tool" else tc.mode)
    if req.parallel_tool_calls is not None and req.tools:
        doc["parallel_tool_calls"] = req.parallel_tool_calls
    if req.max_tokens is not None:
        doc["max_completion_tokens"] = req.max_tokens
    for key in ("temperature", "top_p", "seed", "service_tier", "prompt_cache_key", "verbosity"):
        value = getattr(req, key)
        if value is not None:
            doc[key] = value
    if req.user:
        doc["user"] = opaque_user(req.user)
    if req.stop:
        doc["stop"] = req.stop[:4]
    effort = req.reasoning_effort or (req.thinking.effort if req.thinking else None)
    if effort:
        doc["reasoning_effort"] = effort
        # OpenAI's reasoning models reject sampling parameters next to reasoning_effort (400)
        for key in ("temperature", "top_p"):
            if doc.pop(key, None) is not None:
                req.dropped.append(f"{key} (reasoning_effort set)")
    rf = req.response_format
    if rf is not None:
        if rf.type == "json_schema":
            js: dict[str, Any] = {"name": rf.name or "response", "schema": rf.schema or {}}
            if rf.strict is not None:
                js["strict"] = rf.strict
            doc["response_format"] = {"type": "json_schema", "json_schema": js}
        else:
            doc["response_format"] = {"type": rf.type}
    if stream:
        doc["stream"] = True
        doc["stream_options"] = {"include_usage": True}
    return doc


def _unsigned(r: Reasoning) -> bool:
    return r.source == DIALECT or not (r.signature or r.encrypted or r.redacted)


def _tool(t: Tool) -> dict[str, Any]:
    if t.kind == "custom":  # free-form tools become a function with one string argument
        params: dict[str, Any] = {"type": "object", "properties": {"input": {
            "type": "string", "description": "The raw tool input."}}, "required": ["input"]}
    else:
        params = t.parameters or {"type": "object", "properties": {}}
    f: dict[str, Any] = {"name": t.name, "parameters": params}
    if t.description:
        f["description"] = t.description
    if t.strict is not None and t.kind != "custom":
        f["strict"] = t.strict
    return {"type": "function", "function": f}


def _tool_call(p: ToolCall) -> dict[str, Any]:
    return {"id": p.id, "type": "function",
            "function": {"name": p.name, "arguments": p.arguments or "{}"}}


# -- responses --------------------------------------------------------------------------------

def decode_response(doc: dict[str, Any]) -> Response:
    choices = doc.get("choices") or [{}]
    choice = choices[0]
    msg = choice.get("message") or {}
    resp = Response(id=doc.get("id") or "", model=doc.get("model") or "",
                    usage=normalise_usage(DIALECT, doc.get("usage")), created=doc.get("created"))
    if msg.get("reasoning_content"):
        resp.content.append(Reasoning(text=msg["reasoning_content"], source=DIALECT))
    for p in _content(msg.get("content")):
        if isinstance(p, Text):
            resp.content.append(p)
    if msg.get("refusal"):
        resp.content.append(Text(text=msg["refusal"]))
    for tc in msg.get("tool_calls") or []:
        f = tc.get("function") or tc.get("custom") or {}
        resp.content.append(ToolCall(id=tc.get("id") or new_id("call_"), name=f.get("name") or "",
                                     arguments=f.get("arguments") or ""))
    resp.finish = "refusal" if msg.get("refusal") else finish_in(choice.get("finish_reason"))
    return resp


def wire_usage(u: Usage | None) -> dict[str, Any]:
    u = u or Usage()
    details: dict[str, int] = {"cached_tokens": u.cache_read_tokens}
    if u.cache_write_tokens:
        details["cache_write_tokens"] = u.cache_write_tokens
    return {"prompt_tokens": u.total_input_tokens, "completion_tokens": u.output_tokens,
            "total_tokens": u.total_tokens, "prompt_tokens_details": details,
            "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens}}


def encode_response(resp: Response, *, model: str, request_id: str) -> dict[str, Any]:
    text = "".join(p.text for p in resp.content if isinstance(p, Text))
    msg: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    reasoning = "".join(p.text for p in resp.content if isinstance(p, Reasoning))
    if reasoning:
        msg["reasoning_content"] = reasoning
    calls = [_tool_call(p) for p in resp.content if isinstance(p, ToolCall)]
    if calls:
        msg["tool_calls"] = calls
    return {"id": "chatcmpl-" + request_id, "object": "chat.completion",
            "created": resp.created or int(time.time()), "model": model,
            "choices": [{"index": 0, "message": msg, "logprobs": None,
                         "finish_reason": FINISH_OUT.get(resp.finish, "stop")}],
            "usage": wire_usage(resp.usage)}


# -- streams ----------------------------------------------------------------------------------

class StreamDecoder:
    """Chat chunks -> common stream events. Tool calls are keyed by their ``index``; a first
    fragment without a name is held until the name arrives (an id is made up if none comes)."""

    def __init__(self) -> None:
        self.terminal = False
        self._started = False
        self._tools: dict[int, str | None] = {}  # index -> id once started
        self._held: dict[int, dict[str, str]] = {}

    def decode(self, event: str | None, doc: Any) -> list[StreamEvent]:
        if doc == "[DONE]":
            self.terminal = True
            return self._end_tools()
        if not isinstance(doc, dict):
            return []
        if isinstance(doc.get("error"), dict) and "choices" not in doc:
            err = doc["error"]
            self.terminal = True
            status = err.get("code") if isinstance(err.get("code"), int) else 500
            return [StreamError(status=status, message=str(err.get("message") or "error"),
                                code=err.get("type"))]
        out: list[StreamEvent] = []
        if not self._started:
            self._started = True
            out.append(StreamStart(id=doc.get("id"), model=doc.get("model")))
        for choice in doc.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            rc = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(rc, str) and rc:
                out.append(StreamReasoning(text=rc))
            if delta.get("content"):
                out.append(StreamText(text=delta["content"]))
            if delta.get("refusal"):
                out.append(StreamText(text=delta["refusal"]))
            for pos, tc in enumerate(delta.get("tool_calls") or []):
                out += self._tool(tc, pos)
            if choice.get("finish_reason"):
                out += self._end_tools()
                reason = "refusal" if delta.get("refusal") else finish_in(choice["finish_reason"])
                out.append(StreamFinish(reason=reason))
        if isinstance(doc.get("usage"), dict):
            u = normalise_usage(DIALECT, doc["usage"])
            if u is not None:
                out.append(StreamUsage(usage=u))
        return out

    def _tool(self, tc: dict[str, Any], pos: int) -> list[StreamEvent]:
        idx = tc.get("index", pos)
        f = tc.get("function") or {}
        args = f.get("arguments") or ""
        if idx in self._tools:
            return [StreamToolArgs(key=idx, delta=args)] if args else []
        held = self._held.setdefault(idx, {"id": "", "name": "", "args": ""})
        held["id"] = held["id"] or tc.get("id") or ""
        held["name"] += f.get("name") or ""
        held["args"] += args
        if not held["name"]:
            return []
        del self._held[idx]
        tid = held["id"] or new_id("call_")
        self._tools[idx] = tid
        out: list[StreamEvent] = [StreamToolStart(key=idx, id=tid, name=held["name"])]
        if held["args"]:
            out.append(StreamToolArgs(key=idx, delta=held["args"]))
        return out

    def _end_tools(self) -> list[StreamEvent]:
        out: list[StreamEvent] = [StreamToolEnd(key=k) for k, v in self._tools.items() if v]
        for k in self._tools:
            self._tools[k] = None
        return out


class StreamEncoder:
    """Common stream events -> Chat chunks, then the finish chunk, the usage chunk
    (when the client asked for it) and ``data: [DONE]``."""

    def __init__(self, *, model: str, request_id: str, include_usage: bool = True) -> None:
        self.model = model
        self.id = "chatcmpl-" + request_id
        self.created = int(time.time())
        self.include_usage = include_usage
        self._started = False
        self._tools: dict[int | str, int] = {}
        self._usage: Usage | None = None
        self._finish: StreamFinish | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        doc = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
               "model": self.model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                 "finish_reason": finish}]}
        return encode_event(dumps(doc))

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._chunk({"role": "assistant", "content": ""})

    def encode(self, ev: StreamEvent) -> bytes:
        if isinstance(ev, StreamUsage):
            self._usage = ev.usage
            return b""
        if isinstance(ev, StreamFinish):
            self._finish = ev
            return b""
        if isinstance(ev, StreamStart):
            if ev.usage is not None:
                self._usage = ev.usage
            return self._start()
        head = self._start()
        if isinstance(ev, StreamText) and ev.text:
            return head + self._chunk({"content": ev.text})
        if isinstance(ev, StreamReasoning) and ev.text:
            return head + self._chunk({"reasoning_content": ev.text})
        if isinstance(ev, StreamToolStart):
            n = len(self._tools)
            self._tools[ev.key] = n
            return head + self._chunk({"tool_calls": [{
                "index": n, "id": ev.id, "type": "function",
                "function": {"name": ev.name, "arguments": ""}}]})
        if isinstance(ev, StreamToolArgs) and ev.key in self._tools and ev.delta:
            return head + self._chunk({"tool_calls": [{
                "index": self._tools[ev.key], "function": {"arguments": ev.delta}}]})
        if isinstance(ev, StreamSignature | StreamToolEnd):
            return head
        return head

    def close(self) -> bytes:
        fin = self._finish or StreamFinish(reason="end_turn")
        out = [self._start(), self._chunk({}, FINISH_OUT.get(fin.reason, "stop"))]
        if self.include_usage and self._usage is not None:
            doc = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                   "model": self.model, "choices": [], "usage": wire_usage(self._usage)}
            out.append(encode_event(dumps(doc)))
        out.append(b"data: [DONE]\n\n")
        return b"".join(out)

    def fail(self, status: int, message: str) -> bytes:
        return b"data: " + error_body(DIALECT, status, message) + b"\n\n"
