"""The common form every dialect decodes into and encodes from (hub and spoke).

Requests: ``Request`` with ``Message``s made of ``Part``s. Responses: ``Response``. Streams: the
``Stream*`` events, one per upstream delta, so nothing waits for the end of the stream.

What only one side can express rides along as typed extras (``reasoning_effort``,
``response_format``, ``Reasoning.encrypted``, ``ToolCall.kind == "custom"``...), so the
same-family pair Chat <-> Responses loses nothing.

Finish reasons use the Anthropic names plus three of our own; each dialect module has the
explicit table to and from its own values (docs/translator.md "Finish reasons"):
    end_turn  max_tokens  stop_sequence  tool_use  refusal  pause_turn
    context_window (Anthropic model_context_window_exceeded)
    malformed_tool_call (Gemini MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL,
                         TOO_MANY_TOOL_CALLS)
    other (Gemini OTHER and friends)
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.errors import GatewayError
from schemas.events import Usage

__all__ = [
    "FINISH_REASONS",
    "Image",
    "Message",
    "Part",
    "Reasoning",
    "Request",
    "Response",
    "ResponseFormat",
    "StreamError",
    "StreamEvent",
    "StreamFinish",
    "StreamReasoning",
    "StreamSignature",
    "StreamStart",
    "StreamText",
    "StreamToolArgs",
    "StreamToolEnd",
    "StreamToolStart",
    "StreamUsage",
    "Text",
    "Thinking",
    "Tool",
    "ToolCall",
    "ToolChoice",
    "ToolResult",
    "TranslationError",
]

FINISH_REASONS = ("end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal", "pause_turn",
                  "context_window", "malformed_tool_call", "other")


class TranslationError(GatewayError):
    """A request that cannot be expressed in the target dialect (sent back as a 400), or an
    upstream answer that cannot be expressed in the client's (502). Its clients always saw
    ``"code": null`` in OpenAI's envelope, so the code stays off the wire."""

    code = "translation"
    code_on_wire = False

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, status=status)


class _S(msgspec.Struct, kw_only=True):
    pass


# -- content parts --------------------------------------------------------------------------

class Text(_S):
    text: str
    cache_control: dict[str, Any] | None = None  # Anthropic only


class Image(_S):
    media_type: str | None = None
    data: str | None = None  # base64
    url: str | None = None  # https (or any URL the target fetches)
    file_id: str | None = None  # OpenAI file id / Gemini fileUri
    detail: str | None = None  # OpenAI only


class ToolCall(_S):
    id: str
    name: str
    arguments: str  # JSON text (custom tools: {"input": "<raw text>"})
    kind: str = "function"  # "function" | "custom" (Responses free-form tool)
    signature: str | None = None  # Gemini thoughtSignature attached to this call
    item_id: str | None = None  # Responses fc_... id
    namespace: str | None = None  # Responses: the `namespace` tool group the tool came from


class ToolResult(_S):
    call_id: str
    content: list[Text | Image]
    is_error: bool = False
    name: str | None = None  # Gemini needs it; filled from the matching call
    kind: str = "function"


class Reasoning(_S):
    """A thinking block. ``signature`` belongs to ``source`` and is never sent elsewhere."""

    text: str = ""
    signature: str | None = None
    redacted: str | None = None  # Anthropic redacted_thinking data
    encrypted: str | None = None  # Responses encrypted_content
    source: str | None = None  # dialect that produced the signature / encrypted content
    item_id: str | None = None


Part = Text | Image | ToolCall | ToolResult | Reasoning


class Message(_S):
    role: str  # "user" | "assistant" | "system" | "developer"
    parts: list[Part]


# -- request --------------------------------------------------------------------------------

class Tool(_S):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON Schema
    kind: str = "function"  # "function" | "custom"
    strict: bool | None = None
    extra: dict[str, Any] | None = None  # custom tool format, cache_control
    namespace: str | None = None  # Responses `namespace` group (Codex), flattened elsewhere


class ToolChoice(_S):
    mode: str  # "auto" | "none" | "required" | "tool"
    name: str | None = None


class Thinking(_S):
    enabled: bool = True
    budget_tokens: int | None = None
    effort: str | None = None  # minimal | low | medium | high (| max)
    adaptive: bool = False
    include_thoughts: bool = True
    summary: str | None = None  # Responses reasoning.summary
    level: str | None = None  # Gemini thinkingLevel


class ResponseFormat(_S):
    type: str  # "json_schema" | "json_object" | "text"
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None


class Request(_S):
    model: str = ""
    system: list[Text] = msgspec.field(default_factory=list)
    messages: list[Message] = msgspec.field(default_factory=list)
    tools: list[Tool] = msgspec.field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] | None = None
    stream: bool = False
    thinking: Thinking | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    # Chat <-> Responses extras
    reasoning_effort: str | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    verbosity: str | None = None
    seed: int | None = None
    metadata: dict[str, Any] | None = None
    dropped: list[str] = msgspec.field(default_factory=list)  # fields deliberately dropped


# -- response -------------------------------------------------------------------------------

class Response(_S):
    id: str = ""
    model: str = ""
    content: list[Text | ToolCall | Reasoning] = msgspec.field(default_factory=list)
    finish: str = "end_turn"
    stop_sequence: str | None = None
    usage: Usage | None = None
    created: int | None = None


# -- stream events --------------------------------------------------------------------------

class StreamStart(_S):
    id: str | None = None
    model: str | None = None
    usage: Usage | None = None


class StreamText(_S):
    text: str


class StreamReasoning(_S):
    text: str


class StreamSignature(_S):
    """Signature / encrypted content / redacted data closing the current reasoning block."""

    signature: str | None = None
    redacted: str | None = None
    encrypted: str | None = None
    source: str | None = None
    item_id: str | None = None


class StreamToolStart(_S):
    key: int | str
    id: str
    name: str
    kind: str = "function"
    signature: str | None = None
    namespace: str | None = None


class StreamToolArgs(_S):
    key: int | str
    delta: str


class StreamToolEnd(_S):
    key: int | str


class StreamUsage(_S):
    usage: Usage


class StreamFinish(_S):
    reason: str
    stop_sequence: str | None = None


class StreamError(_S):
    status: int
    message: str
    code: str | None = None


StreamEvent = (StreamStart | StreamText | StreamReasoning | StreamSignature | StreamToolStart
               | StreamToolArgs | StreamToolEnd | StreamUsage | StreamFinish | StreamError)
