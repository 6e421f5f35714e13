"""Gemini generateContent <-> common form: requests, responses, stream chunks.

Finish reasons (finishReason):
    in:  STOP -> end_turn (tool_use when functionCall parts are present); MAX_TOKENS ->
         max_tokens; SAFETY, RECITATION, LANGUAGE, BLOCKLIST, PROHIBITED_CONTENT, SPII,
         IMAGE_SAFETY, IMAGE_PROHIBITED_CONTENT, IMAGE_RECITATION -> refusal;
         MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL, TOO_MANY_TOOL_CALLS ->
         malformed_tool_call; OTHER, NO_IMAGE, IMAGE_OTHER, FINISH_REASON_UNSPECIFIED -> other;
         no candidates + promptFeedback.blockReason -> refusal
    out: end_turn, stop_sequence, tool_use -> STOP; max_tokens, pause_turn, context_window ->
         MAX_TOKENS; refusal -> SAFETY; malformed_tool_call -> MALFORMED_FUNCTION_CALL;
         other -> OTHER
Thought signatures: a functionCall's thoughtSignature is kept on the ToolCall and replayed on
the same call; a model turn's first functionCall without one gets Google's documented
"skip_thought_signature_validator". Function calls arrive whole, so a streamed call is sent
to Gemini clients only once its arguments are complete.
"""

from __future__ import annotations

import re
from typing import Any

from schemas.errors import error_body
from schemas.events import Usage

from ._schema import gemini_schema
from ._util import (
    SKIP_SIGNATURE,
    budget_for_effort,
    carry,
    dumps,
    fill_result_names,
    new_id,
    parse_args,
    uncarry,
)
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
    TranslationError,
)
from .sse import encode_event
from .usage import normalise_usage

DIALECT = "gemini"
_SYNTHETIC_ID = re.compile(r"call_\d+_\d+$")  # made up by decode_request for id-less calls

_REFUSAL = ("SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
            "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION")
_MALFORMED = ("MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS")
FINISH_IN: dict[str, str] = {"STOP": "end_turn", "MAX_TOKENS": "max_tokens",
                             **dict.fromkeys(_REFUSAL, "refusal"),
                             **dict.fromkeys(_MALFORMED, "malformed_tool_call")}
FINISH_OUT = {"end_turn": "STOP", "stop_sequence": "STOP", "tool_use": "STOP",
              "max_tokens": "MAX_TOKENS", "pause_turn": "MAX_TOKENS",
              "context_window": "MAX_TOKENS", "refusal": "SAFETY",
              "malformed_tool_call": "MALFORMED_FUNCTION_CALL", "other": "OTHER"}
_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "UNAUTHENTICATED": 401,
           "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429,
           "INTERNAL": 500, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
_DROPPED_GEN = ("presencePenalty", "frequencyPenalty", "responseLogprobs", "logprobs",
                "responseModalities", "speechConfig", "mediaResolution")


def finish_in(value: str | None) -> str:
    return FINISH_IN.get(value or "STOP", "other")


def status_of(err: dict[str, Any]) -> int:
    code = err.get("code")
    return code if isinstance(code, int) else _STATUS.get(str(err.get("status")), 500)


def _g(d: dict[str, Any], camel: str, snake: str) -> Any:
    return d.get(camel, d.get(snake))


# -- requests ---------------------------------------------------------------------------------

def _result_content(response: Any) -> tuple[list[Text | Image], bool]:
    if isinstance(response, dict) and len(response) == 1:
        if isinstance(response.get("result"), str):
            return [Text(text=response["result"])], False
        if isinstance(response.get("error"), str):
            return [Text(text=response["error"])], True
    return [Text(text=dumps(response).decode())], False


