"""The 25 conformance edge cases of PROTOCOLS.md section 4, one named test each."""

from __future__ import annotations

import json
from typing import Any

import pytest

from workers.translator import (
    StreamTranslator,
    TranslationError,
    prepare,
    translate_error,
    translate_response,
)
from workers.translator._schema import gemini_schema

from ._clients import events, read_response, read_stream, translate_stream
from ._vectors import raw, sse_wire


def chat_sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    body = b"".join(b"data: " + json.dumps({**base, **c}).encode() + b"\n\n" for c in chunks)
    return body + (b"data: [DONE]\n\n" if done else b"")


def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def anth_sse(*docs: dict[str, Any]) -> bytes:
    return b"".join(f"event: {d['type']}\ndata: {json.dumps(d)}\n\n".encode() for d in docs)


START = {"type": "message_start", "message": {"id": "msg_1", "model": "claude", "content": [],
                                              "usage": {"input_tokens": 5, "output_tokens": 1}}}


def req(client: str, provider: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    out = prepare(client, provider, json.dumps(body).encode(), model="up",
                  stream=kw.get("stream", False))
    return json.loads(out.body)


def test_edge_01_tool_use_input_placeholder_ignored() -> None:
    got = read_stream("openai-chat", translate_stream(
        "anthropic", "openai-chat", sse_wire("anthropic_stream_tool_use.sse"), size=11))
    (tool,) = got.tools
    assert json.loads(tool["args"]) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert not tool["args"].startswith("{}")


def test_edge_02_split_escapes_and_utf8_reassemble_byte_exact() -> None:
    args = '{"path":"C:\\\\tmp\\\\é.txt","q":"say \\"hi\\" \\u00e9 日本 🎉"}'
    pieces = [args[:13], args[13:27], args[27:]]  # split mid-escape
    body = chat_sse(
        choice({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": ""}}]}),
        *[choice({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces],
        choice({}, "tool_calls"))
    for client in ("anthropic", "openai-responses", "gemini"):
        for size in (1, 2, 3, 5):
            got = read_stream(client, translate_stream("openai-chat", client, body, size=size))
            assert json.loads(got.tools[0]["args"]) == json.loads(args)
            if client == "anthropic":
                assert got.tools[0]["args"] == args  # byte-exact concatenation


def test_edge_03_parallel_tool_calls_distinct_indices_and_ids() -> None:
    got = read_stream("openai-chat", translate_stream(
        "gemini", "openai-chat", sse_wire("gemini_stream_parallel_tool_calls.sse")))
    assert [json.loads(t["args"])["city"] for t in got.tools] == ["San Francisco", "Santa Cruz"]
    assert len({t["id"] for t in got.tools}) == 2
    evs = events(translate_stream("gemini", "openai-chat",
                                  sse_wire("gemini_stream_parallel_tool_calls.sse")))
    idx = [tc["index"] for _, d in evs if d != "[DONE]" for ch in d["choices"]
           for tc in ch["delta"].get("tool_calls") or [] if "id" in tc]
    assert idx == [0, 1]
    # Chat calls interleaved 0/1 -> two Anthropic tool_use blocks with the right arguments.
    body = chat_sse(
        choice({"tool_calls": [{"index": 0, "id": "a", "type": "function",
                                "function": {"name": "f", "arguments": '{"x":'}}]}),
        choice({"tool_calls": [{"index": 1, "id": "b", "type": "function",
                                "function": {"name": "g", "arguments": '{"y":'}}]}),
        choice({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        choice({"tool_calls": [{"index": 1, "function": {"arguments": "2}"}}]}),
        choice({}, "tool_calls"))
    got = read_stream("anthropic", translate_stream("openai-chat", "anthropic", body))
    assert [(t["id"], t["name"], json.loads(t["args"])) for t in got.tools] == [
        ("a", "f", {"x": 1}), ("b", "g", {"y": 2})]
    # Gemini calls across chunks keep distinct ids too.
    g = b"".join(b"data: " + json.dumps({"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "f", "args": {"i": i}}}]}}]}).encode() + b"\n\n"
        for i in range(3))
    g += b'data: {"candidates":[{"content":{"role":"model","parts":[{"text":""}]},' \
         b'"finishReason":"STOP"}]}\n\n'
    got = read_stream("anthropic", translate_stream("gemini", "anthropic", g))
    assert len({t["id"] for t in got.tools}) == 3 and got.stop == "tool_use"


def test_edge_04_fragment_without_id_or_name_and_repeated_index() -> None:
    body = chat_sse(
        choice({"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}),
        choice({"tool_calls": [{"index": 0, "function": {"name": "lookup"}},
                               {"index": 0, "function": {"arguments": ":1}"}}]}),
        choice({}, "tool_calls"))
    got = read_stream("anthropic", translate_stream("openai-chat", "anthropic", body))
    (tool,) = got.tools
    assert tool["name"] == "lookup" and json.loads(tool["args"]) == {"a": 1}
    assert tool["id"]  # made up when the upstream sent none


def test_edge_05_content_and_finish_reason_in_same_chunk() -> None:
    body = chat_sse(choice({"role": "assistant", "content": "Hi there"}, "stop"))
    for client in ("anthropic", "openai-responses", "gemini"):
        got = read_stream(client, translate_stream("openai-chat", client, body))
        assert got.text == "Hi there"


def test_edge_06_usage_chunk_after_finish_and_streams_without_it() -> None:
    got = read_stream("anthropic", translate_stream(
        "openai-chat", "anthropic", raw("openai_chat_stream_include_usage.sse")))
    assert got.usage is not None
    assert (got.usage["input_tokens"], got.usage["output_tokens"]) == (10, 5)
    assert got.stop == "end_turn" and got.terminal
    no_usage = chat_sse(choice({"content": "x"}, None) | {"usage": None},
                        choice({}, "stop") | {"usage": None})
    got = read_stream("anthropic", translate_stream("openai-chat", "anthropic", no_usage))
    assert got.terminal and got.stop == "end_turn" and got.text == "x"


def test_edge_07_stop_with_function_calls_means_tool_use() -> None:
    out = json.loads(translate_response("gemini", "anthropic",
                                        raw("gemini_nonstream_tools_response.json"),
                                        model="m", request_id="r"))
    assert out["stop_reason"] == "tool_use"
    chat = {"id": "x", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]}
    out = json.loads(translate_response("openai-chat", "anthropic", json.dumps(chat).encode(),
                                        model="m", request_id="r"))
    assert out["stop_reason"] == "tool_use"
    out = json.loads(translate_response("openai-chat", "gemini", json.dumps(chat).encode(),
                                        model="m", request_id="r"))
    assert out["candidates"][0]["content"]["parts"][0]["functionCall"]["name"] == "f"


def test_edge_08_content_filter_round_trip_never_end_turn() -> None:
    body = raw("gemini_safety_finish.json")
    want = {"anthropic": "refusal", "openai-chat": "content_filter",
            "openai-responses": "incomplete:content_filter"}
    for client, stop in want.items():
        got = read_response(client, json.loads(translate_response(
            "gemini", client, body, model="m", request_id="r")))
        assert got.stop == stop and got.text == ""
    blocked = b'{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"}}'
    out = json.loads(translate_response("gemini", "anthropic", blocked, model="m",
                                        request_id="r"))
    assert out["stop_reason"] == "refusal" and out["content"] == []
    chat = chat_sse(choice({"content": "no"}, "content_filter"))
    got = read_stream("anthropic", translate_stream("openai-chat", "anthropic", chat))
    assert got.stop == "refusal"
    got = read_stream("gemini", translate_stream("openai-chat", "gemini", chat))
    assert got.stop == "SAFETY"


def test_edge_09_max_tokens_inside_unfinished_tool_call() -> None:
    body = anth_sse(
        START,
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "t1", "name": "f", "input": {}}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "input_json_delta", "partial_json": '{"a": "unfini'}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
         "usage": {"output_tokens": 9}},
        {"type": "message_stop"})
    gem = read_stream("gemini", translate_stream("anthropic", "gemini", body))
    assert gem.tools == [] and gem.stop == "MAX_TOKENS"
    resp = read_stream("openai-responses", translate_stream("anthropic", "openai-responses",
                                                            body))
    assert resp.stop == "incomplete:max_output_tokens"
    chat = read_stream("openai-chat", translate_stream("anthropic", "openai-chat", body))
    assert chat.stop == "length"
    cut = {"id": "x", "choices": [{"index": 0, "finish_reason": "length", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a":'}}]}}]}
    out = json.loads(translate_response("openai-chat", "anthropic", json.dumps(cut).encode(),
                                        model="m", request_id="r"))
    assert out["stop_reason"] == "max_tokens" and out["content"] == []


def test_edge_10_stop_sequence_and_responses_has_no_stop() -> None:
    msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "c",
           "content": [{"type": "text", "text": "a"}], "stop_reason": "stop_sequence",
           "stop_sequence": "###", "usage": {"input_tokens": 1, "output_tokens": 1}}
    for client, stop in (("openai-chat", "stop"), ("gemini", "STOP"),
                         ("openai-responses", "completed")):
        got = read_response(client, json.loads(translate_response(
            "anthropic", client, json.dumps(msg).encode(), model="m", request_id="r")))
        assert got.stop == stop
    body = {"model": "x", "max_tokens": 5, "stop_sequences": ["###"],
            "messages": [{"role": "user", "content": "hi"}]}
    assert req("anthropic", "openai-chat", body)["stop"] == ["###"]
    assert req("anthropic", "gemini", body)["generationConfig"]["stopSequences"] == ["###"]
    with pytest.raises(TranslationError) as err:
        req("anthropic", "openai-responses", body)
    assert err.value.status == 400 and "stop" in err.value.message


def test_edge_11_unusual_finish_reasons_have_explicit_mappings() -> None:
    def anth(reason: str) -> bytes:
        return json.dumps({"id": "msg_1", "content": [{"type": "text", "text": "t"}],
                           "stop_reason": reason, "usage": {}}).encode()
    for reason in ("pause_turn", "model_context_window_exceeded"):
        chat = json.loads(translate_response("anthropic", "openai-chat", anth(reason),
                                             model="m", request_id="r"))
        assert chat["choices"][0]["finish_reason"] == "length"
        resp = json.loads(translate_response("anthropic", "openai-responses", anth(reason),
                                             model="m", request_id="r"))
        assert resp["status"] == "incomplete"
        gem = json.loads(translate_response("anthropic", "gemini", anth(reason), model="m",
                                            request_id="r"))
        assert gem["candidates"][0]["finishReason"] == "MAX_TOKENS"
    bad = json.dumps({"candidates": [{"content": {"role": "model", "parts": []},
                                      "finishReason": "MALFORMED_FUNCTION_CALL"}]}).encode()
    with pytest.raises(TranslationError) as err:
        translate_response("gemini", "anthropic", bad, model="m", request_id="r")
    assert err.value.status == 502
    got = read_stream("anthropic", translate_stream("gemini", "anthropic",
                                                    b"data: " + bad + b"\n\n"))
    assert got.error is not None and got.stop is None
    for value in ("UNEXPECTED_TOOL_CALL", "OTHER"):
        other = bad.replace(b"MALFORMED_FUNCTION_CALL", value.encode())
        if value == "OTHER":
            out = json.loads(translate_response("gemini", "openai-chat", other, model="m",
                                                request_id="r"))
            assert out["choices"][0]["finish_reason"] == "content_filter"
        else:
            with pytest.raises(TranslationError):
                translate_response("gemini", "openai-chat", other, model="m", request_id="r")


def test_edge_12_no_empty_anthropic_text_block() -> None:
    chat = {"id": "x", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]}
    out = json.loads(translate_response("openai-chat", "anthropic", json.dumps(chat).encode(),
                                        model="m", request_id="r"))
    assert [b["type"] for b in out["content"]] == ["tool_use"]
    stream = chat_sse(choice({"role": "assistant", "content": ""}),
                      choice({"tool_calls": [{"index": 0, "id": "c", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]}),
                      choice({}, "tool_calls"))
    evs = events(translate_stream("openai-chat", "anthropic", stream))
    starts = [d["content_block"]["type"] for _, d in evs if d["type"] == "content_block_start"]
    assert starts == ["tool_use"]
    body = {"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": chat["choices"][0]["message"][
            "tool_calls"]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"}]}
    out = req("openai-chat", "anthropic", body)
    assert all(b.get("text", "x") for m in out["messages"] for b in m["content"])


def test_edge_13_thinking_block_order_and_single_message_start() -> None:
    for provider, name in (("gemini", "gemini_stream_thought_tool_call.sse"),
                           ("openai-responses", "openai_responses_stream_reasoning_tool_call.sse")):
        evs = events(translate_stream(provider, "anthropic", sse_wire(name), size=29))
        assert [d["type"] for _, d in evs].count("message_start") == 1
        open_kind: dict[int, str] = {}
        last_delta: dict[int, str] = {}
        for _, d in evs:
            if d["type"] == "content_block_start":
                open_kind[d["index"]] = d["content_block"]["type"]
            elif d["type"] == "content_block_delta":
                kind = open_kind[d["index"]]
                dt = d["delta"]["type"]
                assert dt in {"text": {"text_delta"}, "thinking": {
                    "thinking_delta", "signature_delta"}, "tool_use": {"input_json_delta"}}[kind]
                if kind == "thinking":
                    assert last_delta.get(d["index"]) != "signature_delta"  # signature last
                last_delta[d["index"]] = dt
            elif d["type"] == "content_block_stop":
                del open_kind[d["index"]]
        assert open_kind == {}
        assert "signature_delta" in last_delta.values()


def test_edge_14_thinking_and_signatures_replayed_only_to_their_owner() -> None:
    # Gemini -> Claude Code: the functionCall's thoughtSignature rides in a thinking block...
    out = translate_stream("gemini", "anthropic", sse_wire("gemini_stream_thought_tool_call.sse"))
    evs = events(out)
    sig = next(d["delta"]["signature"] for _, d in evs if d["type"] == "content_block_delta"
               and d["delta"]["type"] == "signature_delta")
    tool = next(d["content_block"] for _, d in evs if d["type"] == "content_block_start"
                and d["content_block"]["type"] == "tool_use")
    history = {"model": "m", "max_tokens": 100, "messages": [
        {"role": "user", "content": "coat?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "t", "signature": sig},
            {"type": "tool_use", "id": tool["id"], "name": "weather", "input": {"city": "SF"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool["id"],
                                      "content": "cold"}]}]}
    # ...and comes back to Gemini on the same call, exactly as Gemini sent it.
    g = req("anthropic", "gemini", history)
    call = next(p for c in g["contents"] for p in c["parts"] if "functionCall" in p)
    original = json.loads(raw("gemini_stream_thought_tool_call.sse").split(b"data: ")[3])
    want = original["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    assert call["thoughtSignature"] == want
    # The foreign signature is never sent to Anthropic; Anthropic's own is kept.
    a = req("anthropic", "anthropic", history)
    assert all(b["type"] != "thinking" for m in a["messages"] for b in m["content"])
    own = json.loads(json.dumps(history))
    own["messages"][1]["content"][0]["signature"] = "EuYBCkQYAiJA"
    a = req("anthropic", "anthropic", own)
    assert a["messages"][1]["content"][0] == {"type": "thinking", "thinking": "t",
                                              "signature": "EuYBCkQYAiJA"}
    g = req("anthropic", "gemini", own)  # Anthropic's signature never reaches Gemini
    call = next(p for c in g["contents"] for p in c["parts"] if "functionCall" in p)
    assert call["thoughtSignature"] == "skip_thought_signature_validator"


def test_edge_15_reasoning_into_responses_never_as_output_text() -> None:
    body = sse_wire("anthropic_stream_thinking_real.sse")
    evs = events(translate_stream("anthropic", "openai-responses", body))
    final = evs[-1][1]["response"]
    reasoning = [o for o in final["output"] if o["type"] == "reasoning"]
    (item,) = reasoning
    assert item["encrypted_content"].startswith("cs1:anthropic:")
    thinking = read_stream("anthropic", body).thinking
    texts = "".join(c["text"] for o in final["output"] if o["type"] == "message"
                    for c in o["content"])
    assert thinking[:40] not in texts
    # Codex replays the item; Anthropic gets its signed thinking block back intact.
    replay = {"model": "m", "input": [{"role": "user", "content": "q"}, item,
                                      {"type": "message", "role": "assistant", "content": [
                                          {"type": "output_text", "text": texts}]},
                                      {"role": "user", "content": "more"}]}
    a = req("openai-responses", "anthropic", replay)
    block = a["messages"][1]["content"][0]
    assert block["type"] == "thinking" and block["thinking"] == thinking
    assert block["signature"].startswith("EqcB") or len(block["signature"]) > 20
    # Responses' own encrypted_content goes back untouched when the provider is Responses.
    vec = sse_wire("openai_responses_stream_reasoning_tool_call.sse").replace(
        b'"type":"reasoning","summary":[{"type":"summary_text"',
        b'"type":"reasoning","encrypted_content":"gAAAAB-enc","summary":[{"type":"summary_text"')
    evs = events(translate_stream("openai-responses", "anthropic", vec))
    sig = next(d["delta"]["signature"] for _, d in evs if d["type"] == "content_block_delta"
               and d["delta"]["type"] == "signature_delta")
    back = req("anthropic", "openai-responses", {"model": "m", "max_tokens": 9, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "s",
                                           "signature": sig}, {"type": "text", "text": "a"}]}]})
    rs = next(i for i in back["input"] if i.get("type") == "reasoning")
    assert rs["encrypted_content"] == "gAAAAB-enc"
    # ...and never to Anthropic or Chat.
    a = req("anthropic", "anthropic", {"model": "m", "max_tokens": 9, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "s",
                                           "signature": sig}, {"type": "text", "text": "a"}]}]})
    assert [b["type"] for b in a["messages"][1]["content"]] == ["text"]


def test_edge_16_usage_arithmetic_across_dialects() -> None:
    cache = {"id": "msg_1", "content": [{"type": "text", "text": "x"}], "stop_reason": "end_turn",
             "usage": {"input_tokens": 21, "cache_creation_input_tokens": 100,
                       "cache_read_input_tokens": 188086, "output_tokens": 393}}
    chat = json.loads(translate_response("anthropic", "openai-chat", json.dumps(cache).encode(),
                                         model="m", request_id="r"))["usage"]
    assert chat["prompt_tokens"] == 21 + 100 + 188086
    assert chat["prompt_tokens_details"]["cached_tokens"] == 188086
    assert chat["total_tokens"] == chat["prompt_tokens"] + 393
    back = json.loads(translate_response("openai-chat", "anthropic", json.dumps(
        {"id": "c", "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "content": "x"}}], "usage": chat}).encode(), model="m", request_id="r"))["usage"]
    assert back == cache["usage"]
    gem = json.loads(translate_response("gemini", "anthropic", raw("gemini_usage_cached.json"),
                                        model="m", request_id="r"))["usage"]
    assert (gem["input_tokens"], gem["cache_read_input_tokens"]) == (16, 88759)
    thinking = {"candidates": [{"content": {"role": "model", "parts": [{"text": "a"}]},
                                "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5,
                                  "thoughtsTokenCount": 7, "totalTokenCount": 22}}
    chat = json.loads(translate_response("gemini", "openai-chat", json.dumps(thinking).encode(),
                                         model="m", request_id="r"))["usage"]
    assert chat["completion_tokens"] == 12
    assert chat["completion_tokens_details"]["reasoning_tokens"] == 7
    assert chat["total_tokens"] == 22


def test_edge_17_snapshots_last_wins_cumulative_not_added() -> None:
    got = read_stream("anthropic", translate_stream("gemini", "anthropic",
                                                    sse_wire("gemini_stream_text.sse")))
    assert got.usage is not None
    assert (got.usage["input_tokens"], got.usage["output_tokens"]) == (21, 47)
    body = sse_wire("anthropic_stream_usage_cache_excerpt.sse") + anth_sse(
        {"type": "message_stop"})
    got = read_stream("openai-chat", translate_stream("anthropic", "openai-chat", body))
    assert got.usage is not None
    assert (got.usage["prompt_tokens"], got.usage["completion_tokens"]) == (10682, 510)


FORBIDDEN = {"$schema", "additionalProperties", "const", "propertyNames", "$ref", "$defs",
             "definitions", "oneOf", "allOf", "patternProperties"}


def _walk(s: Any) -> list[dict[str, Any]]:
    if isinstance(s, dict):
        return [s] + [x for v in s.values() for x in _walk(v)]
    if isinstance(s, list):
        return [x for v in s for x in _walk(v)]
    return []


def test_edge_18_gemini_schema_sanitizer() -> None:
    deep: dict[str, Any] = {"type": "string", "const": "leaf"}
    for i in range(7):
        deep = {"type": "object", "additionalProperties": False,
                "properties": {f"l{i}": deep}, "required": [f"l{i}", "missing"]}
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
        "additionalProperties": False, "propertyNames": {"pattern": "^[a-z]+$"},
        "$defs": {"Pt": {"type": "object", "properties": {"x": {"type": "number"}}}},
        "properties": {
            "maybe": {"type": ["string", "null"]},
            "pt": {"$ref": "#/$defs/Pt"},
            "list": {"type": "array", "items": {"anyOf": [{"type": "integer"},
                                                          {"type": "null"}]}},
            "kind": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "fixed": {"const": "x"}, "deep": deep,
            "n": {"type": "integer", "enum": [1, 2], "format": "int32"}}}
    out = gemini_schema(schema)
    nodes = _walk(out)
    assert not any(FORBIDDEN & set(n) for n in nodes)
    assert not any(isinstance(n.get("type"), list) for n in nodes)
    props = out["properties"]
    assert props["maybe"] == {"type": "string", "nullable": True}
    assert props["pt"]["properties"]["x"] == {"type": "number"}
    assert props["list"]["items"] == {"type": "integer", "nullable": True}
    assert props["fixed"]["enum"] == ["x"]
    assert "enum" not in props["n"] and "format" not in props["n"]
    leaf = props["deep"]
    for i in reversed(range(7)):
        assert leaf["required"] == [f"l{i}"]
        leaf = leaf["properties"][f"l{i}"]
    assert leaf == {"type": "string", "enum": ["leaf"]}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [
        {"type": "function", "function": {"name": "f", "parameters": schema}},
        {"type": "function", "function": {"name": "noargs", "parameters": {
            "type": "object", "properties": {}, "additionalProperties": False}}}]}
    decls = req("openai-chat", "gemini", body)["tools"][0]["functionDeclarations"]
    assert decls[0]["parameters"] == out and "parameters" not in decls[1]


def test_edge_19_tool_names_renamed_and_mapped_back() -> None:
    long_name = "mcp__server.tools:" + "x" * 70
    body = {"contents": [{"role": "user", "parts": [{"text": "go"}]}], "tools": [
        {"functionDeclarations": [{"name": long_name, "parametersJsonSchema": {
            "type": "object", "properties": {"a": {"type": "string"}}}}]}]}
    for provider in ("anthropic", "openai-chat", "openai-responses"):
        prep = prepare("gemini", provider, json.dumps(body).encode(), model="m", stream=True)
        out = json.loads(prep.body)
        tools = out["tools"]
        name = tools[0].get("name") or tools[0]["function"]["name"]
        assert name != long_name and len(name) <= 64
        assert all(c.isalnum() or c in "_-" for c in name)
        again = prepare("gemini", provider, json.dumps(body).encode(), model="m", stream=True)
        assert again.context.tool_names == prep.context.tool_names  # deterministic
        if provider == "anthropic":
            up = anth_sse(START, {"type": "content_block_start", "index": 0, "content_block": {
                "type": "tool_use", "id": "t", "name": name, "input": {}}},
                {"type": "content_block_delta", "index": 0, "delta": {
                    "type": "input_json_delta", "partial_json": '{"a":"b"}'}},
                {"type": "content_block_stop", "index": 0},
                {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {}},
                {"type": "message_stop"})
            got = read_stream("gemini", translate_stream("anthropic", "gemini", up,
                                                         context=prep.context))
            assert got.tools[0]["name"] == long_name
            msg = {"id": "msg_1", "stop_reason": "tool_use", "usage": {}, "content": [
                {"type": "tool_use", "id": "t", "name": name, "input": {"a": "b"}}]}
            nonstream = json.loads(translate_response(
                "anthropic", "gemini", json.dumps(msg).encode(), model="m", request_id="r",
                context=prep.context))
            part = nonstream["candidates"][0]["content"]["parts"][0]
            assert part["functionCall"]["name"] == long_name


def test_edge_20_tool_results_shapes() -> None:
    img = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                       "data": "iVBORw0KGgo="}}
    body = {"model": "m", "max_tokens": 50, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "a", "input": {}},
            {"type": "tool_use", "id": "t2", "name": "b", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1",
             "content": [{"type": "text", "text": "one"}, img]},
            {"type": "tool_result", "tool_use_id": "t2", "content": "boom", "is_error": True}]}]}
    chat = req("anthropic", "openai-chat", body)["messages"]
    tools = [m for m in chat if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in tools] == [
        ("t1", "one"), ("t2", "Error: boom")]
    assert chat[-1]["role"] == "user"
    assert chat[-1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    gem = req("anthropic", "gemini", body)["contents"]
    calls = [p for p in gem[1]["parts"] if "functionCall" in p]
    results = [p["functionResponse"] for p in gem[2]["parts"] if "functionResponse" in p]
    assert len(calls) == len(results) == 2
    assert results[0]["response"] == {"result": "one"} and results[0]["name"] == "a"
    assert results[1]["response"] == {"error": "boom"} and results[1]["name"] == "b"
    resp = req("anthropic", "openai-responses", body)["input"]
    outs = [i for i in resp if i.get("type") == "function_call_output"]
    assert [o["call_id"] for o in outs] == ["t1", "t2"]
    assert isinstance(outs[0]["output"], list) and outs[1]["output"] == "Error: boom"
    fc = [i for i in resp if i.get("type") == "function_call"]
    assert [f["call_id"] for f in fc] == ["t1", "t2"]


def test_edge_21_system_prompts_order_preserved() -> None:
    body = {"model": "m", "messages": [
        {"role": "system", "content": "S1"}, {"role": "user", "content": "u"},
        {"role": "developer", "content": "S2"}, {"role": "user", "content": "v"}]}
    a = req("openai-chat", "anthropic", body)
    assert [b["text"] for b in a["system"]] == ["S1", "S2"]
    assert [m["role"] for m in a["messages"]] == ["user"]
    cc = {"model": "m", "max_tokens": 9, "system": [
        {"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "B"}], "messages": [
        {"role": "user", "content": "u"}, {"role": "system", "content": "C"},
        {"role": "user", "content": "v"}]}
    g = req("anthropic", "gemini", cc)
    assert g["systemInstruction"]["parts"][0]["text"] == "A\n\nB\n\nC"
    c = req("anthropic", "openai-chat", cc)["messages"]
    assert [(m["role"], m["content"]) for m in c] == [
        ("system", "A\n\nB"), ("user", "u"), ("system", "C"), ("user", "v")]
    r = req("anthropic", "openai-responses", cc)
    assert r["instructions"] == "A\n\nB"
    assert r["input"][1] == {"type": "message", "role": "system",
                             "content": [{"type": "input_text", "text": "C"}]}


def test_edge_22_images_convert_between_forms() -> None:
    body = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/webp",
                                     "data": "AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}]}]}
    chat = req("anthropic", "openai-chat", body)["messages"][0]["content"]
    assert chat[0]["image_url"]["url"] == "data:image/webp;base64,AAAA"
    assert chat[1]["image_url"]["url"] == "https://x.test/a.png"
    resp = req("anthropic", "openai-responses", body)["input"][0]["content"]
    assert resp[0]["image_url"] == "data:image/webp;base64,AAAA"  # a string, not an object
    gem = req("anthropic", "gemini", body)["contents"][0]["parts"]
    assert gem[0] == {"inlineData": {"mimeType": "image/webp", "data": "AAAA"}}
    assert gem[1]["fileData"]["fileUri"] == "https://x.test/a.png"
    back = req("gemini", "anthropic", {"contents": [{"role": "user", "parts": gem[:1]}]})
    assert back["messages"][0]["content"][0]["source"] == {
        "type": "base64", "media_type": "image/webp", "data": "AAAA"}
    fid = {"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_image", "file_id": "file-123"}]}]}
    with pytest.raises(TranslationError) as err:
        req("openai-responses", "gemini", fid)
    assert err.value.status == 400


