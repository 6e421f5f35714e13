"""Building the upstream HTTP request for a provider, and mapping transport failures.

Pure helpers (``upstream_url``, ``upstream_headers``, ``rewrite_model``) plus ``map_errors``,
the one place where HTTP client exceptions become our error classes.

The upstream client is aiohttp, not httpx: on this hot path httpx measured 1,190-1,230 us of
CPU per request at concurrency 16 against 78-82 us for aiohttp (docs/architecture.md,
"Upstream HTTP client"); httpx stays for the CLI's downloads and the alert webhooks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import aiohttp
import msgspec

from runtime.secrets import resolve_secret
from schemas.config import ProviderConfig
from schemas.errors import GatewayError
from workers.translator.common import TranslationError

__all__ = [
    "UpstreamFailure",
    "map_errors",
    "models_url",
    "rewrite_model",
    "upstream_headers",
    "upstream_url",
]

USER_AGENT = "codeswitch/0.1"
_raw_obj = msgspec.json.Decoder(dict[str, msgspec.Raw])
_enc = msgspec.json.Encoder()


class UpstreamFailure(GatewayError):
    """An attempt that failed before or while talking to the provider.

    ``upstream_status`` is the provider's HTTP status (0: no answer; 200: an error inside a
    stream); ``status`` what the client gets when no provider answers instead: the
    provider's error status, else 504 for a timeout and 502 for the rest. ``code`` is the
    error class (``connect``, ``timeout``, ``http_503``, ``stream_error``, ``protocol``...)."""

    upstream_status: int

    def __init__(self, error_class: str, message: str, status: int = 0,
                 body: bytes = b"", headers: dict[str, str] | None = None, *,
                 body_dialect: str | None = None, provider: str | None = None) -> None:
        headers = headers or {}
        client = status if status >= 400 else \
            504 if error_class in ("timeout", "connect_timeout") else 502
        super().__init__(message, status=client, code=error_class, provider=provider,
                         upstream_status=status, retry_after=headers.get("retry-after"))
        self.body = body  # in the provider's dialect unless body_dialect says otherwise
        self.headers = headers
        self.body_dialect = body_dialect

    @property
    def error_class(self) -> str:
        return self.code

    @property
    def client_message(self) -> str:
        if self.provider is None:
            return self.message
        return f"upstream {self.provider} failed: {self.message}"


def upstream_url(provider: ProviderConfig, *, operation: str, model: str, stream: bool,
                 query: str = "", sse: bool = True) -> str:
    base = provider.base_url.rstrip("/")
    d = provider.dialect
    if d == "anthropic":
        if base.endswith("/v1"):
            base = base[:-3]
        path = "/v1/messages/count_tokens" if operation == "count_tokens" else "/v1/messages"
        return base + path + (f"?{query}" if query else "")
    if d == "openai-chat":
        return base + "/chat/completions"
    if d == "openai-responses":
        return base + "/responses"
    # gemini: base as google-genai takes it (no version); a base ending in a version is kept
    version = ""
    for v in ("/v1beta", "/v1alpha", "/v1"):
        if base.endswith(v):
            version, base = v, base[: -len(v)]
            break
    version = version or "/v1beta"
    if operation == "count_tokens":
        return f"{base}{version}/models/{model}:countTokens"
    if stream:  # sse=False: Gemini's JSON-array stream, for a client that asked for it
        return f"{base}{version}/models/{model}:streamGenerateContent" + \
            ("?alt=sse" if sse else "")
    return f"{base}{version}/models/{model}:generateContent"


def models_url(provider: ProviderConfig) -> str:
    """The provider's own model list (GET), in the largest page it allows."""
    base = provider.base_url.rstrip("/")
    d = provider.dialect
    if d == "anthropic":
        return base.removesuffix("/v1") + "/v1/models?limit=1000"
    if d in ("openai-chat", "openai-responses"):
        return base + "/models"
    for v in ("/v1beta", "/v1alpha", "/v1"):
        if base.endswith(v):
            return base + "/models?pageSize=1000"
    return base + "/v1beta/models?pageSize=1000"


def upstream_headers(provider: ProviderConfig, passed: dict[str, str], *,
                     same_dialect: bool) -> dict[str, str]:
    """Provider credentials replace the client's; dialect headers pass only to the same
    dialect; the provider's extra headers come last."""
    key = resolve_secret(provider.api_key)
    headers = {"content-type": "application/json", "user-agent": USER_AGENT}
    d = provider.dialect
    if d == "anthropic":
        if same_dialect:
            headers.update(passed)
        headers.setdefault("anthropic-version", "2023-06-01")
        if key:
            headers["x-api-key"] = key
    elif d == "gemini":
        if key:
            headers["x-goog-api-key"] = key
    else:
        if same_dialect and "openai-beta" in passed:
            headers["openai-beta"] = passed["openai-beta"]
        if key:
            headers["authorization"] = f"Bearer {key}"
    for name, value in provider.headers.items():
        headers[name.lower()] = resolve_secret(value)
    return headers


def rewrite_model(body: bytes, model: str, requested: str) -> bytes:
    """Replace the body's "model" when the provider maps it to another name. Only the top
    level is decoded; every other value passes through as raw JSON."""
    if model == requested:
        return body
    try:
        doc = _raw_obj.decode(body)
    except RecursionError:  # the edge lets ~980 levels through; msgspec stops near there
        raise TranslationError("request body is JSON nested too deeply") from None
    doc["model"] = msgspec.Raw(_enc.encode(model))
    return _enc.encode(doc)


@contextlib.contextmanager
def map_errors(phase: str) -> Iterator[None]:
    """aiohttp exceptions -> UpstreamFailure with a stable error class and no secrets."""
    try:
        yield
    except aiohttp.ServerTimeoutError as exc:
        raise UpstreamFailure("timeout", f"upstream timed out ({phase})") from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamFailure("connect", f"connection failed: {_short(exc)}") from exc
    except aiohttp.ClientPayloadError as exc:  # aiohttp's text ("TransferEncodingError: 400,
        # Not enough data...") would reach the user; what happened is simpler than that
        raise UpstreamFailure("protocol", "upstream closed the connection before the answer "
                              f"was complete ({phase})") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise UpstreamFailure("protocol", f"upstream closed the connection ({phase})") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamFailure("transport", f"{type(exc).__name__} ({phase}): "
                              f"{_short(exc)}") from exc


def _short(exc: Any) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
