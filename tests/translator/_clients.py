"""What a client of each dialect would make of translated output (a tiny SDK-like reader)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from workers.translator import StreamTranslator, TranslationContext
from workers.translator.sse import SSEDecoder

from ._vectors import chunked


@dataclass
class Seen:
    text: str = ""
    thinking: str = ""
    tools: list[dict[str, Any]] = field(default_factory=list)  # id, name, args (str)
    stop: str | None = None
    usage: dict[str, Any] | None = None
    error: Any = None
    events: list[tuple[str | None, Any]] = field(default_factory=list)
    terminal: bool = False


def events(body: bytes) -> list[tuple[str | None, Any]]:
    dec = SSEDecoder()
    out = []
    for ev in dec.feed(body) + dec.flush():
        out.append((ev.event, ev.data if ev.data == "[DONE]" else json.loads(ev.data)))
    return out


def translate_stream(provider: str, client: str, body: bytes, size: int = 37,
                     context: TranslationContext | None = None) -> bytes:
    st = StreamTranslator(provider, client, model="client-model", request_id="req1",
                          context=context)
    return b"".join(st.feed(c) for c in chunked(body, size)) + st.close()


def read_stream(client: str, body: bytes) -> Seen:
    s = Seen(events=events(body))
    tools: dict[Any, dict[str, Any]] = {}
    for name, d in s.events:
        if client == "anthropic":
            t = d["type"]
            assert t == name
            if t == "content_block_start" and d["content_block"]["type"] == "tool_use":
                b = d["content_block"]
                tools[d["index"]] = {"id": b["id"], "name": b["name"], "args": ""}
            elif t == "content_block_delta":
                dl = d["delta"]
                if dl["type"] == "text_delta":
                    s.text += dl["text"]
                elif dl["type"] == "thinking_delta":
                    s.thinking += dl["thinking"]
                elif dl["type"] == "input_json_delta":
                    tools[d["index"]]["args"] += dl["partial_json"]
            elif t == "message_delta":
                s.stop = d["delta"]["stop_reason"]
                s.usage = d.get("usage")
            elif t == "message_stop":
                s.terminal = True
            elif t == "error":
                s.error = d["error"]
        elif client == "openai-chat":
            if d == "[DONE]":
                s.terminal = True
                continue
            if "error" in d:
                s.error = d["error"]
                continue
            if d.get("usage"):
                s.usage = d.get("usage")
            for ch in d["choices"]:
                dl = ch["delta"]
                s.text += dl.get("content") or ""
                s.thinking += dl.get("reasoning_content") or ""
                for tc in dl.get("tool_calls") or []:
                    entry = tools.setdefault(tc["index"], {"id": tc.get("id"), "name": "",
                                                           "args": ""})
                    entry["name"] += tc.get("function", {}).get("name") or ""
                    entry["args"] += tc.get("function", {}).get("arguments") or ""
                if ch.get("finish_reason"):
                    s.stop = ch["finish_reason"]
        elif client == "openai-responses":
            t = d["type"]
            if t == "response.output_text.delta":
                s.text += d["delta"]
            elif t == "response.reasoning_summary_text.delta":
                s.thinking += d["delta"]
            elif t == "response.output_item.done" and d["item"]["type"] in (
                    "function_call", "custom_tool_call"):
                it = d["item"]
                tools[d["output_index"]] = {"id": it["call_id"], "name": it["name"],
                                            "args": it.get("arguments", it.get("input")),
                                            "status": it["status"], "item": it}
            elif t in ("response.completed", "response.incomplete"):
                r = d["response"]
                s.terminal = True
                s.usage = r["usage"]
                s.stop = r["status"] + (":" + r["incomplete_details"]["reason"]
                                        if r.get("incomplete_details") else "")
            elif t in ("error", "response.failed"):
                s.error = s.error or d
        elif client == "gemini":
            if "error" in d:
                s.error = d["error"]
                continue
            for cand in d["candidates"]:
                for p in cand["content"]["parts"]:
                    if "functionCall" in p:
                        fc = p["functionCall"]
                        tools[len(tools)] = {"id": fc.get("id"), "name": fc["name"],
                                             "args": json.dumps(fc["args"]),
                                             "sig": p.get("thoughtSignature")}
                    elif p.get("thought"):
                        s.thinking += p.get("text", "")
                    else:
                        s.text += p.get("text", "")
                if cand.get("finishReason"):
                    s.stop = cand["finishReason"]
                    s.terminal = True
            s.usage = d.get("usageMetadata") or s.usage
    s.tools = [tools[k] for k in sorted(tools)]
    return s


def read_response(client: str, doc: dict[str, Any]) -> Seen:
    s = Seen(terminal=True)
    if client == "anthropic":
        for b in doc["content"]:
            if b["type"] == "text":
                s.text += b["text"]
            elif b["type"] == "thinking":
                s.thinking += b["thinking"]
            elif b["type"] == "tool_use":
                s.tools.append({"id": b["id"], "name": b["name"], "args": json.dumps(b["input"])})
        s.stop, s.usage = doc["stop_reason"], doc["usage"]
    elif client == "openai-chat":
        ch = doc["choices"][0]
        s.text = ch["message"]["content"] or ""
        s.thinking = ch["message"].get("reasoning_content") or ""
        for tc in ch["message"].get("tool_calls") or []:
            s.tools.append({"id": tc["id"], "name": tc["function"]["name"],
                            "args": tc["function"]["arguments"]})
        s.stop, s.usage = ch["finish_reason"], doc["usage"]
    elif client == "openai-responses":
        for it in doc["output"]:
            if it["type"] == "message":
                s.text += "".join(c["text"] for c in it["content"])
            elif it["type"] == "reasoning":
                s.thinking += "".join(x["text"] for x in it["summary"])
            elif it["type"] in ("function_call", "custom_tool_call"):
                s.tools.append({"id": it["call_id"], "name": it["name"],
                                "args": it.get("arguments", it.get("input"))})
        s.stop = doc["status"] + (":" + doc["incomplete_details"]["reason"]
                                  if doc.get("incomplete_details") else "")
        s.usage = doc["usage"]
    else:
        cand = doc["candidates"][0]
        for p in cand["content"]["parts"]:
            if "functionCall" in p:
                fc = p["functionCall"]
                s.tools.append({"id": fc.get("id"), "name": fc["name"],
                                "args": json.dumps(fc["args"]), "sig": p.get("thoughtSignature")})
            elif p.get("thought"):
                s.thinking += p.get("text", "")
            else:
                s.text += p.get("text", "")
        s.stop, s.usage = cand["finishReason"], doc.get("usageMetadata")
    return s