def test_edge_23_errors_status_and_envelopes() -> None:
    status, body = translate_error("anthropic", "openai-chat", 529,
                                   raw("anthropic_error.json"))
    err = json.loads(body)["error"]
    assert status == 503 and set(err) == {"message", "type", "param", "code"}
    status, body = translate_error("gemini", "anthropic", 400,
                                   raw("gemini_error_function_response_count.json"))
    doc = json.loads(body)
    assert status == 400 and doc["type"] == "error"
    assert doc["error"]["type"] == "invalid_request_error"
    assert "function response parts" in doc["error"]["message"]
    status, body = translate_error("openai-chat", "gemini", 429,
                                   b'{"error":{"message":"slow","type":"rate_limit_exceeded",'
                                   b'"param":null,"code":null}}')
    assert status == 429 and json.loads(body)["error"]["status"] == "RESOURCE_EXHAUSTED"
    status, _ = translate_error("openai-chat", "anthropic", 503, b"not json")
    assert status == 529
    got = read_stream("openai-responses", translate_stream(
        "anthropic", "openai-responses", raw("anthropic_stream_error.sse")))
    types = [d["type"] for _, d in got.events]
    assert types[-2:] == ["error", "response.failed"] and not got.terminal
    got = read_stream("anthropic", translate_stream(
        "openai-responses", "anthropic", raw("openai_responses_stream_error_failed.sse")))
    assert got.error["type"] == "rate_limit_error" and got.stop is None
    assert [d["type"] for _, d in got.events].count("error") == 1


