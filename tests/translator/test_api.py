"""The public API: exports, prepare/context, previous_response_id, count_tokens estimate."""

from __future__ import annotations

import json

import pytest

import workers.translator as translator
from workers.translator import (
    TranslationError,
    count_tokens_estimate,
    prepare,
    translate_request,
)

from ._vectors import raw


def test_all_matches_exports() -> None:
    public = {n for n in dir(translator) if not n.startswith("_")
              and not isinstance(getattr(translator, n), type(translator))}
    assert set(translator.__all__) <= public
    for name in ("can_translate", "translate_request", "translate_response", "translate_error",
                 "StreamTranslator", "TranslationError", "count_tokens_estimate", "prepare",
                 "Prepared", "TranslationContext"):
        assert name in translator.__all__


def test_translation_error_has_status_and_message() -> None:
    err = TranslationError("nope")
    assert (err.status, err.message) == (400, "nope")


def test_previous_response_id_is_a_clear_400() -> None:
    body = json.dumps({"model": "m", "previous_response_id": "resp_1", "input": "hi"}).encode()
    with pytest.raises(TranslationError) as err:
        translate_request("openai-responses", "anthropic", body, model="m", stream=True)
    assert err.value.status == 400 and "statelessly" in err.value.message


def test_invalid_json_is_a_400() -> None:
    with pytest.raises(TranslationError):
        translate_request("anthropic", "gemini", b"{nope", model="m", stream=False)


def test_chat_include_usage_recorded_in_context() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ctx = prepare("openai-chat", "anthropic", json.dumps(body).encode(), model="m",
                  stream=True).context
    assert ctx.include_usage is False
    body["stream_options"] = {"include_usage": True}
    ctx = prepare("openai-chat", "anthropic", json.dumps(body).encode(), model="m",
                  stream=True).context
    assert ctx.include_usage is True


def test_codex_style_request_to_chat_and_anthropic() -> None:
    body = {"model": "gpt-5", "stream": True, "store": False,
            "include": ["reasoning.encrypted_content"], "reasoning": {"effort": "high"},
            "parallel_tool_calls": True, "tool_choice": "auto", "prompt_cache_key": "k",
            "input": [{"type": "message", "role": "developer", "content": [
                {"type": "input_text", "text": "You are Codex."}]},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "fix it"}]}],
            "tools": [{"type": "function", "name": "shell", "parameters": {
                "type": "object", "properties": {"cmd": {"type": "string"}}}},
                {"type": "custom", "name": "apply_patch", "description": "patch",
                 "format": {"type": "grammar", "syntax": "lark", "definition": "start: x"}},
                {"type": "web_search"}, {"type": "tool_search"}]}
    prep = prepare("openai-responses", "openai-chat", json.dumps(body).encode(), model="m",
                   stream=True)
    chat = json.loads(prep.body)
    assert chat["messages"][0] == {"role": "developer", "content": "You are Codex."}
    assert [t["function"]["name"] for t in chat["tools"]] == ["shell", "apply_patch"]
    assert chat["reasoning_effort"] == "high" and chat["prompt_cache_key"] == "k"
    assert prep.context.custom_tools == ["apply_patch"]
    assert "hosted tool web_search" in prep.context.dropped
    anth = json.loads(prepare("openai-responses", "anthropic", json.dumps(body).encode(),
                              model="m", stream=True).body)
    assert anth["system"][0]["text"] == "You are Codex."
    assert anth["thinking"]["type"] == "enabled"


def test_custom_tool_call_comes_back_as_custom_for_codex() -> None:
    body = {"model": "m", "input": "x", "tools": [{"type": "custom", "name": "apply_patch"}]}
    prep = prepare("openai-responses", "anthropic", json.dumps(body).encode(), model="m",
                   stream=False)
    msg = {"id": "msg_1", "stop_reason": "tool_use", "usage": {}, "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "apply_patch",
         "input": {"input": "*** Begin Patch"}}]}
    out = json.loads(translator.translate_response(
        "anthropic", "openai-responses", json.dumps(msg).encode(), model="m", request_id="r",
        context=prep.context))
    (item,) = out["output"]
    assert item["type"] == "custom_tool_call" and item["input"] == "*** Begin Patch"