def decode_request(doc: dict[str, Any]) -> Request:
    if doc.get("cachedContent"):
        raise TranslationError("cachedContent refers to state stored at Google and cannot be "
                               "sent to another provider")
    req = Request(model=doc.get("model") or "")
    si = _g(doc, "systemInstruction", "system_instruction")
    if isinstance(si, str):
        req.system.append(Text(text=si))
    elif isinstance(si, dict):
        req.system += [Text(text=p["text"]) for p in si.get("parts") or [] if "text" in p]
    contents = doc.get("contents") or []
    if isinstance(contents, dict):
        contents = [contents]
    pending: list[ToolCall] = []  # calls of the last model turn, for id-less responses
    for turn_no, c in enumerate(contents):
        role = "assistant" if c.get("role") == "model" else "user"
        parts: list[Part] = []
        calls: list[ToolCall] = []
        raw_parts = c.get("parts") or []
        if isinstance(raw_parts, dict):  # proto JSON accepts a single object for a list
            raw_parts = [raw_parts]
        for n, p in enumerate(raw_parts):
            sig = _g(p, "thoughtSignature", "thought_signature")
            fc = _g(p, "functionCall", "function_call")
            fr = _g(p, "functionResponse", "function_response")
            inline = _g(p, "inlineData", "inline_data")
            fdata = _g(p, "fileData", "file_data")
            if fc is not None:
                carried = uncarry(sig)
                if carried is not None:
                    parts.append(carried)
                    sig = None
                call = ToolCall(id=fc.get("id") or f"call_{turn_no}_{n}",
                                name=fc.get("name") or "",
                                arguments=dumps(fc.get("args") or {}).decode(),
                                signature=sig if sig and sig != SKIP_SIGNATURE else None)
                calls.append(call)
                parts.append(call)
            elif fr is not None:
                name = fr.get("name") or ""
                call_id = fr.get("id")
                if not call_id:
                    match = next((x for x in pending if x.name == name), None)
                    if match is not None:
                        pending.remove(match)
                        call_id = match.id
                content, is_error = _result_content(fr.get("response"))
                parts.append(ToolResult(call_id=call_id or name, name=name, content=content,
                                        is_error=is_error))
            elif p.get("thought"):
                r = uncarry(sig, p.get("text") or "")
                parts.append(r or Reasoning(text=p.get("text") or "", signature=sig,
                                            source=DIALECT))
            elif "text" in p:
                parts.append(Text(text=p["text"]))
            elif inline is not None:
                parts.append(Image(media_type=_g(inline, "mimeType", "mime_type"),
                                   data=inline.get("data")))
            elif fdata is not None:
                parts.append(Image(media_type=_g(fdata, "mimeType", "mime_type"),
                                   url=_g(fdata, "fileUri", "file_uri")))
            else:
                req.dropped.append(f"part {next(iter(p), '?')}")
        if calls:
            pending = list(calls)
        req.messages.append(Message(role=role, parts=parts))
    tools = doc.get("tools") or []
    for t in [tools] if isinstance(tools, dict) else tools:
        decls = _g(t, "functionDeclarations", "function_declarations")
        if decls is None:
            req.dropped.append(f"tool {next(iter(t), '?')}")
        for d in decls or []:
            params = _g(d, "parametersJsonSchema", "parameters_json_schema")
            if params is None:
                params = _lower_types(d.get("parameters"))
            req.tools.append(Tool(name=d.get("name") or "", description=d.get("description"),
                                  parameters=params))
    fcc = _g(_g(doc, "toolConfig", "tool_config") or {}, "functionCallingConfig",
             "function_calling_config") or {}
    mode = str(fcc.get("mode") or "").upper()
    allowed = _g(fcc, "allowedFunctionNames", "allowed_function_names") or []
    if mode in ("ANY", "VALIDATED") and len(allowed) == 1:
        req.tool_choice = ToolChoice(mode="tool", name=allowed[0])
    elif mode == "ANY":
        req.tool_choice = ToolChoice(mode="required")
    elif mode in ("NONE", "AUTO"):
        req.tool_choice = ToolChoice(mode=mode.lower())
    gc = _g(doc, "generationConfig", "generation_config") or {}
    if (_g(gc, "candidateCount", "candidate_count") or 1) > 1:
        raise TranslationError("candidateCount > 1 cannot be translated to this provider")
    req.max_tokens = _g(gc, "maxOutputTokens", "max_output_tokens")
    req.temperature = gc.get("temperature")
    req.top_p = _g(gc, "topP", "top_p")
    req.top_k = _g(gc, "topK", "top_k")
    req.stop = _g(gc, "stopSequences", "stop_sequences") or None
    req.seed = gc.get("seed")
    # Gemini CLI puts OpenAPI-style UPPERCASE types ("OBJECT", "STRING") in responseJsonSchema
    # too (Gemini accepts them); other providers need JSON Schema's lower-case type names.
    schema = _lower_types(_g(gc, "responseJsonSchema", "response_json_schema"))
    if schema is None and _g(gc, "responseSchema", "response_schema") is not None:
        schema = _lower_types(_g(gc, "responseSchema", "response_schema"))
    if _g(gc, "responseMimeType", "response_mime_type") == "application/json" or schema:
        req.response_format = ResponseFormat(type="json_schema" if schema else "json_object",
                                             schema=schema)
    tc = _g(gc, "thinkingConfig", "thinking_config")
    if isinstance(tc, dict):
        budget = _g(tc, "thinkingBudget", "thinking_budget")
        level = _g(tc, "thinkingLevel", "thinking_level")
        include = bool(_g(tc, "includeThoughts", "include_thoughts"))
        if budget == 0:
            req.thinking = Thinking(enabled=False, budget_tokens=0)
        else:
            req.thinking = Thinking(budget_tokens=budget if budget and budget > 0 else None,
                                    effort=str(level).lower() if level else None,
                                    include_thoughts=include, level=level)
    req.dropped += [k for k in _DROPPED_GEN if k in gc]
    req.dropped += [k for k in ("safetySettings", "labels") if k in doc]
    fill_result_names(req.messages)
    return req


