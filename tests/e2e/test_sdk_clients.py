"""The official SDKs as clients, through the real edge, NATS and router, to fake upstreams of
the same dialect (pass-through), streaming and not; usage and identity land in the event log."""

from __future__ import annotations

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as gtypes

from schemas.events import AttemptFinished, RequestCompleted, Usage
from tests.e2e.conftest import CLIENT_KEY, MODELS, PROVIDER_KEYS
from tests.e2e.gateway import Gateway, events
from tests.fakes.upstream import FakeUpstream

EXPECTED_USAGE = {
    "anthropic": Usage(input_tokens=25, cache_write_tokens=7, cache_read_tokens=11,
                       output_tokens=15),
    "openai-chat": Usage(input_tokens=15, cache_read_tokens=4, output_tokens=10,
                         reasoning_tokens=3),
    "openai-responses": Usage(input_tokens=31, cache_read_tokens=5, output_tokens=87,
                              reasoning_tokens=6),
    "gemini": Usage(input_tokens=13, cache_read_tokens=8, output_tokens=56,
                    reasoning_tokens=9),
}


def _final(gateway: Gateway, n: int = 1) -> list[RequestCompleted]:
    got = events(gateway.nats_url, 2 * n)
    return [e for _, _, e in got if isinstance(e, RequestCompleted)]


