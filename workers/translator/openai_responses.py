"""OpenAI Responses <-> common form: requests, responses, stream events. Served statelessly.

Finish reasons (status / incomplete_details.reason):
    in:  completed -> end_turn (tool_use when function calls are in the output);
         incomplete+max_output_tokens (or "max_tokens") -> max_tokens;
         incomplete+content_filter -> refusal; failed / cancelled -> upstream error
    out: end_turn, stop_sequence, tool_use -> completed; max_tokens, pause_turn,
         context_window -> incomplete(max_output_tokens); refusal, other ->
         incomplete(content_filter); malformed_tool_call -> upstream error (502)
"""

from __future__ import annotations

import json
import time
from typing import Any

from schemas.errors import stream_error
from schemas.events import Usage

from ._util import (
    carry,
    data_url,
    dumps,
    effort_for_budget,
    new_id,
    opaque_user,
    parse_args,
    parse_data_url,
    uncarry,
)
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
    Thinking,
    Tool,
    ToolCall,
    ToolResult,
    TranslationError,
)
from .openai_chat import decode_tool_choice
from .sse import encode_event
from .usage import normalise_usage

DIALECT = "openai-responses"

_INCOMPLETE_IN = {"max_output_tokens": "max_tokens", "max_tokens": "max_tokens",
                  "content_filter": "refusal"}
_STATUS_OUT = {"end_turn": ("completed", None), "stop_sequence": ("completed", None),
               "tool_use": ("completed", None),
               "max_tokens": ("incomplete", "max_output_tokens"),
               "pause_turn": ("incomplete", "max_output_tokens"),
               "context_window": ("incomplete", "max_output_tokens"),
               "refusal": ("incomplete", "content_filter"),
               "other": ("incomplete", "content_filter")}
_HOSTED_TOOLS = ("web_search", "web_search_preview", "tool_search", "file_search",
                 "code_interpreter", "image_generation", "local_shell", "computer_use_preview",
                 "mcp")
_DROPPED = ("truncation", "include", "store", "background", "top_logprobs", "max_tool_calls")


def finish_in(resp: dict[str, Any]) -> str:
    status = resp.get("status") or "completed"
    if status == "incomplete":
        reason = (resp.get("incomplete_details") or {}).get("reason")
        return _INCOMPLETE_IN.get(reason or "", "max_tokens")
    if status in ("failed", "cancelled"):
        raise TranslationError(
            str((resp.get("error") or {}).get("message") or f"upstream response {status}"), 502)
    return "end_turn"


# -- requests ---------------------------------------------------------------------------------

def _content(content: Any) -> list[Text | Image]:
    if isinstance(content, str):
        return [Text(text=content)]
    out: list[Text | Image] = []
    for p in content or []:
        kind = p.get("type")
        if kind in ("input_text", "output_text", "text", "summary_text"):
            out.append(Text(text=p.get("text") or ""))
        elif kind == "refusal":
            out.append(Text(text=p.get("refusal") or ""))
        elif kind == "input_image":
            if p.get("file_id"):
                out.append(Image(file_id=p["file_id"], detail=p.get("detail")))
            else:
                url = p.get("image_url")
                img = parse_data_url(str((url.get("url") if isinstance(url, dict) else url) or ""))
                img.detail = p.get("detail")
                out.append(img)
        elif kind == "input_file":
            if p.get("file_data"):
                out.append(parse_data_url(p["file_data"]))
            elif p.get("file_id") or p.get("file_url"):
                out.append(Image(file_id=p.get("file_id"), url=p.get("file_url")))
    return out


