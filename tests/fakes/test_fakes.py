"""The fakes speak the protocols: driven by the official SDKs and, for faults, by httpx/sockets."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.fakes import (
    DEFAULT_CHUNKS,
    DEFAULT_TEXT,
    FAKE_COUNT_TOKENS,
    FAKE_TOOL_CALLS,
    FAKE_USAGE,
    Behavior,
    FakeUpstream,
    numbered_chunks,
)

MakeFake = Callable[[str], FakeUpstream]


@pytest.fixture
def make_fake() -> Iterator[MakeFake]:
    fakes: list[FakeUpstream] = []

    def make(dialect: str) -> FakeUpstream:
        fake = FakeUpstream(dialect).start()
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        fake.stop()


def _anthropic(fake: FakeUpstream) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-ant-test", base_url=fake.base_url, max_retries=0)


def _openai(fake: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0)


def _gemini(fake: FakeUpstream, api_version: str | None = None) -> genai.Client:
    opts = genai_types.HttpOptions(
        base_url=fake.base_url, api_version=api_version,
        retry_options=genai_types.HttpRetryOptions(attempts=1))
    return genai.Client(api_key="gm-test", http_options=opts)


def _sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event, data) pairs of an SSE body (blank-line separated, CRLF or LF)."""
    out: list[tuple[str | None, str]] = []
    for block in raw.replace(b"\r\n", b"\n").decode().split("\n\n"):
        if not block.strip():
            continue
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        out.append((event, "\n".join(data)))
    return out