def _assert_upstream_auth(fake: FakeUpstream, dialect: str) -> None:
    rec = fake.requests[-1]
    blob = repr(rec.headers)
    assert CLIENT_KEY not in blob, "the client's key must never reach the provider"
    key = PROVIDER_KEYS[dialect]
    if dialect == "anthropic":
        assert rec.headers["x-api-key"] == key
    elif dialect == "gemini":
        assert rec.headers["x-goog-api-key"] == key
    else:
        assert rec.headers["authorization"] == f"Bearer {key}"


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk(gateway: Gateway, fakes: dict[str, FakeUpstream], stream: bool) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0)
    kwargs = dict(model=MODELS["anthropic"], max_tokens=64,
                  messages=[{"role": "user", "content": "Hello"}],
                  extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"})
    if stream:
        with client.messages.stream(**kwargs) as s:  # type: ignore[arg-type]
            text = "".join(s.text_stream)
            final = s.get_final_message()
    else:
        raw = client.messages.with_raw_response.create(**kwargs)  # type: ignore[arg-type]
        assert raw.headers["x-codeswitch-provider"] == "anthropic"
        assert raw.headers["x-codeswitch-request-id"]
        final = raw.parse()
        # the SDK reads request-id: ours, not the provider's (that one is x-upstream-request-id)
        assert final._request_id == raw.headers["x-codeswitch-request-id"]
        text = "".join(b.text for b in final.content if b.type == "text")
    assert text and final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 25 and final.usage.output_tokens == 15
    fake = fakes["anthropic"]
    _assert_upstream_auth(fake, "anthropic")
    rec = fake.requests[-1]
    assert rec.path == "/v1/messages"
    assert rec.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert rec.headers["anthropic-version"]
    assert rec.json["model"] == MODELS["anthropic"]
    (done,) = _final(gateway)
    assert done.status == 200 and done.provider == "anthropic" and done.stream is stream
    assert done.usage == EXPECTED_USAGE["anthropic"]
    assert done.client == "anthropic-sdk"


@pytest.mark.parametrize("stream", [False, True])
def test_openai_chat_sdk(gateway: Gateway, fakes: dict[str, FakeUpstream], stream: bool) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    messages = [{"role": "user", "content": "Hello"}]
    if stream:
        chunks = list(client.chat.completions.create(
            model=MODELS["openai-chat"], messages=messages, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        resp = client.chat.completions.create(model=MODELS["openai-chat"],
                                              messages=messages)  # type: ignore[arg-type]
        text, usage = resp.choices[0].message.content or "", resp.usage
        finish = resp.choices[0].finish_reason
    assert text and finish == "stop"
    assert usage is not None and usage.prompt_tokens == 19 and usage.completion_tokens == 10
    _assert_upstream_auth(fakes["openai-chat"], "openai-chat")
    (done,) = _final(gateway)
    assert done.usage == EXPECTED_USAGE["openai-chat"] and done.provider == "chat"


@pytest.mark.parametrize("stream", [False, True])
def test_openai_responses_sdk(gateway: Gateway, fakes: dict[str, FakeUpstream],
                              stream: bool) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    if stream:
        events_ = list(client.responses.create(model=MODELS["openai-responses"],
                                               input="Hello", stream=True))
        completed = [e for e in events_ if e.type == "response.completed"]
        assert len(completed) == 1
        resp = completed[0].response
        deltas = "".join(e.delta for e in events_ if e.type == "response.output_text.delta")
        assert deltas == resp.output_text
    else:
        resp = client.responses.create(model=MODELS["openai-responses"], input="Hello")
    assert resp.id and resp.output_text and resp.status == "completed"
    assert resp.usage is not None and resp.usage.total_tokens == 123
    _assert_upstream_auth(fakes["openai-responses"], "openai-responses")
    (done,) = _final(gateway)
    assert done.usage == EXPECTED_USAGE["openai-responses"]


@pytest.mark.parametrize("stream", [False, True])
def test_google_genai_sdk(gateway: Gateway, fakes: dict[str, FakeUpstream], stream: bool) -> None:
    # google-genai uses /v1/ paths when told to; the gateway must accept both
    client = genai.Client(api_key=CLIENT_KEY, http_options=gtypes.HttpOptions(
        base_url=gateway.url, api_version="v1"))
    model = MODELS["gemini"]
    if stream:
        parts = list(client.models.generate_content_stream(model=model, contents="Hello"))
        text = "".join(p.text or "" for p in parts)
        usage = parts[-1].usage_metadata
        finish = parts[-1].candidates[0].finish_reason  # type: ignore[index]
    else:
        resp = client.models.generate_content(model=model, contents="Hello")
        text, usage = resp.text or "", resp.usage_metadata
        finish = resp.candidates[0].finish_reason  # type: ignore[index]
    assert text and finish == gtypes.FinishReason.STOP
    assert usage is not None and usage.prompt_token_count == 21
    fake = fakes["gemini"]
    _assert_upstream_auth(fake, "gemini")
    rec = fake.requests[-1]
    expected = "streamGenerateContent" if stream else "generateContent"
    assert rec.path.endswith(f"/models/{model}:{expected}")
    if stream:
        assert rec.query.get("alt") == "sse"
    (done,) = _final(gateway)
    assert done.usage == EXPECTED_USAGE["gemini"] and done.provider == "gemini"


def test_count_tokens_anthropic_and_gemini(gateway: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0)
    counted = client.messages.count_tokens(model=MODELS["anthropic"],
                                           messages=[{"role": "user", "content": "hi"}])
    assert counted.input_tokens == 42
    g = genai.Client(api_key=CLIENT_KEY, http_options=gtypes.HttpOptions(base_url=gateway.url))
    assert g.models.count_tokens(model=MODELS["gemini"], contents="hi").total_tokens == 42


def test_events_carry_attempts_and_no_secrets(gateway: Gateway,
                                              fakes: dict[str, FakeUpstream]) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0)
    client.messages.create(model=MODELS["anthropic"], max_tokens=16,
                           messages=[{"role": "user", "content": "hi"}],
                           metadata={"user_id": '{"device_id":"dev1","account_uuid":"acc-42",'
                                                '"session_id":"sess-7"}'})
    got = events(gateway.nats_url, 2)
    subjects = [s for s, _, _ in got]
    assert subjects == ["llm.attempt.anthropic.anthropic", "llm.response.anthropic.anthropic"]
    attempt, done = got[0][2], got[1][2]
    assert isinstance(attempt, AttemptFinished) and isinstance(done, RequestCompleted)
    assert attempt.request_id == done.request_id and attempt.outcome == "ok"
    assert done.user == "acc-42" and done.session == "sess-7"
    assert done.ttfb_ms is not None and done.duration_ms >= done.ttfb_ms
    for _, raw, _ in got:
        for secret in [CLIENT_KEY, *PROVIDER_KEYS.values()]:
            assert secret.encode() not in raw
        assert b"authorization" not in raw.lower() and b"x-api-key" not in raw.lower()


def test_chat_stream_usage_recorded_without_client_asking(
        gateway: Gateway, fakes: dict[str, FakeUpstream]) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    chunks = list(client.chat.completions.create(
        model=MODELS["openai-chat"], messages=[{"role": "user", "content": "Hi"}],  # type: ignore[list-item]
        stream=True))
    assert all(c.choices for c in chunks), "no usage chunk the client never asked for"
    assert all(c.usage is None for c in chunks)
    assert fakes["openai-chat"].requests[-1].json["stream_options"] == {"include_usage": True}
    (done,) = _final(gateway)
    assert done.usage == EXPECTED_USAGE["openai-chat"]
