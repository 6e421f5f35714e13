"""UsageTracker on every recorded body, whole and chunked, with cache and reasoning arithmetic."""

from __future__ import annotations

import json

import pytest

from schemas.events import Usage
from workers.translator.usage import UsageTracker, normalise_usage

from ._vectors import chunked, doc, raw, sse_wire


def track(dialect: str, body: bytes, *, stream: bool, size: int = 0) -> UsageTracker:
    t = UsageTracker(dialect, stream)
    for c in chunked(body, size) if size else [body]:
        t.feed(c)
    t.finish()
    return t


SIZES = [0, 1, 7, 100]


@pytest.mark.parametrize("size", SIZES)
def test_anthropic_stream_text(size: int) -> None:
    t = track("anthropic", sse_wire("anthropic_stream_text.sse"), stream=True, size=size)
    assert t.finish_reason == "end_turn"
    assert t.model == "claude-sonnet-4-5-20250929"
    assert t.usage == Usage(input_tokens=25, output_tokens=15)
    assert t.saw_content and t.error is None


@pytest.mark.parametrize("size", SIZES)
def test_anthropic_stream_message_delta_cumulative_not_added(size: int) -> None:
    # message_start: input 2679, output 3; final message_delta repeats input (10682) and
    # carries cumulative output 510: the last value wins, nothing is summed.
    t = track("anthropic", sse_wire("anthropic_stream_usage_cache_excerpt.sse"), stream=True,
              size=size)
    assert t.usage == Usage(input_tokens=10682, output_tokens=510)
    assert t.finish_reason == "end_turn"
    assert not t.saw_content


def test_anthropic_stream_thinking_real() -> None:
    t = track("anthropic", sse_wire("anthropic_stream_thinking_real.sse"), stream=True, size=50)
    assert t.usage == Usage(input_tokens=50, output_tokens=452)
    assert t.saw_content


def test_anthropic_stream_tool_use() -> None:
    t = track("anthropic", sse_wire("anthropic_stream_tool_use.sse"), stream=True, size=13)
    assert t.finish_reason == "tool_use"
    assert t.usage is not None and t.usage.output_tokens == 89


def test_anthropic_stream_error_event() -> None:
    t = track("anthropic", raw("anthropic_stream_error.sse"), stream=True)
    assert t.error == ("overloaded_error", "Overloaded")
    assert t.usage is None and t.finish_reason is None


def test_anthropic_saw_content_only_after_first_delta() -> None:
    body = sse_wire("anthropic_stream_text.sse")
    t = UsageTracker("anthropic", True)
    cut = body.index(b"event: content_block_delta")
    t.feed(body[:cut])
    assert not t.saw_content  # message_start, ping, text block start: nothing yet
    t.feed(body[cut:])
    assert t.saw_content


@pytest.mark.parametrize("size", SIZES)
def test_anthropic_nonstream(size: int) -> None:
    body = raw("anthropic_nonstream_thinking_response.json")
    t = track("anthropic", body, stream=False, size=size)
    d = doc("anthropic_nonstream_thinking_response.json")
    assert t.finish_reason == d["stop_reason"]
    assert t.model == d["model"]
    assert t.usage == normalise_usage("anthropic", d["usage"])
    assert t.saw_content


def test_anthropic_cache_usage_excludes_cache_from_input() -> None:
    write, read = (json.loads(line) for line in raw("anthropic_usage_cache.jsonl").splitlines())
    u1 = normalise_usage("anthropic", write)
    u2 = normalise_usage("anthropic", read)
    assert u1 == Usage(input_tokens=21, output_tokens=393, cache_write_tokens=188086)
    assert u2 == Usage(input_tokens=21, output_tokens=393, cache_read_tokens=188086)
    assert u1.total_input_tokens == u2.total_input_tokens == 188107