def decode_request(doc: dict[str, Any]) -> Request:
    if doc.get("previous_response_id") or doc.get("conversation"):
        raise TranslationError(
            "previous_response_id/conversation are not supported: this gateway serves the "
            "Responses API statelessly; send the whole history in input (store: false)")
    req = Request(model=doc.get("model") or "", stream=bool(doc.get("stream")))
    if doc.get("instructions"):
        req.system.append(Text(text=doc["instructions"]))
    items = doc.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]

    def turn(role: str) -> Message:
        if req.messages and req.messages[-1].role == role and role in ("assistant", "user"):
            return req.messages[-1]
        m = Message(role=role, parts=[])
        req.messages.append(m)
        return m

    for it in items or []:
        kind = it.get("type") or "message"
        if kind == "message":
            role = it.get("role") or "user"
            parts = _content(it.get("content"))
            if role in ("system", "developer"):
                req.messages.append(Message(role=role, parts=list(parts)))
            else:
                turn(role).parts.extend(parts)
        elif kind == "function_call":
            turn("assistant").parts.append(ToolCall(
                id=it.get("call_id") or it.get("id") or "", name=it.get("name") or "",
                arguments=it.get("arguments") or "", item_id=it.get("id")))
        elif kind == "custom_tool_call":
            turn("assistant").parts.append(ToolCall(
                id=it.get("call_id") or "", name=it.get("name") or "", kind="custom",
                arguments=dumps({"input": it.get("input") or ""}).decode(),
                item_id=it.get("id")))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            out = it.get("output")
            turn("user").parts.append(ToolResult(
                call_id=it.get("call_id") or "", content=_content(out),
                kind="custom" if kind.startswith("custom") else "function"))
        elif kind == "reasoning":
            text = "\n\n".join(s.get("text") or "" for s in it.get("summary") or [])
            if not text:
                text = "".join(c.get("text") or "" for c in it.get("content") or [])
            r = uncarry(it.get("encrypted_content"), text)
            if r is None:
                r = Reasoning(text=text, encrypted=it.get("encrypted_content"),
                              item_id=it.get("id"), source=DIALECT)
            turn("assistant").parts.append(r)
        elif kind == "item_reference":
            raise TranslationError("item_reference needs stored state; send the full item")
        else:
            req.dropped.append(f"input item {kind}")
    for t in doc.get("tools") or []:
        _decode_tool(t, req)
    req.tool_choice = decode_tool_choice(doc.get("tool_choice"))
    req.parallel_tool_calls = doc.get("parallel_tool_calls")
    req.max_tokens = doc.get("max_output_tokens")
    req.temperature = doc.get("temperature")
    req.top_p = doc.get("top_p")
    reasoning = doc.get("reasoning")
    if isinstance(reasoning, dict) and (reasoning.get("effort") or reasoning.get("summary")):
        effort = reasoning.get("effort")
        if effort != "none":
            req.thinking = Thinking(effort=effort, summary=reasoning.get("summary"))
        req.reasoning_effort = effort
    text_cfg = doc.get("text")
    if isinstance(text_cfg, dict):
        fmt = text_cfg.get("format") or {}
        if fmt.get("type") in ("json_schema", "json_object"):
            req.response_format = ResponseFormat(type=fmt["type"], schema=fmt.get("schema"),
                                                 name=fmt.get("name"), strict=fmt.get("strict"))
        req.verbosity = text_cfg.get("verbosity")
    req.user = doc.get("user") or doc.get("safety_identifier")
    req.service_tier = doc.get("service_tier")
    req.prompt_cache_key = doc.get("prompt_cache_key")
    req.metadata = doc.get("metadata")
    req.dropped += [k for k in _DROPPED if k in doc]
    return req


def _decode_tool(t: dict[str, Any], req: Request) -> None:
    kind = t.get("type")
    if kind == "function":
        req.tools.append(Tool(name=t.get("name") or "", description=t.get("description"),
                              parameters=t.get("parameters"), strict=t.get("strict")))
    elif kind == "custom":
        req.tools.append(Tool(name=t.get("name") or "", description=t.get("description"),
                              kind="custom", extra={"format": t.get("format")}))
    elif kind == "namespace":
        # Codex groups tools ({"type":"namespace","name":"multi_agent_v1","tools":[...]}).
        # Other dialects get the inner tools flat; the group name is kept so the calls going
        # back to the client carry "namespace" (without it Codex answers "unsupported call").
        start = len(req.tools)
        for inner in t.get("tools") or []:
            _decode_tool(inner, req)
        for tool in req.tools[start:]:
            tool.namespace = tool.namespace or t.get("name")
    else:
        req.dropped.append(f"hosted tool {kind}")


def _input_content(parts: list[Any], role: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, Text):
            out.append({"type": "output_text" if role == "assistant" else "input_text",
                        "text": p.text})
        elif isinstance(p, Image):
            if p.media_type and not p.media_type.startswith("image/"):
                out.append({"type": "input_file", "file_data": data_url(p)} if p.data
                           else {"type": "input_file", "file_id": p.file_id})
            elif p.file_id and not p.url and p.data is None:
                out.append({"type": "input_image", "file_id": p.file_id,
                            "detail": p.detail or "auto"})
            else:
                out.append({"type": "input_image", "image_url": data_url(p),
                            "detail": p.detail or "auto"})
    return out