ENDPOINTS: dict[str, tuple[str, dict[str, Any]]] = {
    "anthropic": ("/v1/messages", {"model": "claude-x", "max_tokens": 10, "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]}),
    "openai-chat": ("/v1/chat/completions", {"model": "gpt-x", "stream": True,
                                             "stream_options": {"include_usage": True},
                                             "messages": [{"role": "user", "content": "hi"}]}),
    "openai-responses": ("/v1/responses", {"model": "gpt-x", "stream": True, "input": "hi"}),
    "gemini": ("/v1beta/models/gemini-x:streamGenerateContent?alt=sse",
               {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
}
DIALECTS = list(ENDPOINTS)


def _url(fake: FakeUpstream, nonstream: bool = False) -> tuple[str, dict[str, Any]]:
    path, body = ENDPOINTS[fake.dialect]
    body = dict(body)
    if nonstream:
        body.pop("stream", None)
        body.pop("stream_options", None)
        path = path.replace(":streamGenerateContent?alt=sse", ":generateContent")
    return fake.root_url + path, body


# --------------------------------------------------------------------------- anthropic


def test_anthropic_nonstream(make_fake: MakeFake) -> None:
    fake = make_fake("anthropic")
    msg = _anthropic(fake).messages.create(
        model="claude-fake-1", max_tokens=100,
        messages=[{"role": "user", "content": "Hello"}])
    assert msg.model == "claude-fake-1"
    assert msg.content[0].type == "text"
    assert msg.content[0].text == DEFAULT_TEXT["anthropic"] == "Hello!"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.model_dump(exclude_none=True) == FAKE_USAGE["anthropic"]
    rec = fake.requests[0]
    assert (rec.method, rec.path) == ("POST", "/v1/messages")
    assert rec.json["messages"][0]["content"] == "Hello"
    assert rec.headers["authorization"] == "Bearer sk-ant-test" or "x-api-key" in rec.headers
    assert rec.completed and rec.disconnected_at is None and rec.status == 200


def test_anthropic_stream(make_fake: MakeFake) -> None:
    fake = make_fake("anthropic")
    with _anthropic(fake).messages.stream(
            model="claude-fake-2", max_tokens=100,
            messages=[{"role": "user", "content": "Hello"}]) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert deltas == DEFAULT_CHUNKS["anthropic"]
    assert final.content[0].text == "Hello!"
    assert final.model == "claude-fake-2"
    assert final.usage.input_tokens == FAKE_USAGE["anthropic"]["input_tokens"]
    assert final.usage.output_tokens == FAKE_USAGE["anthropic"]["output_tokens"]
    assert final.usage.cache_read_input_tokens == 11
    assert final.usage.cache_creation_input_tokens == 7
    assert fake.requests[0].json["stream"] is True


def test_anthropic_stream_grammar(make_fake: MakeFake) -> None:
    fake = make_fake("anthropic")
    url, body = _url(fake)
    r = httpx.post(url, json=body)
    events = _sse_events(r.content)
    names = [e for e, _ in events]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta",
                     "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    for name, data in events:
        assert json.loads(data)["type"] == name
    start = json.loads(events[0][1])["message"]
    assert start["usage"]["output_tokens"] == 1 and start["model"] == "claude-x"
    assert fake.requests[0].events_sent == len(events)


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_tool_calls(make_fake: MakeFake, stream: bool) -> None:
    fake = make_fake("anthropic")
    fake.default = Behavior(tool_call=True)
    client = _anthropic(fake)
    kwargs: dict[str, Any] = {"model": "claude-x", "max_tokens": 100,
                              "messages": [{"role": "user", "content": "weather?"}]}
    if stream:
        with client.messages.stream(**kwargs) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**kwargs)
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert [(u.id, u.name, u.input) for u in uses] == [
        (t["id"], t["name"], t["arguments"]) for t in FAKE_TOOL_CALLS["anthropic"]]
    assert len(uses) == 2 and msg.stop_reason == "tool_use"
    assert not [b for b in msg.content if b.type == "text"]


def test_anthropic_count_tokens_and_models(make_fake: MakeFake) -> None:
    fake = make_fake("anthropic")
    fake.push(Behavior(status=500))  # models listing does not consume pushed behaviors
    client = _anthropic(fake)
    models = client.models.list()
    assert next(m.id for m in models.data).startswith("claude-")
    with pytest.raises(anthropic.InternalServerError):
        client.messages.count_tokens(model="claude-x",
                                     messages=[{"role": "user", "content": "hi"}])
    count = client.messages.count_tokens(model="claude-x",
                                         messages=[{"role": "user", "content": "hi"}])
    assert count.input_tokens == FAKE_COUNT_TOKENS


def test_anthropic_errors(make_fake: MakeFake) -> None:
    fake = make_fake("anthropic")
    fake.push(Behavior(status=429, headers={"retry-after": "2"}), Behavior(status=529))
    client = _anthropic(fake)
    msgs: list[Any] = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.RateLimitError) as e429:
        client.messages.create(model="m", max_tokens=5, messages=msgs)
    assert e429.value.response.headers["retry-after"] == "2"
    assert e429.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    with pytest.raises(anthropic.APIStatusError) as e529:
        client.messages.create(model="m", max_tokens=5, messages=msgs)
    assert e529.value.status_code == 529
    assert e529.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert client.messages.create(model="m", max_tokens=5, messages=msgs).content[0].text


def test_anthropic_stream_error_event(make_fake: MakeFake) -> None:
    fake = make_fake("anthropic")
    fake.push(Behavior(stream_error_after=4))
    with pytest.raises(anthropic.APIStatusError) as exc:  # noqa: SIM117
        with _anthropic(fake).messages.stream(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]) as s:
            list(s.text_stream)
    assert "overloaded_error" in str(exc.value)
    url, body = _url(fake)
    fake.push(Behavior(stream_error_after=4))
    events = _sse_events(httpx.post(url, json=body).content)
    assert [e for e, _ in events] == ["message_start", "content_block_start", "ping",
                                      "content_block_delta", "error"]
    assert json.loads(events[-1][1]) == {
        "type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def test_anthropic_text_override(make_fake: MakeFake) -> None:
    fake = make_fake("anthropic")
    fake.push(Behavior(text="one two three"), Behavior(chunks=5),
              Behavior(text="abcdef", chunks=3))
    client = _anthropic(fake)
    msgs: list[Any] = [{"role": "user", "content": "hi"}]
    with client.messages.stream(model="m", max_tokens=5, messages=msgs) as s:
        assert list(s.text_stream) == ["one", " two", " three"]
    with client.messages.stream(model="m", max_tokens=5, messages=msgs) as s:
        assert list(s.text_stream) == numbered_chunks(5) == ["0", " 1", " 2", " 3", " 4"]
    with client.messages.stream(model="m", max_tokens=5, messages=msgs) as s:
        assert list(s.text_stream) == ["ab", "cd", "ef"]


# --------------------------------------------------------------------------- openai chat


def test_chat_nonstream(make_fake: MakeFake) -> None:
    fake = make_fake("openai-chat")
    c = _openai(fake).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert c.model == "gpt-4o"
    assert c.choices[0].message.content == DEFAULT_TEXT["openai-chat"] == "Hi, how are you?"
    assert c.choices[0].finish_reason == "stop"
    assert c.usage is not None
    assert c.usage.model_dump(exclude_none=True) == FAKE_USAGE["openai-chat"]
    assert c.usage.prompt_tokens_details and c.usage.prompt_tokens_details.cached_tokens == 4
    details = c.usage.completion_tokens_details
    assert details and details.reasoning_tokens == 3
    assert fake.requests[0].path == "/v1/chat/completions"
    assert fake.requests[0].headers["authorization"] == "Bearer sk-test"


def test_chat_stream_include_usage(make_fake: MakeFake) -> None:
    fake = make_fake("openai-chat")
    chunks = list(_openai(fake).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    text = [ch.choices[0].delta.content for ch in chunks if ch.choices]
    assert "".join(t or "" for t in text) == "Hi, how are you?"
    assert [t for t in text if t] == DEFAULT_CHUNKS["openai-chat"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(exclude_none=True) == FAKE_USAGE["openai-chat"]
    assert all(ch.usage is None for ch in chunks[:-1])
    assert all(ch.model == "gpt-4o" for ch in chunks)


def test_chat_stream_wire_without_usage(make_fake: MakeFake) -> None:
    fake = make_fake("openai-chat")
    url, body = _url(fake)
    del body["stream_options"]
    r = httpx.post(url, json=body)
    events = _sse_events(r.content)
    assert all(e is None for e, _ in events)
    assert events[-1][1] == "[DONE]"
    docs = [json.loads(d) for _, d in events[:-1]]
    assert all("usage" not in d and d["choices"] for d in docs)
    assert docs[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                      "finish_reason": "stop"}
    # with include_usage: usage:null on every chunk, then a choices:[] usage chunk
    body["stream_options"] = {"include_usage": True}
    docs = [json.loads(d) for _, d in _sse_events(httpx.post(url, json=body).content)[:-1]]
    assert all(d["usage"] is None for d in docs[:-1])
    assert docs[-1]["choices"] == [] and docs[-1]["usage"] == FAKE_USAGE["openai-chat"]


@pytest.mark.parametrize("stream", [False, True])
def test_chat_tool_calls(make_fake: MakeFake, stream: bool) -> None:
    fake = make_fake("openai-chat")
    fake.push(Behavior(tool_call=True))
    client = _openai(fake)
    expected = [(t["id"], t["name"], t["arguments"]) for t in FAKE_TOOL_CALLS["openai-chat"]]
    if not stream:
        c = client.chat.completions.create(model="gpt-4o",
                                           messages=[{"role": "user", "content": "x"}])
        msg = c.choices[0].message
        assert msg.content is None and c.choices[0].finish_reason == "tool_calls"
        assert msg.tool_calls is not None
        got = [(tc.id, tc.function.name, json.loads(tc.function.arguments))
               for tc in msg.tool_calls if tc.type == "function"]
        assert got == expected
        return
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for ch in client.chat.completions.create(model="gpt-4o", stream=True,
                                             messages=[{"role": "user", "content": "x"}]):
        for tc in ch.choices[0].delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": "", "name": "", "args": ""})
            slot["id"] += tc.id or ""
            assert tc.function is not None
            slot["name"] += tc.function.name or ""
            slot["args"] += tc.function.arguments or ""
        finish = ch.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [(c["id"], c["name"], json.loads(c["args"])) for c in calls.values()] == expected


def test_chat_errors_and_stream_error(make_fake: MakeFake) -> None:
    fake = make_fake("openai-chat")
    fake.push(Behavior(status=401), Behavior(status=503, headers={"retry-after": "1"}),
              Behavior(stream_error_after=3))
    client = _openai(fake)
    msgs: list[Any] = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.AuthenticationError) as e401:
        client.chat.completions.create(model="m", messages=msgs)
    assert set(e401.value.body) == {"message", "type", "param", "code"}  # type: ignore[arg-type]
    with pytest.raises(openai.InternalServerError) as e503:
        client.chat.completions.create(model="m", messages=msgs)
    assert e503.value.status_code == 503
    assert e503.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.APIError) as err:
        list(client.chat.completions.create(model="m", messages=msgs, stream=True))
    assert err.value.body["type"] == "server_error"  # type: ignore[index]
    assert fake.requests[2].events_sent == 4 and fake.requests[2].completed


def test_chat_models(make_fake: MakeFake) -> None:
    fake = make_fake("openai-chat")
    assert [m.id for m in _openai(fake).models.list()]


# --------------------------------------------------------------------------- openai responses


def test_responses_nonstream(make_fake: MakeFake) -> None:
    fake = make_fake("openai-responses")
    r = _openai(fake).responses.create(model="gpt-5", input="hi")
    assert r.model == "gpt-5" and r.status == "completed"
    assert r.output_text == DEFAULT_TEXT["openai-responses"]
    assert r.output_text.startswith("Hello! I\u2019m ChatGPT")
    assert r.usage is not None
    assert r.usage.model_dump(exclude_none=True) == FAKE_USAGE["openai-responses"]
    assert r.usage.input_tokens_details.cached_tokens == 5
    assert r.usage.output_tokens_details.reasoning_tokens == 6


def test_responses_stream(make_fake: MakeFake) -> None:
    fake = make_fake("openai-responses")
    events = list(_openai(fake).responses.create(model="gpt-5", input="hi", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    n = len(DEFAULT_CHUNKS["openai-responses"])
    assert types == (["response.created", "response.in_progress", "response.output_item.added",
                      "response.content_part.added"] + ["response.output_text.delta"] * n
                     + ["response.output_text.done", "response.content_part.done",
                        "response.output_item.done", "response.completed"])
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == DEFAULT_CHUNKS["openai-responses"]
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.id == events[0].response.id  # type: ignore[union-attr]
    assert done.response.usage is not None
    assert done.response.usage.total_tokens == 123
    assert done.response.output_text == DEFAULT_TEXT["openai-responses"]
    assert done.response.model == "gpt-5"


def test_responses_stream_helper(make_fake: MakeFake) -> None:
    fake = make_fake("openai-responses")
    fake.push(Behavior(text="Hello there friend"))
    with _openai(fake).responses.stream(model="gpt-5", input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hello there friend"
    assert final.usage is not None and final.usage.input_tokens == 36


@pytest.mark.parametrize("stream", [False, True])
def test_responses_tool_calls(make_fake: MakeFake, stream: bool) -> None:
    fake = make_fake("openai-responses")
    fake.default = Behavior(tool_call=True)
    client = _openai(fake)
    if stream:
        events = list(client.responses.create(model="gpt-5", input="x", stream=True))
        done_items = [e.item for e in events if e.type == "response.output_item.done"]
        final = events[-1].response  # type: ignore[union-attr]
        assert [i.type for i in done_items] == ["function_call", "function_call"]
        arg_deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
        assert arg_deltas
    else:
        final = client.responses.create(model="gpt-5", input="x")
    got = [(i.call_id, i.name, json.loads(i.arguments)) for i in final.output
           if i.type == "function_call"]
    assert got == [(t["id"], t["name"], t["arguments"])
                   for t in FAKE_TOOL_CALLS["openai-responses"]]
    assert all(i.id and i.id.startswith("fc_") for i in final.output)  # type: ignore[union-attr]


def test_responses_stream_error(make_fake: MakeFake) -> None:
    fake = make_fake("openai-responses")
    fake.push(Behavior(stream_error_after=3), Behavior(stream_error_after=3))
    with pytest.raises(openai.APIError) as exc:
        list(_openai(fake).responses.create(model="gpt-5", input="x", stream=True))
    assert "Rate limit" in str(exc.value)
    url, body = _url(fake)
    events = _sse_events(httpx.post(url, json=body).content)
    assert [e for e, _ in events] == ["response.created", "response.in_progress",
                                      "response.output_item.added", "error", "response.failed"]
    docs = [json.loads(d) for _, d in events]
    assert [d["sequence_number"] for d in docs] == [0, 1, 2, 3, 4]
    assert docs[3]["error"]["code"] == "rate_limit_exceeded"
    assert docs[4]["response"]["status"] == "failed"
    assert docs[4]["response"]["id"] == docs[0]["response"]["id"]


# --------------------------------------------------------------------------- gemini


@pytest.mark.parametrize("api_version", [None, "v1beta"])
def test_gemini_nonstream(make_fake: MakeFake, api_version: str | None) -> None:
    fake = make_fake("gemini")
    client = _gemini(fake, api_version)
    r = client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert r.text == DEFAULT_TEXT["gemini"]
    assert r.model_version == "gemini-2.5-flash"
    um = r.usage_metadata
    assert um is not None
    assert (um.prompt_token_count, um.candidates_token_count, um.total_token_count,
            um.cached_content_token_count, um.thoughts_token_count) == (21, 47, 77, 8, 9)
    assert r.candidates and r.candidates[0].finish_reason == genai_types.FinishReason.STOP
    rec = fake.requests[0]
    assert rec.path == f"/{api_version or 'v1beta'}/models/gemini-2.5-flash:generateContent" \
        or rec.path.endswith("/models/gemini-2.5-flash:generateContent")
    assert rec.headers["x-goog-api-key"] == "gm-test"


def test_gemini_stream(make_fake: MakeFake) -> None:
    fake = make_fake("gemini")
    client = _gemini(fake)
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-pro", contents="hi"))
    assert [c.text for c in chunks] == DEFAULT_CHUNKS["gemini"]
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert all(c.candidates and c.candidates[0].finish_reason is None for c in chunks[:-1])
    assert last.usage_metadata and last.usage_metadata.total_token_count == 77
    assert last.usage_metadata.thoughts_token_count == 9
    assert chunks[0].usage_metadata and chunks[0].usage_metadata.candidates_token_count is None
    assert fake.requests[0].query == {"alt": "sse"}
    assert fake.requests[0].path.endswith("/models/gemini-2.5-pro:streamGenerateContent")


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_tool_calls(make_fake: MakeFake, stream: bool) -> None:
    fake = make_fake("gemini")
    fake.default = Behavior(tool_call=True)
    client = _gemini(fake)
    if stream:
        chunks = list(client.models.generate_content_stream(model="g", contents="x"))
        calls = [fc for c in chunks for fc in (c.function_calls or [])]
        assert chunks[-1].candidates
        assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
    else:
        calls = client.models.generate_content(model="g", contents="x").function_calls or []
    assert [(c.name, c.args) for c in calls] == [
        (t["name"], t["arguments"]) for t in FAKE_TOOL_CALLS["gemini"]]


def test_gemini_count_tokens_and_errors(make_fake: MakeFake) -> None:
    fake = make_fake("gemini")
    client = _gemini(fake)
    assert client.models.count_tokens(model="g", contents="hi").total_tokens == FAKE_COUNT_TOKENS
    fake.push(Behavior(status=429, headers={"retry-after": "3"}), Behavior(status=503))
    with pytest.raises(genai_errors.ClientError) as e429:
        client.models.generate_content(model="g", contents="x")
    assert e429.value.code == 429 and e429.value.status == "RESOURCE_EXHAUSTED"
    with pytest.raises(genai_errors.ServerError) as e503:
        client.models.generate_content(model="g", contents="x")
    assert e503.value.status == "UNAVAILABLE"


def test_gemini_json_array_stream(make_fake: MakeFake) -> None:
    fake = make_fake("gemini")
    url = fake.root_url + "/v1beta/models/gemini-x:streamGenerateContent"
    r = httpx.post(url, json={"contents": []})
    assert r.headers["content-type"].startswith("application/json")
    docs = json.loads(r.content)
    assert [d["candidates"][0]["content"]["parts"][0]["text"] for d in docs] == \
        DEFAULT_CHUNKS["gemini"]
    assert docs[-1]["usageMetadata"] == FAKE_USAGE["gemini"]
    fake.push(Behavior(stream_error_after=2))
    docs = json.loads(httpx.post(url, json={"contents": []}).content)
    assert len(docs) == 3 and docs[-1]["error"]["status"] == "UNAVAILABLE"


def test_gemini_sse_stream_error(make_fake: MakeFake) -> None:
    fake = make_fake("gemini")
    fake.push(Behavior(stream_error_after=1))
    url, body = _url(fake)
    events = _sse_events(httpx.post(url, json=body).content)
    assert len(events) == 2
    assert json.loads(events[1][1])["error"]["code"] == 503
    fake.push(Behavior(stream_error_after=1))
    client = _gemini(fake)
    with pytest.raises(genai_errors.APIError):
        list(client.models.generate_content_stream(model="g", contents="x"))


# --------------------------------------------------------------------------- faults (httpx)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_error_envelopes(make_fake: MakeFake, dialect: str) -> None:
    fake = make_fake(dialect)
    fake.push(Behavior(status=429, headers={"retry-after": "2"}))
    url, body = _url(fake)
    r = httpx.post(url, json=body)
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    doc = r.json()
    if dialect == "anthropic":
        assert doc["type"] == "error" and doc["error"]["type"] == "rate_limit_error"
        assert doc["request_id"] == r.headers["request-id"]
    elif dialect == "gemini":
        assert doc["error"]["code"] == 429 and doc["error"]["status"] == "RESOURCE_EXHAUSTED"
    else:
        assert set(doc["error"]) == {"message", "type", "param", "code"}
    assert fake.requests[0].status == 429 and fake.requests[0].completed


def test_body_override_and_fifo(make_fake: MakeFake) -> None:
    fake = make_fake("openai-chat")
    fake.push(Behavior(status=400, body=b'{"custom": true}'), Behavior(body=b"data: [DONE]\n\n"))
    url, body = _url(fake)
    r1 = httpx.post(url, json=body)
    assert r1.status_code == 400 and r1.json() == {"custom": True}
    r2 = httpx.post(url, json=body)
    assert r2.status_code == 200 and r2.content == b"data: [DONE]\n\n"
    r3 = httpx.post(url, json=body)
    assert r3.content.endswith(b"data: [DONE]\n\n") and b"Hi" in r3.content
    assert [r.behavior.status for r in fake.requests if r.behavior] == [400, 200, 200]


def test_unknown_path_404(make_fake: MakeFake) -> None:
    fake = make_fake("openai-responses")
    r = httpx.post(fake.root_url + "/v1/chat/completions", json={"model": "x"})
    assert r.status_code == 404 and "message" in r.json()["error"]


def _raw_request(fake: FakeUpstream, nonstream: bool = False) -> socket.socket:
    url, body = _url(fake, nonstream)
    path = url.removeprefix(fake.root_url)
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", fake.port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


@pytest.mark.parametrize("dialect", DIALECTS)
def test_hang_disconnect_detected(make_fake: MakeFake, dialect: str) -> None:
    fake = make_fake(dialect)
    fake.push(Behavior(hang=True))
    sock = _raw_request(fake)
    assert fake.wait_requests(1, 5)
    sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        sock.recv(1)  # nothing comes back
    closed_at = time.time()
    sock.close()
    seen = fake.wait_disconnect(0, 2)
    assert seen is not None and seen - closed_at < 0.5
    rec = fake.requests[0]
    assert rec.status is None and not rec.completed


def test_hang_with_httpx_timeout(make_fake: MakeFake) -> None:
    fake = make_fake("anthropic")
    fake.push(Behavior(hang=True))
    url, body = _url(fake)
    with httpx.Client(timeout=httpx.Timeout(5, read=0.2)) as client, \
            pytest.raises(httpx.ReadTimeout):
        client.post(url, json=body)
    gone = time.time()
    seen = fake.wait_disconnect(0, 2)
    assert seen is not None and seen - gone < 0.5


def test_disconnect_mid_stream(make_fake: MakeFake) -> None:
    fake = make_fake("openai-responses")
    fake.push(Behavior(chunk_delay=0.1))
    url, body = _url(fake)
    with httpx.Client() as client, client.stream("POST", url, json=body) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("event: response.created")
        closed_at = time.time()
    seen = fake.wait_disconnect(0, 2)
    assert seen is not None and seen - closed_at < 0.5
    rec = fake.requests[0]
    assert not rec.completed and rec.status == 200 and rec.events_sent < 10


def test_slow_stream_and_first_byte_delay(make_fake: MakeFake) -> None:
    fake = make_fake("anthropic")
    fake.push(Behavior(first_byte_delay=0.3, chunk_delay=0.05))
    url, body = _url(fake)
    t0 = time.monotonic()
    arrivals: list[float] = []
    with httpx.stream("POST", url, json=body) as r:
        first = time.monotonic() - t0
        for line in r.iter_lines():
            if line.startswith("event:"):
                arrivals.append(time.monotonic())
    assert first >= 0.3
    assert len(arrivals) == 8
    assert arrivals[-1] - arrivals[0] >= 7 * 0.05 * 0.9
    assert fake.requests[0].completed


@pytest.mark.parametrize("dialect", DIALECTS)
def test_cut_after(make_fake: MakeFake, dialect: str) -> None:
    fake = make_fake(dialect)
    fake.push(Behavior(cut_after=3))
    url, body = _url(fake)
    received = b""
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("POST", url, json=body) as r:
        for chunk in r.iter_raw():
            received += chunk
    assert len(_sse_events(received)) == 3
    rec = fake.requests[0]
    assert rec.cut and not rec.completed and rec.events_sent == 3
    assert rec.disconnected_at is None


def test_cut_after_nonstream(make_fake: MakeFake) -> None:
    fake = make_fake("openai-chat")
    fake.push(Behavior(cut_after=20))
    url, body = _url(fake, nonstream=True)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(url, json=body)
    fake.push(Behavior(cut_after=2))
    with pytest.raises(openai.APIConnectionError):
        list(_openai(fake).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True))


def test_chunks_ordering_many(make_fake: MakeFake) -> None:
    fake = make_fake("gemini")
    fake.push(Behavior(chunks=200))
    client = _gemini(fake)
    chunks = list(client.models.generate_content_stream(model="g", contents="x"))
    assert "".join(c.text or "" for c in chunks) == " ".join(str(i) for i in range(200))


def test_stop_releases_hanging_requests() -> None:
    fake = FakeUpstream("anthropic").start()
    fake.push(Behavior(hang=True))
    sock = _raw_request(fake)
    assert fake.wait_requests(1, 5)
    t0 = time.monotonic()
    fake.stop()
    assert time.monotonic() - t0 < 3
    sock.settimeout(2)
    assert sock.recv(100) == b""  # closed without an answer
    sock.close()


def test_gemini_json_array_error_is_wrapped(make_fake: MakeFake) -> None:
    fake = make_fake("gemini")
    fake.push(Behavior(status=400), Behavior(status=400))
    r = httpx.post(fake.root_url + "/v1beta/models/g:streamGenerateContent", json={})
    assert r.status_code == 400 and r.json()[0]["error"]["status"] == "INVALID_ARGUMENT"
    r = httpx.post(fake.root_url + "/v1beta/models/g:streamGenerateContent?alt=sse", json={})
    assert r.status_code == 400 and r.json()["error"]["code"] == 400


def _raw_deltas(dialect: str, raw: bytes) -> list[str]:
    out: list[str] = []
    for _, data in _sse_events(raw):
        if data == "[DONE]":
            continue
        doc = json.loads(data)
        if dialect == "anthropic" and doc["type"] == "content_block_delta":
            out.append(doc["delta"]["text"])
        elif dialect == "openai-chat" and doc["choices"] and doc["choices"][0]["delta"].get(
                "content"):
            out.append(doc["choices"][0]["delta"]["content"])
        elif dialect == "openai-responses" and doc["type"] == "response.output_text.delta":
            out.append(doc["delta"])
        elif dialect == "gemini":
            out.extend(p["text"] for p in doc["candidates"][0]["content"]["parts"])
    return out


@pytest.mark.parametrize("dialect", DIALECTS)
def test_chunks_and_text_every_dialect(make_fake: MakeFake, dialect: str) -> None:
    fake = make_fake(dialect)
    fake.push(Behavior(chunks=50), Behavior(text="alpha beta gamma"))
    url, body = _url(fake)
    assert _raw_deltas(dialect, httpx.post(url, json=body).content) == numbered_chunks(50)
    assert _raw_deltas(dialect, httpx.post(url, json=body).content) == [
        "alpha", " beta", " gamma"]
    assert _raw_deltas(dialect, httpx.post(url, json=body).content) == DEFAULT_CHUNKS[dialect]


def test_anthropic_text_and_tool_call(make_fake: MakeFake) -> None:
    fake = make_fake("anthropic")
    fake.push(Behavior(text="Let me check.", tool_call=True))
    with _anthropic(fake).messages.stream(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]) as s:
        msg = s.get_final_message()
    assert [b.type for b in msg.content] == ["text", "tool_use", "tool_use"]
    assert msg.content[0].text == "Let me check."  # type: ignore[union-attr]


async def test_async_usage(make_fake: MakeFake) -> None:
    fake = make_fake("openai-chat")
    fake.push(Behavior(hang=True))
    url, body = _url(fake)
    async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=0.2)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(url, json=body)
        gone = time.time()
        seen = await fake.await_disconnect(0, 2)
        assert seen is not None and seen - gone < 0.5
        r = await client.post(url, json=body)
        assert r.status_code == 200 and r.content.endswith(b"data: [DONE]\n\n")
