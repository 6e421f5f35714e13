"""The four wire dialects codeswitch speaks, as plain constants."""

from __future__ import annotations

from typing import Final, Literal, get_args

__all__ = [
    "ANTHROPIC",
    "DIALECTS",
    "GEMINI",
    "OPENAI_CHAT",
    "OPENAI_RESPONSES",
    "Dialect",
    "Operation",
]

Dialect = Literal["anthropic", "openai-chat", "openai-responses", "gemini"]

ANTHROPIC: Final = "anthropic"
OPENAI_CHAT: Final = "openai-chat"
OPENAI_RESPONSES: Final = "openai-responses"
GEMINI: Final = "gemini"

DIALECTS: Final[tuple[str, ...]] = get_args(Dialect)

# What a request asks the upstream to do. "generate" is the main call of every dialect
# (messages, chat completions, responses, generateContent); "count_tokens" exists natively
# for Anthropic and Gemini only.
Operation = Literal["generate", "count_tokens"]