def _lower_types(schema: Any) -> Any:
    """Gemini's OpenAPI schema (type enums in UPPERCASE) as plain JSON Schema."""
    if isinstance(schema, dict):
        out = {k: _lower_types(v) for k, v in schema.items()}
        if isinstance(out.get("type"), str):
            out["type"] = out["type"].lower()
        return out
    if isinstance(schema, list):
        return [_lower_types(v) for v in schema]
    return schema


def _image(p: Image) -> dict[str, Any]:
    if p.data is not None:
        return {"inlineData": {"mimeType": p.media_type or "image/png", "data": p.data}}
    if p.url:
        return {"fileData": {"mimeType": p.media_type or "image/jpeg", "fileUri": p.url}}
    raise TranslationError("an OpenAI/Anthropic file id cannot be sent to a Gemini provider; "
                           "send the file inline")


def encode_request(req: Request, *, model: str, stream: bool) -> dict[str, Any]:
    fill_result_names(req.messages)
    system = [t.text for t in req.system if t.text]
    contents: list[dict[str, Any]] = []
    for m in req.messages:
        if m.role in ("system", "developer"):
            system += [p.text for p in m.parts if isinstance(p, Text) and p.text]
            continue
        role = "model" if m.role == "assistant" else "user"
        parts = _model_parts(m.parts) if role == "model" else _user_parts(m.parts)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"] += parts
        else:
            contents.append({"role": role, "parts": parts})
    _first_call_signed(contents)
    doc: dict[str, Any] = {"contents": contents}
    if system:
        doc["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    if req.tools:
        doc["tools"] = [{"functionDeclarations": [_tool(t) for t in req.tools]}]
    if req.tool_choice is not None:
        tc = req.tool_choice
        fcc: dict[str, Any] = {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY",
                                        "tool": "ANY"}[tc.mode]}
        if tc.mode == "tool" and tc.name:
            fcc["allowedFunctionNames"] = [tc.name]
        doc["toolConfig"] = {"functionCallingConfig": fcc}
    gc: dict[str, Any] = {}
    for key, value in (("maxOutputTokens", req.max_tokens), ("temperature", req.temperature),
                       ("topP", req.top_p), ("topK", req.top_k), ("seed", req.seed)):
        if value is not None:
            gc[key] = value
    if req.stop:
        gc["stopSequences"] = req.stop[:5]
    rf = req.response_format
    if rf is not None and rf.type != "text":
        gc["responseMimeType"] = "application/json"
        if rf.schema:
            gc["responseJsonSchema"] = rf.schema
    th = req.thinking
    effort = req.reasoning_effort
    if th is not None:
        if not th.enabled:
            gc["thinkingConfig"] = {"thinkingBudget": 0}
        elif th.level:
            gc["thinkingConfig"] = {"thinkingLevel": th.level,
                                    "includeThoughts": th.include_thoughts}
        else:
            budget = th.budget_tokens or (budget_for_effort(th.effort) if th.effort else -1)
            gc["thinkingConfig"] = {"thinkingBudget": budget,
                                    "includeThoughts": th.include_thoughts}
    elif effort and effort != "none":
        gc["thinkingConfig"] = {"thinkingBudget": budget_for_effort(effort),
                                "includeThoughts": True}
    if gc:
        doc["generationConfig"] = gc
    return doc