def test_edge_24_stream_termination_and_early_eof() -> None:
    body = sse_wire("openai_chat_stream_text.sse")
    ends = {"anthropic": "message_stop", "openai-responses": "response.completed"}
    for client, last in ends.items():
        evs = events(translate_stream("openai-chat", client, body))
        assert evs[-1][1]["type"] == last
    assert translate_stream("openai-chat", "gemini", body).endswith(b"\n\n")
    assert b"[DONE]" not in translate_stream("openai-chat", "gemini", body)
    assert events(translate_stream("anthropic", "openai-chat",
                                   sse_wire("anthropic_stream_text.sse")))[-1][1] == "[DONE]"
    cut = body[: body.index(b'"finish_reason":"stop"') - 200]
    cut = cut[: cut.rindex(b"\n\n") + 2]
    for client in ("anthropic", "openai-responses", "gemini"):
        got = read_stream(client, translate_stream("openai-chat", client, cut))
        assert got.error is not None and got.stop is None, client
    got = read_stream("openai-chat", translate_stream("anthropic", "openai-chat",
                                                      sse_wire("anthropic_stream_text.sse")[:400]))
    assert got.error is not None and not got.terminal
    st = StreamTranslator("openai-chat", "anthropic", model="m", request_id="r")
    st.feed(body[:300])
    failed = st.fail(500, "upstream reset")
    assert b"event: error" in failed and st.close() == b""