def test_anthropic_cache_creation_breakdown_only() -> None:
    u = normalise_usage("anthropic", {"input_tokens": 5, "output_tokens": 1, "cache_creation": {
        "ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20}})
    assert u == Usage(input_tokens=5, output_tokens=1, cache_write_tokens=30)


@pytest.mark.parametrize("size", SIZES)
def test_chat_stream_include_usage(size: int) -> None:
    t = track("openai-chat", raw("openai_chat_stream_include_usage.sse"), stream=True, size=size)
    assert t.usage == Usage(input_tokens=10, output_tokens=5)
    assert t.finish_reason == "stop"
    assert t.model == "gpt-3.5-turbo-0125"
    assert t.saw_content


def test_chat_stream_without_usage_chunk() -> None:
    t = track("openai-chat", raw("openai_chat_stream_parallel_tool_calls.sse"), stream=True,
              size=9)
    assert t.usage is None
    assert t.finish_reason == "tool_calls"
    assert t.saw_content


def test_chat_role_only_first_chunk_is_not_content() -> None:
    body = raw("openai_chat_stream_include_usage.sse")
    first = body[:body.index(b"\n\n") + 2]
    t = UsageTracker("openai-chat", True)
    t.feed(first)
    assert not t.saw_content
    t.feed(body[len(first):])
    assert t.saw_content


def test_chat_cached_and_reasoning_arithmetic() -> None:
    u = normalise_usage("openai-chat", {
        "prompt_tokens": 1000, "completion_tokens": 300, "total_tokens": 1300,
        "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 100},
        "completion_tokens_details": {"reasoning_tokens": 200}})
    assert u == Usage(input_tokens=300, output_tokens=300, cache_read_tokens=600,
                      cache_write_tokens=100, reasoning_tokens=200)
    assert u.total_tokens == 1300


def test_chat_nonstream() -> None:
    t = track("openai-chat", raw("openai_chat_nonstream_response.json"), stream=False, size=5)
    assert t.usage == Usage(input_tokens=19, output_tokens=10)
    assert (t.finish_reason, t.model, t.saw_content) == ("stop", "gpt-5.4", True)
    t = track("openai-chat", raw("openai_chat_tools_response.json"), stream=False)
    assert t.finish_reason == "tool_calls" and t.saw_content


def test_chat_error_body() -> None:
    t = track("openai-chat", raw("openai_error_invalid_api_key.json"), stream=False)
    assert t.error is not None and t.error[0] == "invalid_request_error"
    assert t.usage is None


@pytest.mark.parametrize("size", SIZES)
def test_responses_stream_reasoning_usage(size: int) -> None:
    t = track("openai-responses", raw("openai_responses_stream_reasoning_tool_call.sse"),
              stream=True, size=size)
    assert t.usage == Usage(input_tokens=78, output_tokens=221, reasoning_tokens=192)
    assert t.finish_reason == "completed"
    assert t.saw_content and t.error is None
    assert t.model


def test_responses_stream_error_then_failed() -> None:
    t = track("openai-responses", raw("openai_responses_stream_error_failed.sse"), stream=True)
    assert t.error is not None
    assert t.error[0] == "rate_limit_exceeded"
    assert t.error[1].startswith("Request too large")
    assert t.finish_reason == "failed"
    assert not t.saw_content


def test_responses_nonstream_and_incomplete_reason() -> None:
    t = track("openai-responses", raw("openai_responses_nonstream_response.json"), stream=False)
    assert t.usage == Usage(input_tokens=36, output_tokens=87)
    assert t.finish_reason == "completed" and t.model == "gpt-5.4"
    body = json.dumps({"status": "incomplete", "incomplete_details": {
        "reason": "max_output_tokens"}, "output": [], "usage": {
        "input_tokens": 50, "input_tokens_details": {"cached_tokens": 40},
        "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 9}}}).encode()
    t = track("openai-responses", body, stream=False)
    assert t.finish_reason == "max_output_tokens"
    assert t.usage == Usage(input_tokens=10, cache_read_tokens=40, output_tokens=9,
                            reasoning_tokens=9)


@pytest.mark.parametrize("size", SIZES)
def test_gemini_stream_snapshots_last_wins(size: int) -> None:
    t = track("gemini", sse_wire("gemini_stream_text.sse"), stream=True, size=size)
    assert t.usage == Usage(input_tokens=21, output_tokens=47)  # not 4 x 21 prompt tokens
    assert (t.finish_reason, t.model) == ("STOP", "gemini-2.0-flash")
    assert t.saw_content


def test_gemini_stream_without_blank_lines_as_stored() -> None:
    # The prism fixture omits blank lines: one SSE event with 4 data lines; still last wins.
    t = track("gemini", raw("gemini_stream_text.sse"), stream=True, size=33)
    assert t.usage == Usage(input_tokens=21, output_tokens=47)
    assert t.finish_reason == "STOP"


def test_gemini_stream_thoughts_added_to_output() -> None:
    t = track("gemini", sse_wire("gemini_stream_thought_tool_call.sse"), stream=True, size=40)
    assert t.usage == Usage(input_tokens=131, output_tokens=110, reasoning_tokens=95)
    assert t.model == "gemini-3-pro-preview"


def test_gemini_nonstream_cached_included_in_prompt() -> None:
    t = track("gemini", raw("gemini_usage_cached.json"), stream=False, size=64)
    assert t.usage == Usage(input_tokens=16, cache_read_tokens=88759, output_tokens=116)
    assert t.usage.total_tokens == 88891
    assert t.model == "gemini-1.5-flash-002"


def test_gemini_tool_use_prompt_counts_as_input() -> None:
    u = normalise_usage("gemini", {"promptTokenCount": 100, "toolUsePromptTokenCount": 7,
                                   "cachedContentTokenCount": 60, "candidatesTokenCount": 5,
                                   "thoughtsTokenCount": 3})
    assert u == Usage(input_tokens=47, cache_read_tokens=60, output_tokens=8, reasoning_tokens=3)


def test_gemini_json_array_stream() -> None:
    chunks = [doc("gemini_nonstream_text_response.json"), doc("gemini_usage_cached.json")]
    body = json.dumps(chunks).encode()
    t = track("gemini", b"  " + body, stream=True, size=17)
    assert t.usage == Usage(input_tokens=16, cache_read_tokens=88759, output_tokens=116)
    assert t.saw_content


def test_gemini_array_wrapped_error() -> None:
    t = track("gemini", raw("gemini_error_function_response_count.json"), stream=True, size=10)
    assert t.error is not None and t.error[0] == "INVALID_ARGUMENT"
    assert "function response parts" in t.error[1]


def test_gemini_safety_and_blocked_prompt() -> None:
    t = track("gemini", raw("gemini_safety_finish.json"), stream=False)
    assert t.finish_reason == "SAFETY"
    blocked = b'{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"},"usageMetadata":{}}'
    t = track("gemini", blocked, stream=False)
    assert t.finish_reason == "PROHIBITED_CONTENT"
    assert not t.saw_content