def encode_request(req: Request, *, model: str, stream: bool) -> dict[str, Any]:
    if req.stop:
        raise TranslationError("stop sequences cannot be sent to an OpenAI Responses provider "
                               "(the Responses API has no stop parameter)")
    items: list[dict[str, Any]] = []
    for m in req.messages:
        if m.role in ("system", "developer"):
            items.append({"type": "message", "role": m.role,
                          "content": _input_content(m.parts, m.role)})
            continue
        if m.role == "assistant":
            _assistant_items(m, items)
            continue
        for p in m.parts:
            if isinstance(p, ToolResult):
                body: Any = "".join(q.text for q in p.content if isinstance(q, Text))
                if any(isinstance(q, Image) for q in p.content):
                    body = _input_content(p.content, "user")
                elif p.is_error:
                    body = "Error: " + body if body else "Error"
                items.append({"type": "custom_tool_call_output" if p.kind == "custom"
                              else "function_call_output", "call_id": p.call_id,
                              "output": body})
        rest = [p for p in m.parts if isinstance(p, Text | Image)]
        if rest:
            items.append({"type": "message", "role": "user",
                          "content": _input_content(rest, "user")})
    doc: dict[str, Any] = {"model": model, "input": items, "store": False}
    if req.system:
        doc["instructions"] = "\n\n".join(t.text for t in req.system)
    if req.tools:
        doc["tools"] = [_tool(t) for t in req.tools]
    if req.tool_choice is not None:
        tc = req.tool_choice
        doc["tool_choice"] = {"type": "function", "name": tc.name} if tc.mode == "tool" \
            else tc.mode
    if req.parallel_tool_calls is not None and req.tools:
        doc["parallel_tool_calls"] = req.parallel_tool_calls
    if req.max_tokens is not None:
        doc["max_output_tokens"] = req.max_tokens
    for key in ("temperature", "top_p", "service_tier", "prompt_cache_key", "metadata"):
        value = getattr(req, key)
        if value is not None:
            doc[key] = value
    if req.user:
        doc["user"] = opaque_user(req.user)
    effort = req.reasoning_effort or (req.thinking.effort if req.thinking else None)
    if (req.thinking is not None and req.thinking.enabled) or effort:
        # OpenAI's reasoning models reject sampling parameters next to reasoning (400)
        for key in ("temperature", "top_p"):
            if doc.pop(key, None) is not None:
                req.dropped.append(f"{key} (reasoning on)")
        r: dict[str, Any] = {}
        if effort:
            r["effort"] = effort
        elif req.thinking and req.thinking.budget_tokens:
            r["effort"] = effort_for_budget(req.thinking.budget_tokens)
        if req.thinking is not None and (req.thinking.summary or req.thinking.include_thoughts):
            r["summary"] = req.thinking.summary or "auto"
        doc["reasoning"] = r
        doc["include"] = ["reasoning.encrypted_content"]
    text: dict[str, Any] = {}
    rf = req.response_format
    if rf is not None:
        if rf.type == "json_schema":
            text["format"] = {"type": "json_schema", "name": rf.name or "response",
                              "schema": rf.schema or {}}
            if rf.strict is not None:
                text["format"]["strict"] = rf.strict
        else:
            text["format"] = {"type": rf.type}
    if req.verbosity:
        text["verbosity"] = req.verbosity
    if text:
        doc["text"] = text
    if stream:
        doc["stream"] = True
    return doc