def test_edge_25_sse_framing_variants() -> None:
    body = sse_wire("openai_responses_stream_text.sse")
    want = read_stream("anthropic", translate_stream("openai-responses", "anthropic", body))
    variant = body.replace(b"data: ", b"data:").replace(b"\n", b"\r\n")
    variant = b": keep-alive\r\n\r\nevent: ping\r\ndata: {\"type\":\"ping\"}\r\n\r\n" + variant
    variant = variant.replace(b"event: response.output_text.delta",
                              b"event: something.else")  # Codex trusts the JSON type
    variant += b"event: response.future_event\r\ndata: {\"type\":\"response.future\"}\r\n\r\n"
    got = read_stream("anthropic", translate_stream("openai-responses", "anthropic", variant,
                                                    size=3))
    assert got.text == want.text and got.text and got.stop == "end_turn"
    anth = sse_wire("anthropic_stream_text.sse").replace(b"\n", b"\r")
    got = read_stream("openai-chat", translate_stream("anthropic", "openai-chat", anth, size=4))
    assert got.text == read_stream("anthropic", sse_wire("anthropic_stream_text.sse")).text


def test_chat_reasoning_content_comes_back_on_tool_call_turns() -> None:
    # DeepSeek thinking mode streams reasoning_content and a tool call to Claude Code; Claude
    # Code echoes the (unsigned) thinking block; DeepSeek wants it back on that turn, else 400.
    body = chat_sse(choice({"role": "assistant", "reasoning_content": "run it"}),
                    choice({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                            "function": {"name": "Bash", "arguments": "{}"}}]}),
                    choice({}, "tool_calls"))
    evs = events(translate_stream("openai-chat", "anthropic", body))
    thinking = next(d["content_block"] for _, d in evs if d["type"] == "content_block_start"
                    and d["content_block"]["type"] == "thinking")
    history = {"model": "m", "max_tokens": 100, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [
            {**thinking, "thinking": "run it"},
            {"type": "tool_use", "id": "call_1", "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1",
                                      "content": "ok"}]}]}
    c = req("anthropic", "openai-chat", history)
    turn = next(m for m in c["messages"] if m["role"] == "assistant")
    assert turn["reasoning_content"] == "run it"
    assert turn["tool_calls"][0]["id"] == "call_1"
    # Anthropic's own signed thinking is not handed to a Chat provider.
    history["messages"][1]["content"][0]["signature"] = "EuYBCkQYAiJA"
    turn = next(m for m in req("anthropic", "openai-chat", history)["messages"]
                if m["role"] == "assistant")
    assert "reasoning_content" not in turn
