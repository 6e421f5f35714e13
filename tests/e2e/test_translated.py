"""Cross-dialect end to end: each official SDK against fake upstreams of every other dialect,
a two-turn tool-use conversation (call -> result -> answer), streamed and not, asserting what
the SDK hands to the program: tool names, parsed arguments, final text, stop reason, usage."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as gtypes

from schemas.events import RequestCompleted
from tests.e2e.conftest import CLIENT_KEY, DIALECTS, World, only
from tests.e2e.gateway import Gateway, event_count, events
from tests.fakes.upstream import DEFAULT_TEXT, FAKE_COUNT_TOKENS, FAKE_TOOL_CALLS, Behavior

PAIRS = [(c, p) for c in DIALECTS for p in DIALECTS if c != p]
MODEL = "any-model-1"
TOOLS_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"},
                                                 "query": {"type": "string"}}}


def _expected_calls(provider: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for call in FAKE_TOOL_CALLS[provider]:
        args = call.get("arguments", call.get("args"))
        out.append((call["name"], json.loads(args) if isinstance(args, str) else args))
    return out


# -- one driver per client SDK: turn 1 (tool call), turn 2 (tool result -> text) ------------
def _anthropic(gw: Gateway, stream: bool) -> dict[str, Any]:
    client = anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0)
    tools = [{"name": n, "description": n, "input_schema": TOOLS_SCHEMA}
             for n in ("weather", "search")]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather and news?"}]

    def call() -> Any:
        if stream:
            with client.messages.stream(model=MODEL, max_tokens=256, tools=tools,  # type: ignore[arg-type]
                                        messages=messages) as s:  # type: ignore[arg-type]
                return s.get_final_message()
        return client.messages.create(model=MODEL, max_tokens=256, tools=tools,  # type: ignore[arg-type]
                                      messages=messages)  # type: ignore[arg-type]

    first = call()
    uses = [b for b in first.content if b.type == "tool_use"]
    messages.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
    messages.append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": u.id, "content": "sunny"} for u in uses]})
    second = call()
    return {
        "calls": [(u.name, u.input) for u in uses], "ids": [u.id for u in uses],
        "stop1": first.stop_reason,
        "text": "".join(b.text for b in second.content if b.type == "text"),
        "stop2": second.stop_reason, "usage_out": second.usage.output_tokens,
    }


def _chat(gw: Gateway, stream: bool) -> dict[str, Any]:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    tools = [{"type": "function", "function": {"name": n, "description": n,
                                               "parameters": TOOLS_SCHEMA}}
             for n in ("weather", "search")]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather and news?"}]

    def call() -> tuple[str, list[tuple[str, str, str]], str | None, Any]:
        if not stream:
            r = client.chat.completions.create(model=MODEL, messages=messages, tools=tools)  # type: ignore[arg-type]
            m = r.choices[0].message
            calls = [(c.id, c.function.name, c.function.arguments)
                     for c in m.tool_calls or []]  # type: ignore[union-attr]
            return m.content or "", calls, r.choices[0].finish_reason, r.usage
        text, parts, finish, usage = "", {}, None, None
        for chunk in client.chat.completions.create(
                model=MODEL, messages=messages, tools=tools, stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True}):
            if chunk.usage:
                usage = chunk.usage
            for ch in chunk.choices:
                text += ch.delta.content or ""
                for tc in ch.delta.tool_calls or []:
                    slot = parts.setdefault(tc.index, ["", "", ""])
                    slot[0] = tc.id or slot[0]
                    if tc.function and tc.function.name:
                        slot[1] = tc.function.name
                    if tc.function and tc.function.arguments:
                        slot[2] += tc.function.arguments
                finish = ch.finish_reason or finish
        return text, [tuple(parts[i]) for i in sorted(parts)], finish, usage  # type: ignore[misc]

    _, calls, finish1, _ = call()
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
        for i, n, a in calls]})
    for i, _, _ in calls:
        messages.append({"role": "tool", "tool_call_id": i, "content": "sunny"})
    text, _, finish2, usage = call()
    return {"calls": [(n, json.loads(a)) for _, n, a in calls], "ids": [i for i, _, _ in calls],
            "stop1": finish1, "text": text, "stop2": finish2,
            "usage_out": usage.completion_tokens if usage else None}


def _responses(gw: Gateway, stream: bool) -> dict[str, Any]:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    tools = [{"type": "function", "name": n, "description": n, "parameters": TOOLS_SCHEMA}
             for n in ("weather", "search")]
    items: list[Any] = [{"role": "user", "content": "Weather and news?"}]

    def call() -> Any:
        if not stream:
            return client.responses.create(model=MODEL, input=items, tools=tools)  # type: ignore[arg-type]
        done = [e for e in client.responses.create(model=MODEL, input=items, tools=tools,  # type: ignore[arg-type]
                                                   stream=True)
                if e.type == "response.completed"]
        assert len(done) == 1, "a stream must end with exactly one response.completed"
        return done[0].response

    first = call()
    calls = [o for o in first.output if o.type == "function_call"]
    items.extend(c.model_dump(exclude_none=True) for c in calls)
    items.extend({"type": "function_call_output", "call_id": c.call_id, "output": "sunny"}
                 for c in calls)
    second = call()
    return {"calls": [(c.name, json.loads(c.arguments)) for c in calls],
            "ids": [c.call_id for c in calls],
            "stop1": "tool_calls" if calls else first.status, "text": second.output_text,
            "stop2": second.status, "usage_out": second.usage.output_tokens,
            "resp_id": second.id}


def _gemini(gw: Gateway, stream: bool) -> dict[str, Any]:
    client = genai.Client(api_key=CLIENT_KEY,
                          http_options=gtypes.HttpOptions(base_url=gw.url))
    decl = [gtypes.FunctionDeclaration(name=n, description=n, parameters_json_schema=TOOLS_SCHEMA)
            for n in ("weather", "search")]
    config = gtypes.GenerateContentConfig(tools=[gtypes.Tool(function_declarations=decl)],
                                          automatic_function_calling=gtypes.
                                          AutomaticFunctionCallingConfig(disable=True))
    contents: list[Any] = [gtypes.Content(role="user", parts=[gtypes.Part(text="Weather?")])]

    def call() -> tuple[list[Any], str, Any, Any]:
        if not stream:
            r = client.models.generate_content(model=MODEL, contents=contents, config=config)
            parts = r.candidates[0].content.parts or []  # type: ignore[index,union-attr]
            return parts, r.text or "", r.candidates[0].finish_reason, r.usage_metadata  # type: ignore[index]
        parts, text, finish, usage = [], "", None, None
        for chunk in client.models.generate_content_stream(model=MODEL, contents=contents,
                                                           config=config):
            if chunk.candidates and chunk.candidates[0].content:
                for part in chunk.candidates[0].content.parts or []:
                    parts.append(part)
                    text += part.text or "" if not part.thought else ""
                finish = chunk.candidates[0].finish_reason or finish
            usage = chunk.usage_metadata or usage
        return parts, text, finish, usage

    parts, _, finish1, _ = call()
    calls = [p.function_call for p in parts if p.function_call]
    contents.append(gtypes.Content(role="model", parts=[p for p in parts if p.function_call]))
    contents.append(gtypes.Content(role="user", parts=[
        gtypes.Part(function_response=gtypes.FunctionResponse(
            id=c.id, name=c.name, response={"result": "sunny"})) for c in calls]))
    _, text, finish2, usage = call()
    return {"calls": [(c.name, dict(c.args or {})) for c in calls],
            "ids": [c.id for c in calls if c.id], "stop1": finish1, "text": text,
            "stop2": finish2,
            "usage_out": (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
            if usage else None}


DRIVERS = {"anthropic": _anthropic, "openai-chat": _chat, "openai-responses": _responses,
           "gemini": _gemini}
STOP_TOOL = {"anthropic": "tool_use", "openai-chat": "tool_calls",
             "openai-responses": "tool_calls", "gemini": gtypes.FinishReason.STOP}
STOP_END = {"anthropic": "end_turn", "openai-chat": "stop", "openai-responses": "completed",
            "gemini": gtypes.FinishReason.STOP}
# provider's reported output tokens, in the client's arithmetic
OUTPUT_TOKENS = {"anthropic": 15, "openai-chat": 10, "openai-responses": 87, "gemini": 56}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("client", "provider"), PAIRS, ids=[f"{c}->{p}" for c, p in PAIRS])
def test_two_turn_tool_use(world: World, client: str,
                           provider: str, stream: bool) -> None:
    gw, fakes = world
    fake = only(gw, fakes, provider)
    fake.push(Behavior(tool_call=True))  # turn 1: the provider calls its tools
    got = DRIVERS[client](gw, stream)
    assert got["calls"] == _expected_calls(provider)
    assert len(set(got["ids"])) == len(got["ids"]), "tool call ids must be unique"
    assert got["stop1"] == STOP_TOOL[client]
    assert got["text"] == DEFAULT_TEXT[provider]
    assert got["stop2"] == STOP_END[client]
    assert got["usage_out"] == OUTPUT_TOKENS[provider]
    # turn 2 reached the provider in its own dialect, with the tool results attached
    second = fake.requests[-1]
    assert len(fake.requests) == 2
    blob = json.dumps(second.json)
    assert "sunny" in blob
    assert CLIENT_KEY not in json.dumps(second.headers)


def test_translated_requests_are_recorded(world: World) -> None:
    gw, fakes = world
    only(gw, fakes, "openai-chat")
    before = event_count(gw.nats_url)
    anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0).messages.create(
        model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    done = [e for _, _, e in events(gw.nats_url, before + 2)
            if isinstance(e, RequestCompleted)]
    last = done[-1]
    assert last.translated and last.provider_dialect == "openai-chat"
    assert last.usage is not None and last.usage.cache_read_tokens == 4


def test_count_tokens_estimated_for_providers_without_it(
        world: World) -> None:
    gw, fakes = world
    only(gw, fakes, "openai-chat")
    client = anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0)
    raw = client.messages.with_raw_response.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "hello " * 400}])
    assert raw.headers["x-codeswitch-estimate"] == "true"
    small = client.messages.count_tokens(model=MODEL,
                                         messages=[{"role": "user", "content": "hello"}])
    assert raw.parse().input_tokens > small.input_tokens > 0
    assert len(fakes["openai-chat"].requests) == 0  # nothing was sent upstream


def test_count_tokens_asks_a_provider_of_another_dialect_that_counts(world: World) -> None:
    """Claude Code's count_tokens on a Gemini provider, and Gemini CLI's countTokens on an
    Anthropic one: the provider's own count of the translated request, not an estimate; when
    that count fails, the estimate, marked."""
    gw, fakes = world
    fake = only(gw, fakes, "gemini")
    client = anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0)
    raw = client.messages.with_raw_response.count_tokens(
        model=MODEL, system="be brief", messages=[{"role": "user", "content": "hello"}])
    assert raw.parse().input_tokens == FAKE_COUNT_TOKENS
    assert "x-codeswitch-estimate" not in raw.headers
    (sent,) = fake.requests
    assert sent.path.endswith(":countTokens")
    assert sent.json["generateContentRequest"]["systemInstruction"]["parts"][0]["text"] == \
        "be brief"
    fake.push(Behavior(status=500))
    raw = client.messages.with_raw_response.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "hello"}])
    assert raw.headers["x-codeswitch-estimate"] == "true" and raw.parse().input_tokens > 0

    fake = only(gw, fakes, "anthropic")
    gclient = genai.Client(api_key=CLIENT_KEY,
                           http_options=gtypes.HttpOptions(base_url=gw.url))
    got = gclient.models.count_tokens(model="gemini-2.5-pro", contents="hello there")
    assert got.total_tokens == FAKE_COUNT_TOKENS
    (sent,) = fake.requests
    assert sent.path == "/v1/messages/count_tokens"
    assert "max_tokens" not in sent.json and sent.json["messages"][0]["role"] == "user"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_unreadable_upstream_answer_falls_back_or_is_a_dialect_502(world: World,
                                                                   stream: bool) -> None:
    """Garbage from a provider is that provider's protocol error, never a crash: the next
    provider answers, or the client gets a 502 in its own dialect."""
    gw, fakes = world
    fake = only(gw, fakes, "openai-chat")
    garbage = (b'data: {"choices":"not a list","usage":7}\n\ndata: [DONE]\n\n' if stream
               else b'{"choices": "not a list", "usage": 7}')
    fake.push(Behavior(body=garbage, headers={"content-type": "text/event-stream" if stream
                                              else "application/json"}))
    client = anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as info:
        if stream:
            with client.messages.stream(model=MODEL, max_tokens=16,
                                        messages=[{"role": "user", "content": "hi"}]) as s:
                s.get_final_message()
        else:
            client.messages.create(model=MODEL, max_tokens=16,
                                   messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502
    assert "unreadable" in str(info.value) or "upstream" in str(info.value)
    # the SDK's own error names our request id, the one `codeswitch log` shows
    assert info.value.request_id == info.value.response.headers["x-codeswitch-request-id"]
    # with a second provider, the client never sees it
    from schemas.config import ProviderConfig

    gw.add_provider(ProviderConfig(name="backup-gemini", dialect="gemini",
                                   base_url=fakes["gemini"].base_url, api_key="k", priority=5))
    try:
        fake.push(Behavior(body=garbage))
        r = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}])
        assert r.status_code == 200 and r.headers["x-codeswitch-provider"] == "backup-gemini"
    finally:
        gw.remove_provider("backup-gemini")