def _assistant_items(m: Message, items: list[dict[str, Any]]) -> None:
    texts: list[str] = []

    def flush() -> None:
        if texts and "".join(texts):
            items.append({"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "".join(texts)}]})
        texts.clear()

    for p in m.parts:
        if isinstance(p, Text):
            texts.append(p.text)
            continue
        flush()
        if isinstance(p, ToolCall):
            if p.kind == "custom":
                args = parse_args(p.arguments) or {}
                items.append({"type": "custom_tool_call", "call_id": p.id, "name": p.name,
                              "input": str(args.get("input", ""))})
            else:
                items.append({"type": "function_call", "call_id": p.id, "name": p.name,
                              "arguments": p.arguments or "{}"})
        elif isinstance(p, Reasoning) and p.source == DIALECT and p.encrypted:
            items.append({"type": "reasoning", "summary": [
                {"type": "summary_text", "text": p.text}] if p.text else [],
                "encrypted_content": p.encrypted})
    flush()


def _tool(t: Tool) -> dict[str, Any]:
    if t.kind == "custom":
        out: dict[str, Any] = {"type": "custom", "name": t.name}
        if t.description:
            out["description"] = t.description
        if t.extra and t.extra.get("format"):
            out["format"] = t.extra["format"]
        return out
    out = {"type": "function", "name": t.name,
           "parameters": t.parameters or {"type": "object", "properties": {}}}
    if t.description:
        out["description"] = t.description
    if t.strict is not None:
        out["strict"] = t.strict
    return out


# -- responses --------------------------------------------------------------------------------

def _item_reasoning(it: dict[str, Any]) -> Reasoning:
    text = "\n\n".join(s.get("text") or "" for s in it.get("summary") or [])
    if not text:
        text = "".join(c.get("text") or "" for c in it.get("content") or [])
    return Reasoning(text=text, encrypted=it.get("encrypted_content"), item_id=it.get("id"),
                     source=DIALECT)


def decode_response(doc: dict[str, Any]) -> Response:
    resp = Response(id=doc.get("id") or "", model=doc.get("model") or "",
                    usage=normalise_usage(DIALECT, doc.get("usage")),
                    created=doc.get("created_at"), finish=finish_in(doc))
    for it in doc.get("output") or []:
        kind = it.get("type")
        if kind == "message":
            for c in it.get("content") or []:
                if c.get("type") == "refusal":
                    resp.finish = "refusal"
                    resp.content.append(Text(text=c.get("refusal") or ""))
                elif c.get("type") == "output_text":
                    resp.content.append(Text(text=c.get("text") or ""))
        elif kind == "function_call":
            resp.content.append(ToolCall(id=it.get("call_id") or "", name=it.get("name") or "",
                                         arguments=it.get("arguments") or "",
                                         item_id=it.get("id")))
        elif kind == "custom_tool_call":
            resp.content.append(ToolCall(
                id=it.get("call_id") or "", name=it.get("name") or "", kind="custom",
                arguments=dumps({"input": it.get("input") or ""}).decode()))
        elif kind == "reasoning":
            resp.content.append(_item_reasoning(it))
    return resp


def wire_usage(u: Usage | None) -> dict[str, Any]:
    u = u or Usage()
    details: dict[str, int] = {"cached_tokens": u.cache_read_tokens}
    if u.cache_write_tokens:
        details["cache_write_tokens"] = u.cache_write_tokens
    return {"input_tokens": u.total_input_tokens, "input_tokens_details": details,
            "output_tokens": u.output_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.total_tokens}


def _reasoning_item(r: Reasoning, item_id: str) -> dict[str, Any]:
    enc = r.encrypted if r.source == DIALECT else carry(r)
    item: dict[str, Any] = {"id": r.item_id if r.source == DIALECT and r.item_id else item_id,
                            "type": "reasoning",
                            "summary": [{"type": "summary_text", "text": r.text}] if r.text
                            else []}
    if enc:
        item["encrypted_content"] = enc
    return item


def _call_item(p: ToolCall, status: str = "completed") -> dict[str, Any]:
    if p.kind == "custom":
        args = parse_args(p.arguments) or {}
        return {"type": "custom_tool_call", "id": "ctc_" + p.id.removeprefix("call_"),
                "status": status, "call_id": p.id, "name": p.name,
                "input": str(args.get("input", ""))}
    item = {"type": "function_call", "id": p.item_id or "fc_" + p.id.removeprefix("call_"),
            "status": status, "arguments": p.arguments or "{}", "call_id": p.id,
            "name": p.name}
    if p.namespace:
        item["namespace"] = p.namespace
    return item


def _response_doc(rid: str, model: str, created: int, status: str, reason: str | None,
                  output: list[dict[str, Any]], usage: Usage | None) -> dict[str, Any]:
    return {"id": rid, "object": "response", "created_at": created, "status": status,
            "error": None, "incomplete_details": {"reason": reason} if reason else None,
            "instructions": None, "model": model, "output": output,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": wire_usage(usage) if usage is not None or status != "in_progress"
            else None}


def encode_response(resp: Response, *, model: str, request_id: str) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    for n, p in enumerate(resp.content, 1):
        if isinstance(p, Text):
            if p.text:
                output.append({"type": "message", "id": f"msg_{request_id}_{n}",
                               "status": "completed", "role": "assistant", "content": [
                                   {"type": "output_text", "text": p.text,
                                    "annotations": []}]})
        elif isinstance(p, Reasoning):
            output.append(_reasoning_item(p, f"rs_{request_id}_{n}"))
        else:
            if p.signature:
                output.append(_reasoning_item(Reasoning(signature=p.signature,
                                                        source="gemini"),
                                              f"rs_{request_id}_{n}s"))
            output.append(_call_item(p))
    status, reason = _STATUS_OUT.get(resp.finish, ("completed", None))
    return _response_doc("resp_" + request_id, model, resp.created or int(time.time()),
                         status, reason, output, resp.usage or Usage())


# -- streams ----------------------------------------------------------------------------------

class StreamDecoder:
    """Responses events (dispatched on the JSON ``type``, as Codex does) -> common events."""

    def __init__(self) -> None:
        self.terminal = False
        self._args_seen: set[int] = set()
        self._custom: set[int] = set()
        self._reasoning_seen: set[int] = set()

    def decode(self, event: str | None, doc: dict[str, Any]) -> list[StreamEvent]:
        kind = doc.get("type") or event
        idx = doc.get("output_index", 0)
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            return [StreamText(text=doc.get("delta") or "")]
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            self._reasoning_seen.add(idx)
            return [StreamReasoning(text=doc.get("delta") or "")]
        if kind == "response.reasoning_summary_part.added" and doc.get("summary_index", 0) > 0:
            return [StreamReasoning(text="\n\n")]
        if kind == "response.function_call_arguments.delta":
            self._args_seen.add(idx)
            return [StreamToolArgs(key=idx, delta=doc.get("delta") or "")]
        if kind == "response.custom_tool_call_input.delta":
            self._args_seen.add(idx)
            return [StreamToolArgs(key=idx, delta=json.dumps(doc.get("delta") or "")[1:-1])]
        if kind == "response.output_item.added":
            item = doc.get("item") or {}
            if item.get("type") in ("function_call", "custom_tool_call"):
                custom = item["type"] == "custom_tool_call"
                out: list[StreamEvent] = [StreamToolStart(
                    key=idx, id=item.get("call_id") or new_id("call_"),
                    name=item.get("name") or "", kind="custom" if custom else "function")]
                if custom:
                    self._custom.add(idx)
                    out.append(StreamToolArgs(key=idx, delta='{"input":"'))
                return out
            return []
        if kind == "response.output_item.done":
            return self._item_done(idx, doc.get("item") or {})
        if kind == "response.created":
            r = doc.get("response") or {}
            return [StreamStart(id=r.get("id"), model=r.get("model"))]
        if kind in ("response.completed", "response.incomplete"):
            self.terminal = True
            r = doc.get("response") or {}
            out = []
            u = normalise_usage(DIALECT, r.get("usage"))
            if u is not None:
                out.append(StreamUsage(usage=u))
            out.append(StreamFinish(reason=finish_in(r)))
            return out
        if kind == "response.failed":
            if self.terminal:
                return []
            self.terminal = True
            err = (doc.get("response") or {}).get("error") or {}
            return [StreamError(status=_status(err.get("code")),
                                message=err.get("message") or "upstream response failed",
                                code=err.get("code"))]
        if kind == "error":
            self.terminal = True
            nested = doc.get("error")
            e: dict[str, Any] = nested if isinstance(nested, dict) else doc
            return [StreamError(status=_status(e.get("code")),
                                message=e.get("message") or "upstream error",
                                code=e.get("code"))]
        return []

    def _item_done(self, idx: int, item: dict[str, Any]) -> list[StreamEvent]:
        kind = item.get("type")
        out: list[StreamEvent] = []
        if kind == "reasoning":
            if idx not in self._reasoning_seen:
                r = _item_reasoning(item)
                if r.text:
                    out.append(StreamReasoning(text=r.text))
            out.append(StreamSignature(encrypted=item.get("encrypted_content"),
                                       item_id=item.get("id"), source=DIALECT))
        elif kind == "function_call":
            if idx not in self._args_seen and item.get("arguments"):
                out.append(StreamToolArgs(key=idx, delta=item["arguments"]))
            out.append(StreamToolEnd(key=idx))
        elif kind == "custom_tool_call":
            if idx not in self._args_seen:
                out.append(StreamToolArgs(key=idx,
                                          delta=json.dumps(item.get("input") or "")[1:-1]))
            out += [StreamToolArgs(key=idx, delta='"}'), StreamToolEnd(key=idx)]
        return out


def _status(code: Any) -> int:
    if isinstance(code, int):
        return code
    return {"rate_limit_exceeded": 429, "insufficient_quota": 429, "server_error": 500,
            "invalid_prompt": 400, "context_length_exceeded": 400}.get(str(code), 500)


class _Item:
    __slots__ = ("call", "id", "index", "kind", "text")

    def __init__(self, kind: str, item_id: str, index: int,
                 call: ToolCall | None = None) -> None:
        self.kind = kind
        self.id = item_id
        self.index = index
        self.text: list[str] = []
        self.call = call


class StreamEncoder:
    """Common stream events -> Responses events with sequence numbers; ends with
    ``response.completed`` (or ``response.incomplete``) carrying the id, the full output and
    usage including total_tokens, which Codex requires."""

    def __init__(self, *, model: str, request_id: str) -> None:
        self.model = model
        self.id = "resp_" + request_id
        self.created = int(time.time())
        self._seq = 0
        self._started = False
        self._cur: _Item | None = None
        self._tools: dict[int | str, _Item] = {}
        self._output: list[dict[str, Any]] = []
        self._n = 0
        self._usage: Usage | None = None
        self._finish: StreamFinish | None = None

    def _ev(self, kind: str, **fields: Any) -> bytes:
        doc = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return encode_event(dumps(doc), kind)

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        skel = _response_doc(self.id, self.model, self.created, "in_progress", None, [], None)
        return [self._ev("response.created", response=skel),
                self._ev("response.in_progress", response=skel)]

    def _new(self, kind: str, prefix: str, call: ToolCall | None = None) -> _Item:
        self._n += 1
        item = _Item(kind, f"{prefix}_{self.id[5:]}_{self._n}", len(self._output), call)
        self._output.append({})  # placeholder keeps output_index stable
        return item

    def _close_cur(self, encrypted: str | None = None) -> list[bytes]:
        it = self._cur
        if it is None:
            return []
        self._cur = None
        text = "".join(it.text)
        base = {"item_id": it.id, "output_index": it.index}
        if it.kind == "message":
            part = {"type": "output_text", "text": text, "annotations": []}
            done = {"id": it.id, "type": "message", "status": "completed", "role": "assistant",
                    "content": [part]}
            out = [self._ev("response.output_text.done", **base, content_index=0, text=text,
                            logprobs=[]),
                   self._ev("response.content_part.done", **base, content_index=0, part=part)]
        else:
            summary = [{"type": "summary_text", "text": text}] if text else []
            done = {"id": it.id, "type": "reasoning", "summary": summary}
            if encrypted:
                done["encrypted_content"] = encrypted
            out = []
            if text:
                out += [self._ev("response.reasoning_summary_text.done", **base,
                                 summary_index=0, text=text),
                        self._ev("response.reasoning_summary_part.done", **base,
                                 summary_index=0, part=summary[0])]
        self._output[it.index] = done
        out.append(self._ev("response.output_item.done", output_index=it.index, item=done))
        return out

    def _close_tools(self) -> list[bytes]:
        out: list[bytes] = []
        for key in list(self._tools):
            out += self._end_tool(key)
        return out

    def _end_tool(self, key: int | str) -> list[bytes]:
        it = self._tools.pop(key, None)
        if it is None or it.call is None:
            return []
        call = it.call
        call.arguments = "".join(it.text)
        complete = parse_args(call.arguments) is not None
        fin = self._finish
        status = "completed" if complete or fin is None or fin.reason != "max_tokens" \
            else "incomplete"
        item = _call_item(call, status)
        item["id"] = it.id
        out: list[bytes] = []
        if call.kind != "custom":
            out.append(self._ev("response.function_call_arguments.done", item_id=it.id,
                                output_index=it.index, arguments=call.arguments,
                                name=call.name))
        self._output[it.index] = item
        out.append(self._ev("response.output_item.done", output_index=it.index, item=item))
        return out

    def _open(self, kind: str) -> list[bytes]:
        out = self._close_cur()
        it = self._new(kind, "msg" if kind == "message" else "rs")
        self._cur = it
        if kind == "message":
            item = {"id": it.id, "type": "message", "status": "in_progress",
                    "role": "assistant", "content": []}
            part = {"type": "output_text", "text": "", "annotations": []}
            out.append(self._ev("response.output_item.added", output_index=it.index, item=item))
            out.append(self._ev("response.content_part.added", item_id=it.id,
                                output_index=it.index, content_index=0, part=part))
            return out
        item = {"id": it.id, "type": "reasoning", "summary": []}
        return [*out, self._ev("response.output_item.added", output_index=it.index, item=item)]

    def encode(self, ev: StreamEvent) -> bytes:
        if isinstance(ev, StreamUsage):
            self._usage = ev.usage
            return b""
        if isinstance(ev, StreamFinish):
            self._finish = ev
            return b""
        out = self._start()
        if isinstance(ev, StreamStart):
            if ev.usage is not None:
                self._usage = ev.usage
        elif isinstance(ev, StreamText) and ev.text:
            if self._cur is None or self._cur.kind != "message":
                out += self._open("message")
            assert self._cur is not None
            self._cur.text.append(ev.text)
            out.append(self._ev("response.output_text.delta", item_id=self._cur.id,
                                output_index=self._cur.index, content_index=0, delta=ev.text,
                                logprobs=[]))
        elif isinstance(ev, StreamReasoning) and ev.text:
            if self._cur is None or self._cur.kind != "reasoning":
                out += self._open("reasoning")
            cur = self._cur
            assert cur is not None
            if not cur.text:
                out.append(self._ev("response.reasoning_summary_part.added", item_id=cur.id,
                                    output_index=cur.index, summary_index=0,
                                    part={"type": "summary_text", "text": ""}))
            cur.text.append(ev.text)
            out.append(self._ev("response.reasoning_summary_text.delta", item_id=cur.id,
                                output_index=cur.index, summary_index=0, delta=ev.text))
        elif isinstance(ev, StreamSignature):
            if ev.source == DIALECT:
                enc = ev.encrypted
            else:
                enc = carry(Reasoning(signature=ev.signature, redacted=ev.redacted,
                                      encrypted=ev.encrypted, source=ev.source,
                                      item_id=ev.item_id))
            if self._cur is None or self._cur.kind != "reasoning":
                out += self._open("reasoning")
            out += self._close_cur(enc)
        elif isinstance(ev, StreamToolStart):
            if ev.signature:
                out.append(self.encode(StreamSignature(signature=ev.signature, source="gemini")))
            out += self._close_cur()
            call = ToolCall(id=ev.id, name=ev.name, arguments="", kind=ev.kind,
                            namespace=ev.namespace)
            it = self._new("call", "fc" if ev.kind != "custom" else "ctc", call)
            self._tools[ev.key] = it
            item = _call_item(call, "in_progress")
            item["id"] = it.id
            item["arguments" if ev.kind != "custom" else "input"] = ""
            out.append(self._ev("response.output_item.added", output_index=it.index,
                                item=item))
        elif isinstance(ev, StreamToolArgs):
            tool = self._tools.get(ev.key)
            if tool is not None and ev.delta:
                tool.text.append(ev.delta)
                if tool.call is not None and tool.call.kind != "custom":
                    out.append(self._ev("response.function_call_arguments.delta",
                                        item_id=tool.id, output_index=tool.index,
                                        delta=ev.delta))
        elif isinstance(ev, StreamToolEnd):
            out += self._end_tool(ev.key)
        return b"".join(out)

    def close(self) -> bytes:
        out = self._start() + self._close_cur() + self._close_tools()
        fin = self._finish or StreamFinish(reason="end_turn")
        status, reason = _STATUS_OUT.get(fin.reason, ("completed", None))
        output = [o for o in self._output if o]
        doc = _response_doc(self.id, self.model, self.created, status, reason, output,
                            self._usage or Usage())
        out.append(self._ev("response.completed" if status == "completed"
                            else "response.incomplete", response=doc))
        return b"".join(out)

    def fail(self, status: int, message: str) -> bytes:
        out = self._start() + self._close_cur() + self._close_tools()
        out.append(stream_error(DIALECT, status, message, response_id=self.id,
                                sequence_number=self._seq))
        self._seq += 2
        return b"".join(out)