def _user_parts(parts: list[Part]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, ToolResult):
            text = "".join(q.text for q in p.content if isinstance(q, Text))
            fr: dict[str, Any] = {"name": p.name or p.call_id,
                                  "response": {"error" if p.is_error else "result": text}}
            if p.call_id and p.call_id != p.name:
                fr["id"] = p.call_id
            results.append({"functionResponse": fr})
            rest += [_image(q) for q in p.content if isinstance(q, Image)]
        elif isinstance(p, Text):
            if p.text:
                rest.append({"text": p.text})
        elif isinstance(p, Image):
            rest.append(_image(p))
    return results + rest  # all functionResponse parts first, one per call


def _model_parts(parts: list[Part]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    sig: str | None = None
    for p in parts:
        if isinstance(p, Text):
            if p.text:
                out.append({"text": p.text})
        elif isinstance(p, Reasoning):
            # Thought text is not replayed; Gemini's own signature goes back on the next call.
            if p.source == DIALECT and p.signature:
                sig = p.signature
        elif isinstance(p, ToolCall):
            part: dict[str, Any] = {"functionCall": {"name": p.name,
                                                     "args": parse_args(p.arguments) or {}}}
            if p.id and not _SYNTHETIC_ID.match(p.id):
                part["functionCall"]["id"] = p.id
            s = p.signature or sig
            sig = None
            if s:
                part["thoughtSignature"] = s
            out.append(part)
    return out


def _first_call_signed(contents: list[dict[str, Any]]) -> None:
    """Gemini 3 validates a signature on the first functionCall of every model turn."""
    for c in contents:
        if c["role"] != "model":
            continue
        first = next((p for p in c["parts"] if "functionCall" in p), None)
        if first is not None and "thoughtSignature" not in first:
            first["thoughtSignature"] = SKIP_SIGNATURE


def _tool(t: Tool) -> dict[str, Any]:
    if t.kind == "custom":
        params: dict[str, Any] | None = {"type": "object", "properties": {"input": {
            "type": "string", "description": "The raw tool input."}}, "required": ["input"]}
    else:
        params = gemini_schema(t.parameters) if t.parameters else None
        if params is not None and params.get("type") == "object" and not params.get(
                "properties"):
            params = None  # Gemini rejects an OBJECT with no properties
    out: dict[str, Any] = {"name": t.name}
    if t.description:
        out["description"] = t.description
    if params is not None:
        out["parameters"] = params
    return out


# -- responses --------------------------------------------------------------------------------

def _candidate_parts(doc: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    cands = doc.get("candidates") or []
    if not cands:
        return [], None
    c = cands[0]
    return (c.get("content") or {}).get("parts") or [], c.get("finishReason")


def decode_response(doc: dict[str, Any]) -> Response:
    parts, reason = _candidate_parts(doc)
    resp = Response(id=doc.get("responseId") or "", model=doc.get("modelVersion") or "",
                    usage=normalise_usage(DIALECT, doc.get("usageMetadata")))
    if not doc.get("candidates") and (doc.get("promptFeedback") or {}).get("blockReason"):
        resp.finish = "refusal"
        return resp
    resp.finish = finish_in(reason)
    for p in parts:
        sig = p.get("thoughtSignature")
        if "functionCall" in p:
            fc = p["functionCall"]
            resp.content.append(ToolCall(id=fc.get("id") or new_id("call_"),
                                         name=fc.get("name") or "",
                                         arguments=dumps(fc.get("args") or {}).decode(),
                                         signature=sig))
        elif p.get("thought"):
            resp.content.append(Reasoning(text=p.get("text") or "", signature=sig,
                                          source=DIALECT))
        elif p.get("text"):
            resp.content.append(Text(text=p["text"]))
    return resp


def wire_usage(u: Usage | None) -> dict[str, Any]:
    u = u or Usage()
    out = {"promptTokenCount": u.total_input_tokens,
           "candidatesTokenCount": u.output_tokens - u.reasoning_tokens,
           "totalTokenCount": u.total_tokens}
    if u.reasoning_tokens:
        out["thoughtsTokenCount"] = u.reasoning_tokens
    if u.cache_read_tokens:
        out["cachedContentTokenCount"] = u.cache_read_tokens
    return out


def _client_parts(content: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    carried: str | None = None
    for p in content:
        if isinstance(p, Text):
            if p.text:
                out.append({"text": p.text})
        elif isinstance(p, Reasoning):
            # A foreign signature rides on the next functionCall (Gemini clients echo those).
            carried = carry(p) if (p.signature or p.encrypted or p.redacted) else None
            if p.text:
                out.append({"text": p.text, "thought": True})
        elif isinstance(p, ToolCall):
            part: dict[str, Any] = {"functionCall": {"id": p.id, "name": p.name,
                                                     "args": parse_args(p.arguments) or {}}}
            if carried:
                part["thoughtSignature"] = carried
                carried = None
            out.append(part)
    if carried:
        out.append({"text": "", "thought": True, "thoughtSignature": carried})
    return out


def encode_response(resp: Response, *, model: str, request_id: str) -> dict[str, Any]:
    cand = {"content": {"role": "model", "parts": _client_parts(resp.content)},
            "finishReason": FINISH_OUT.get(resp.finish, "STOP"), "index": 0}
    return {"candidates": [cand], "usageMetadata": wire_usage(resp.usage),
            "modelVersion": model, "responseId": request_id}


# -- streams ----------------------------------------------------------------------------------

class StreamDecoder:
    """Gemini chunks -> common events. Each functionCall arrives whole and gets its own key,
    so parallel calls in one chunk or across chunks stay distinct."""

    def __init__(self) -> None:
        self.terminal = False
        self._started = False
        self._calls = 0

    def decode(self, event: str | None, doc: Any) -> list[StreamEvent]:
        if isinstance(doc, list):
            return [ev for d in doc for ev in self.decode(event, d)]
        if not isinstance(doc, dict):
            return []
        if isinstance(doc.get("error"), dict):
            self.terminal = True
            err = doc["error"]
            return [StreamError(status=status_of(err), message=str(err.get("message") or ""),
                                code=err.get("status"))]
        out: list[StreamEvent] = []
        if not self._started:
            self._started = True
            out.append(StreamStart(id=doc.get("responseId"), model=doc.get("modelVersion")))
        parts, reason = _candidate_parts(doc)
        for p in parts:
            sig = p.get("thoughtSignature")
            if "functionCall" in p:
                fc = p["functionCall"]
                key = self._calls
                self._calls += 1
                out += [StreamToolStart(key=key, id=fc.get("id") or new_id("call_"),
                                        name=fc.get("name") or "", signature=sig),
                        StreamToolArgs(key=key, delta=dumps(fc.get("args") or {}).decode()),
                        StreamToolEnd(key=key)]
            elif p.get("thought"):
                if p.get("text"):
                    out.append(StreamReasoning(text=p["text"]))
                if sig:
                    out.append(StreamSignature(signature=sig, source=DIALECT))
            elif p.get("text"):
                out.append(StreamText(text=p["text"]))
        if isinstance(doc.get("usageMetadata"), dict):
            u = normalise_usage(DIALECT, doc["usageMetadata"])
            if u is not None:
                out.append(StreamUsage(usage=u))
        if reason:
            self.terminal = True
            out.append(StreamFinish(reason=finish_in(reason)))
        elif not doc.get("candidates") and (doc.get("promptFeedback") or {}).get("blockReason"):
            self.terminal = True
            out.append(StreamFinish(reason="refusal"))
        return out


class StreamEncoder:
    """Common events -> Gemini SSE chunks; function calls are buffered until their arguments
    are complete; the last chunk carries finishReason and usageMetadata; no terminator."""

    def __init__(self, *, model: str, request_id: str) -> None:
        self.model = model
        self.id = request_id
        self._tools: dict[int | str, list[Any]] = {}  # key -> [id, name, args parts]
        self._carried: str | None = None
        # Thought text of the current reasoning block: Gemini clients do not echo thought
        # parts, so a foreign signature must carry its text (Anthropic checks the pair).
        self._thought: list[str] = []
        self._usage: Usage | None = None
        self._finish: StreamFinish | None = None

    def _chunk(self, parts: list[dict[str, Any]], finish: str | None = None,
               usage: Usage | None = None) -> bytes:
        cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            cand["finishReason"] = finish
        doc: dict[str, Any] = {"candidates": [cand]}
        if usage is not None:
            doc["usageMetadata"] = wire_usage(usage)
        doc["modelVersion"] = self.model
        doc["responseId"] = self.id
        return encode_event(dumps(doc))

    def encode(self, ev: StreamEvent) -> bytes:
        if isinstance(ev, StreamText) and ev.text:
            return self._chunk([{"text": ev.text}])
        if isinstance(ev, StreamReasoning) and ev.text:
            self._thought.append(ev.text)
            return self._chunk([{"text": ev.text, "thought": True}])
        if isinstance(ev, StreamSignature):
            if ev.source != DIALECT:
                self._carried = carry(Reasoning(text="".join(self._thought),
                                                signature=ev.signature, redacted=ev.redacted,
                                                encrypted=ev.encrypted, source=ev.source,
                                                item_id=ev.item_id))
            self._thought = []
            return b""
        if isinstance(ev, StreamToolStart):
            self._tools[ev.key] = [ev.id, ev.name, [], ev.signature]
        elif isinstance(ev, StreamToolArgs):
            if ev.key in self._tools:
                self._tools[ev.key][2].append(ev.delta)
        elif isinstance(ev, StreamToolEnd):
            return self._emit_tool(ev.key)
        elif isinstance(ev, StreamUsage):
            self._usage = ev.usage
        elif isinstance(ev, StreamFinish):
            self._finish = ev
        return b""

    def _emit_tool(self, key: int | str) -> bytes:
        entry = self._tools.pop(key, None)
        if entry is None:
            return b""
        tid, name, pieces, sig = entry
        args = parse_args("".join(pieces))
        if args is None:
            return b""  # incomplete arguments (cut by max tokens): never sent as a call
        part: dict[str, Any] = {"functionCall": {"id": tid, "name": name, "args": args}}
        if self._carried:
            part["thoughtSignature"] = self._carried
            self._carried = None
        elif sig:
            part["thoughtSignature"] = sig
        return self._chunk([part])

    def close(self) -> bytes:
        out = [self._emit_tool(k) for k in list(self._tools)]
        fin = self._finish or StreamFinish(reason="end_turn")
        parts: list[dict[str, Any]] = [{"text": ""}]
        if self._carried:
            parts = [{"text": "", "thought": True, "thoughtSignature": self._carried}]
        out.append(self._chunk(parts, FINISH_OUT.get(fin.reason, "STOP"),
                               self._usage or Usage()))
        return b"".join(out)

    def fail(self, status: int, message: str) -> bytes:
        return b"data: " + error_body(DIALECT, status, message) + b"\n\n"