def test_namespace_tool_call_comes_back_with_its_namespace_for_codex() -> None:
    # Codex 0.171 groups tools ({"type": "namespace"}); a call of a grouped tool must carry
    # "namespace" or Codex answers "unsupported call: <name>".
    fn = {"type": "function", "name": "close_agent", "parameters": {"type": "object"}}
    body = {"model": "m", "input": "x", "stream": True, "tools": [
        {"type": "namespace", "name": "multi_agent_v1", "tools": [fn]},
        {"type": "function", "name": "exec_command", "parameters": {"type": "object"}}]}
    prep = prepare("openai-responses", "anthropic", json.dumps(body).encode(), model="m",
                   stream=True)
    assert [t["name"] for t in json.loads(prep.body)["tools"]] == ["close_agent", "exec_command"]
    msg = {"id": "msg_1", "stop_reason": "tool_use", "usage": {}, "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "close_agent", "input": {"target": "a"}},
        {"type": "tool_use", "id": "toolu_2", "name": "exec_command", "input": {"cmd": "ls"}}]}
    out = json.loads(translator.translate_response(
        "anthropic", "openai-responses", json.dumps(msg).encode(), model="m", request_id="r",
        context=prep.context))
    assert [(i["name"], i.get("namespace")) for i in out["output"]] == [
        ("close_agent", "multi_agent_v1"), ("exec_command", None)]
    sse = b"".join(f"event: {d['type']}\ndata: {json.dumps(d)}\n\n".encode() for d in [
        {"type": "message_start", "message": {"id": "msg_1", "model": "c", "content": [],
                                              "usage": {"input_tokens": 1, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "close_agent", "input": {}}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {}},
        {"type": "message_stop"}])
    st = translator.StreamTranslator("anthropic", "openai-responses", model="m",
                                     request_id="r", context=prep.context)
    wire = (st.feed(sse) + st.close()).decode()
    items = [json.loads(line[5:]) for line in wire.splitlines() if line.startswith("data:")]
    added = [e["item"] for e in items if e["type"] == "response.output_item.added"]
    done = [e["item"] for e in items if e["type"] == "response.output_item.done"]
    assert added[0]["namespace"] == done[0]["namespace"] == "multi_agent_v1"


def test_gemini_cli_request_to_chat() -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "route"}]}],
            "generationConfig": {"responseMimeType": "application/json",
                                 "responseJsonSchema": {"type": "object", "properties": {
                                     "model": {"type": "string"}}},
                                 "thinkingConfig": {"includeThoughts": True,
                                                    "thinkingBudget": 2048}}}
    chat = json.loads(translate_request("gemini", "openai-chat", json.dumps(body).encode(),
                                        model="m", stream=False))
    assert chat["response_format"]["type"] == "json_schema"
    assert chat["response_format"]["json_schema"]["schema"]["properties"]["model"]
    resp = json.loads(translate_request("gemini", "openai-responses",
                                        json.dumps(body).encode(), model="m", stream=False))
    assert resp["text"]["format"]["type"] == "json_schema"
    assert resp["reasoning"]["effort"] == "low"


def test_count_tokens_estimate_grows_with_content() -> None:
    small = count_tokens_estimate("anthropic", raw("anthropic_nonstream_request.json"))
    big = json.loads(raw("anthropic_nonstream_request.json"))
    big["messages"][0]["content"] = "word " * 400
    large = count_tokens_estimate("anthropic", json.dumps(big).encode())
    assert 0 < small < large and 400 <= large <= 700
    with_tools = count_tokens_estimate("anthropic", raw("anthropic_stream_tool_use_request.json"))
    assert with_tools > small


