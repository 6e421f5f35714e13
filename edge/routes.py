"""Pure request routing: which dialect and operation a method + path asks for.

A path prefix in the client's base URL is allowed (``/anything/v1/messages``), so every
pattern is matched against the end of the path.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["Route", "match_route"]


class Route(NamedTuple):
    kind: str  # "llm" | "models" | "health" | "readiness" | "metrics" | "root"
    dialect: str = ""
    operation: str = "generate"  # generate | count_tokens
    model: str = ""  # Gemini: from the path
    stream: bool | None = None  # Gemini: decided by the path; others: by the body
    api_version: str = ""


_GEMINI = re.compile(
    r"/(v1|v1beta|v1alpha)/models/([^/:]+(?:/[^/:]+)?):"
    r"(generateContent|streamGenerateContent|countTokens)$"
)
_GEMINI_OPS = {
    "generateContent": ("generate", False),
    "streamGenerateContent": ("generate", True),
    "countTokens": ("count_tokens", False),
}

_POST_SUFFIXES: tuple[tuple[str, Route], ...] = (
    ("/v1/messages/count_tokens", Route("llm", "anthropic", "count_tokens", stream=False)),
    ("/v1/messages", Route("llm", "anthropic")),
    ("/chat/completions", Route("llm", "openai-chat")),
    ("/responses", Route("llm", "openai-responses")),
    ("/messages/count_tokens", Route("llm", "anthropic", "count_tokens", stream=False)),
    ("/messages", Route("llm", "anthropic")),
)

_EXACT_GET = {
    "/health": Route("health"),
    "/healthz": Route("health"),
    "/readiness": Route("readiness"),
    "/readyz": Route("readiness"),
    "/metrics": Route("metrics"),
    "/": Route("root"),
}


def match_route(method: str, path: str) -> Route | None:
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/")
    if method == "POST":
        for suffix, route in _POST_SUFFIXES:
            if path.endswith(suffix):
                return route
        m = _GEMINI.search(path)
        if m:
            op, stream = _GEMINI_OPS[m.group(3)]
            model = m.group(2)
            if model.startswith("models/"):
                model = model[len("models/"):]
            return Route("llm", "gemini", op, model, stream, m.group(1))
        return None
    if method in ("GET", "HEAD"):
        exact = _EXACT_GET.get(path or "/")
        if exact is not None:
            return exact
        if method == "HEAD":
            return Route("root")
        if path.endswith(("/v1beta/models", "/v1alpha/models")):
            return Route("models", "gemini")
        if path.endswith("/models"):
            return Route("models")  # dialect decided by the client's headers
    return None
