"""Fake LLM providers (Anthropic, OpenAI Chat/Responses, Gemini) for end-to-end tests."""

from tests.fakes.upstream import (
    DEFAULT_CHUNKS,
    DEFAULT_TEXT,
    DIALECTS,
    FAKE_COUNT_TOKENS,
    FAKE_TOOL_CALLS,
    FAKE_USAGE,
    STREAM_ERROR,
    Behavior,
    FakeUpstream,
    Received,
    numbered_chunks,
)

__all__ = [
    "DEFAULT_CHUNKS",
    "DEFAULT_TEXT",
    "DIALECTS",
    "FAKE_COUNT_TOKENS",
    "FAKE_TOOL_CALLS",
    "FAKE_USAGE",
    "STREAM_ERROR",
    "Behavior",
    "FakeUpstream",
    "Received",
    "numbered_chunks",
]