def test_claude_code_user_id_reaches_openai_providers_as_an_opaque_short_id() -> None:
    """Claude Code's metadata.user_id is a ~150-character JSON string with a device id: OpenAI
    takes at most 64 characters, and no device id should reach a third party."""
    long_id = json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": "s" * 36})
    body = {"model": "m", "max_tokens": 5, "metadata": {"user_id": long_id},
            "messages": [{"role": "user", "content": "hi"}]}
    seen = set()
    for target in ("openai-chat", "openai-responses"):
        out = json.loads(prepare("anthropic", target, json.dumps(body).encode(), model="m",
                                 stream=False).body)
        assert len(out["user"]) <= 64 and "d" * 8 not in out["user"]
        seen.add(out["user"])
    assert len(seen) == 1  # stable: the same user is the same id everywhere
    body["metadata"]["user_id"] = "alice"
    out = json.loads(prepare("anthropic", "openai-chat", json.dumps(body).encode(), model="m",
                             stream=False).body)
    assert out["user"] == "alice"


def test_count_request_for_a_provider_that_counts() -> None:
    """A count goes to the provider's own count endpoint, translated, with only the fields
    that endpoint takes (no max_tokens, stream or sampling)."""
    body = {"model": "claude-x", "system": "be brief", "messages": [
        {"role": "user", "content": "hello"}], "tools": [
        {"name": "ls", "description": "list", "input_schema": {"type": "object"}}]}
    to_gemini = json.loads(translator.count_tokens_request(
        "anthropic", "gemini", json.dumps(body).encode(), model="gemini-2.5-pro"))
    inner = to_gemini["generateContentRequest"]
    assert list(to_gemini) == ["generateContentRequest"]
    assert inner["model"] == "models/gemini-2.5-pro"
    assert inner["contents"] == [{"role": "user", "parts": [{"text": "hello"}]}]
    assert inner["systemInstruction"]["parts"][0]["text"] == "be brief"
    assert inner["tools"][0]["functionDeclarations"][0]["name"] == "ls"
    assert "generationConfig" not in inner
    gem = {"generateContentRequest": {"model": "models/g", "contents": [
        {"role": "user", "parts": [{"text": "hi"}]}],
        "systemInstruction": {"parts": [{"text": "sys"}]}}}
    to_claude = json.loads(translator.count_tokens_request(
        "gemini", "anthropic", json.dumps(gem).encode(), model="claude-sonnet-4-5"))
    assert set(to_claude) == {"model", "messages", "system"}
    assert to_claude["messages"][0]["content"][0]["text"] == "hi"
    assert count_tokens_estimate("gemini", json.dumps(gem).encode()) > 0
    with pytest.raises(TranslationError):
        translator.count_tokens_request("anthropic", "openai-chat", json.dumps(body).encode(),
                                        model="m")
    assert translator.count_tokens_result("anthropic", b'{"input_tokens": 17}') == 17
    assert translator.count_tokens_result("gemini", b'{"totalTokens": 9}') == 9
    for bad in (b'{"totalTokens": "9"}', b'{"input_tokens": -1}', b"[]"):
        with pytest.raises(TranslationError):
            translator.count_tokens_result("gemini" if b"total" in bad else "anthropic", bad)


def test_malformed_upstream_stream_events_raise_a_typed_502() -> None:
    """Garbage from a provider is its protocol error, typed, whatever the pair: the router
    falls back before content or fails the stream after (seen by fuzzing: these used to escape
    as AttributeError/TypeError)."""
    import itertools

    from workers.translator import StreamTranslator, TranslationError

    garbage = {
        "anthropic": b'event: message_delta\ndata: {"type":"message_delta","delta":null,'
                     b'"usage":"x"}\n\n',
        "openai-chat": b'data: {"choices":"not a list","usage":7}\n\n',
        "openai-responses": b'data: {"type":"response.output_item.done","item":null}\n\n',
        "gemini": b'data: {"candidates":"x","usageMetadata":5}\n\n',
    }
    dialects = list(garbage)
    for provider, client in itertools.permutations(dialects, 2):
        st = StreamTranslator(provider, client, model="m", request_id="r")
        try:
            st.feed(garbage[provider])
            st.close()
        except TranslationError as exc:
            assert exc.status == 502 and "unreadable" in exc.message
        # not raising is fine too (the event was skippable), any other exception is not
