"""Every recorded upstream body, streamed and not, translated for every other client dialect:
the client must read the same text, thinking, tool calls and a correct stop reason."""

from __future__ import annotations

import json

import pytest

from workers.translator import can_translate, prepare, translate_response

from ._clients import events, read_response, read_stream, translate_stream
from ._vectors import doc, raw, sse_wire

DIALECTS = ["anthropic", "openai-chat", "openai-responses", "gemini"]
NATURAL = {"anthropic": "end_turn", "openai-chat": "stop", "openai-responses": "completed",
           "gemini": "STOP"}
TOOL = {"anthropic": "tool_use", "openai-chat": "tool_calls", "openai-responses": "completed",
        "gemini": "STOP"}

STREAMS = {
    "anthropic": ["anthropic_stream_text.sse", "anthropic_stream_thinking_real.sse",
                  "anthropic_stream_tool_use.sse", "anthropic_stream_tool_use_real.sse",
                  "anthropic_stream_thinking.sse"],
    "openai-chat": ["openai_chat_stream_text.sse", "openai_chat_stream_parallel_tool_calls.sse",
                    "openai_chat_stream_include_usage.sse"],
    "openai-responses": ["openai_responses_stream_text.sse",
                         "openai_responses_stream_tool_call.sse",
                         "openai_responses_stream_reasoning_tool_call.sse"],
    "gemini": ["gemini_stream_text.sse", "gemini_stream_parallel_tool_calls.sse",
               "gemini_stream_thought_tool_call.sse", "gemini_stream_text_cookbook.sse"],
}
RESPONSES = {
    "anthropic": ["anthropic_nonstream_response.json", "anthropic_nonstream_thinking_response.json",
                  "anthropic_nonstream_parallel_tool_use_response.json"],
    "openai-chat": ["openai_chat_nonstream_response.json", "openai_chat_tools_response.json"],
    "openai-responses": ["openai_responses_nonstream_response.json",
                         "openai_responses_tools_response.json"],
    "gemini": ["gemini_nonstream_text_response.json", "gemini_nonstream_tools_response.json",
               "gemini_usage_cached.json", "gemini_multiturn_function_response_response.json"],
}
REQUESTS = {
    "anthropic": ["anthropic_nonstream_request.json", "anthropic_stream_tool_use_request.json"],
    "openai-chat": ["openai_chat_nonstream_request.json", "openai_chat_tools_request.json"],
    "openai-responses": ["openai_responses_nonstream_request.json",
                         "openai_responses_tools_request.json"],
    "gemini": ["gemini_multiturn_function_response_request.json",
               "gemini_nonstream_tools_request.json"],
}
PAIRS = [(p, c) for p in DIALECTS for c in DIALECTS if p != c]


def _args(s: str | None) -> object:
    return json.loads(s) if s else {}


def test_all_twelve_pairs_translatable() -> None:
    assert sum(can_translate(a, b) for a in DIALECTS for b in DIALECTS if a != b) == 12
    assert not can_translate("anthropic", "cohere")


@pytest.mark.parametrize(("provider", "client"), PAIRS)
def test_stream_vectors(provider: str, client: str) -> None:
    for name in STREAMS[provider]:
        body = sse_wire(name)
        want = read_stream(provider, body)
        got = read_stream(client, translate_stream(provider, client, body))
        assert got.terminal and got.error is None, name
        assert got.text == want.text, name
        assert got.thinking.replace("\n\n", "") == want.thinking.replace("\n\n", ""), name
        assert [(t["name"], _args(t["args"])) for t in got.tools] == [
            (t["name"], _args(t["args"])) for t in want.tools], name
        assert len({t["id"] for t in got.tools}) == len(got.tools), name
        assert got.stop == (TOOL if want.tools else NATURAL)[client], name


@pytest.mark.parametrize(("provider", "client"), PAIRS)
def test_nonstream_vectors(provider: str, client: str) -> None:
    for name in RESPONSES[provider]:
        want = read_response(provider, doc(name))
        out = translate_response(provider, client, raw(name), model="client-model",
                                 request_id="req1")
        got = read_response(client, json.loads(out))
        assert got.text == want.text, name
        assert got.thinking.replace("\n\n", "") == want.thinking.replace("\n\n", ""), name
        assert [(t["name"], _args(t["args"])) for t in got.tools] == [
            (t["name"], _args(t["args"])) for t in want.tools], name
        assert got.stop == (TOOL if want.tools else NATURAL)[client], name


@pytest.mark.parametrize(("client", "provider"), PAIRS)
def test_request_vectors(client: str, provider: str) -> None:
    for name in REQUESTS[client]:
        out = json.loads(prepare(client, provider, raw(name), model="up-model",
                                 stream=True).body)
        if provider == "gemini":
            assert "model" not in out and out["contents"]
        else:
            assert out["model"] == "up-model"
        assert out.get("stream") is True or provider == "gemini"
        # The tools survive with their names.
        src = json.loads(raw(name))
        n_tools = sum(len(t.get("function_declarations", t.get("functionDeclarations", [])))
                      if "function_declarations" in t or "functionDeclarations" in t else 1
                      for t in src.get("tools") or [])
        if provider == "gemini":
            got_tools = sum(len(t["functionDeclarations"]) for t in out.get("tools") or [])
        else:
            got_tools = len(out.get("tools") or [])
        assert got_tools == n_tools, name


def test_anthropic_stream_usage_reaches_every_client() -> None:
    body = sse_wire("anthropic_stream_thinking_real.sse")
    chat = read_stream("openai-chat", translate_stream("anthropic", "openai-chat", body))
    assert chat.usage is not None
    assert chat.usage["prompt_tokens"] == 50 and chat.usage["completion_tokens"] == 452
    resp = read_stream("openai-responses",
                       translate_stream("anthropic", "openai-responses", body))
    assert resp.usage is not None and resp.usage["total_tokens"] == 502
    gem = read_stream("gemini", translate_stream("anthropic", "gemini", body))
    assert gem.usage is not None and gem.usage["totalTokenCount"] == 502


def test_responses_sequence_numbers_increase_and_ids_present() -> None:
    out = translate_stream("openai-chat", "openai-responses",
                           sse_wire("openai_chat_stream_parallel_tool_calls.sse"))
    evs = events(out)
    seqs = [d["sequence_number"] for _, d in evs]
    assert seqs == list(range(len(seqs)))
    assert all(name == d["type"] for name, d in evs)
    assert evs[0][1]["type"] == "response.created"
    final = evs[-1][1]["response"]
    assert final["id"] == "resp_req1" and final["usage"]["total_tokens"] >= 0
    assert [o["type"] for o in final["output"]] == ["function_call", "function_call"]
