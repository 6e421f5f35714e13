"""Helpers shared by the dialect modules: JSON, ids, tool names, carried signatures, images."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from typing import Any

import msgspec

from .common import Image, Part, Reasoning, Text, ToolCall, ToolResult, TranslationError

__all__ = [
    "SKIP_SIGNATURE",
    "budget_for_effort",
    "carry",
    "dumps",
    "effort_for_budget",
    "loads",
    "new_id",
    "parse_args",
    "parse_data_url",
    "provider_tool_name",
    "result_text",
    "uncarry",
]

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()

# Google's documented value for replaying a functionCall whose signature is unknown.
SKIP_SIGNATURE = "skip_thought_signature_validator"


def dumps(obj: Any) -> bytes:
    return _enc.encode(obj)


def loads(body: bytes | str) -> Any:
    try:
        return _dec.decode(body)
    except msgspec.DecodeError as exc:
        raise TranslationError(f"request body is not valid JSON: {exc}") from None


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def parse_args(arguments: str) -> dict[str, Any] | None:
    """Tool arguments as an object; "" is {} (Chat's first fragment); None if not JSON."""
    if not arguments.strip():
        return {}
    try:
        value = _dec.decode(arguments)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else {"value": value}


# -- tool names -----------------------------------------------------------------------------
# Anthropic and OpenAI: ^[a-zA-Z0-9_-]{1,64}$. Gemini: letters, digits, _ . : -, starting with a
# letter or underscore, at most 64. A name that breaks the target's rule is renamed
# deterministically: invalid characters -> "_", and if anything changed or it is too long, a
# short hash of the original is appended, so two names never collide. The reverse map is
# rebuilt from the request (TranslationContext.tool_names).

_OPENAI_BAD = re.compile(r"[^a-zA-Z0-9_-]")
_GEMINI_BAD = re.compile(r"[^a-zA-Z0-9_.:-]")


def provider_tool_name(name: str, dialect: str) -> str:
    if dialect == "gemini":
        clean = _GEMINI_BAD.sub("_", name)
        if clean and not (clean[0].isalpha() or clean[0] == "_"):
            clean = "_" + clean
    else:
        clean = _OPENAI_BAD.sub("_", name)
    if clean == name and 0 < len(name) <= 64:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return (clean or "tool")[:55] + "_" + digest


# -- signatures carried through a client that cannot hold them natively -----------------------
# A provider's signature is opaque and provider-bound. When the client's dialect has a field the
# client echoes back unchanged (Anthropic thinking.signature, Responses encrypted_content), the
# provider's value is wrapped as "cs1:<dialect>:<payload>" and unwrapped on the next request.
# Only the dialect that produced it ever receives it back; nothing is fabricated.

_PREFIX = "cs1:"


def carry(r: Reasoning) -> str:
    """The opaque string that stands for ``r`` in another dialect's echo field."""
    payload = dumps([r.text, r.signature, r.redacted, r.encrypted, r.item_id])
    return _PREFIX + (r.source or "") + ":" + base64.urlsafe_b64encode(payload).decode()


def uncarry(value: str | None, text: str = "") -> Reasoning | None:
    """Undo ``carry``; None if ``value`` is not a carried signature."""
    if not value or not value.startswith(_PREFIX):
        return None
    try:
        source, payload = value[len(_PREFIX):].split(":", 1)
        t, sig, red, enc, item = _dec.decode(base64.urlsafe_b64decode(payload))
    except (ValueError, msgspec.DecodeError, TypeError):
        return None
    return Reasoning(text=t or text, signature=sig, redacted=red, encrypted=enc, item_id=item,
                     source=source)


# -- effort <-> budget ------------------------------------------------------------------------

_BUDGETS = {"minimal": 512, "low": 2048, "medium": 8192, "high": 24576, "xhigh": 32768,
            "max": 32768}


def budget_for_effort(effort: str | None) -> int:
    return _BUDGETS.get(effort or "medium", 8192)


def effort_for_budget(budget: int | None) -> str:
    if budget is None or budget < 0:
        return "medium"
    if budget == 0:
        return "minimal"
    if budget <= 2048:
        return "low"
    if budget <= 12000:
        return "medium"
    return "high"


# -- content helpers --------------------------------------------------------------------------

def parse_data_url(url: str) -> Image:
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media = head[5:].split(";")[0] or None
        return Image(media_type=media, data=data)
    return Image(url=url)


def data_url(img: Image) -> str | None:
    if img.data is not None:
        return f"data:{img.media_type or 'image/png'};base64,{img.data}"
    return img.url


def result_text(parts: list[Text | Image]) -> str:
    return "".join(p.text for p in parts if isinstance(p, Text))


def text_of(parts: list[Part]) -> str:
    return "".join(p.text for p in parts if isinstance(p, Text))


def call_names(messages: list[Any]) -> dict[str, str]:
    """tool call id -> tool name over a whole history (for results that lack the name)."""
    out: dict[str, str] = {}
    for m in messages:
        for p in m.parts:
            if isinstance(p, ToolCall):
                out[p.id] = p.name
    return out


def fill_result_names(messages: list[Any]) -> None:
    names = call_names(messages)
    for m in messages:
        for p in m.parts:
            if isinstance(p, ToolResult) and not p.name:
                p.name = names.get(p.call_id)


def opaque_user(value: str | None) -> str | None:
    """An end-user id for OpenAI's ``user``/``safety_identifier`` (at most 64 characters):
    short ids pass as they are; a longer one (Claude Code's ``metadata.user_id`` is a JSON
    string with a device id) becomes a stable hash, so no device id reaches a third party."""
    if not value or len(value) <= 64:
        return value
    import hashlib

    return "cs-" + hashlib.sha256(value.encode()).hexdigest()[:40]
