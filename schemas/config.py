"""Configuration kept in NATS KV: providers and gateway settings.

The TOML config file and the CLI both produce these Structs; routers and edges watch the KV
buckets, so a change is seen on the next request without a restart.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Literal

import msgspec

from schemas.dialects import Dialect

__all__ = [
    "CLIENT_APPS",
    "ActiveProviders",
    "BreakerPolicy",
    "GatewaySettings",
    "RoutingSettings",
    "UnifiedUpstream",
    "ProviderConfig",
    "Timeouts",
    "ENCRYPTED_PREFIX",
    "PROVIDER_NAME_RE",
    "MAX_AFFINITY_TTL_S",
]

PROVIDER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# a literal secret encrypted at rest (codeswitch/secrets.py)
ENCRYPTED_PREFIX = "enc:v1:"


class Timeouts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Seconds. first_byte covers the whole body of a non-streaming answer."""

    connect: float = 10.0
    first_byte: float = 600.0
    idle: float = 300.0  # between two chunks of a stream
    total: float = 3600.0


class ProviderConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    dialect: Dialect
    base_url: str
    # "env:NAME" resolved by the router at call time, or a literal: stored encrypted in KV
    # ("enc:v1:...", codeswitch/secrets.py), decrypted by the router at call time
    api_key: str = ""
    models: list[str] = []  # glob patterns of requested models it serves; empty = all
    model_map: dict[str, str] = {}  # requested model (glob) -> upstream model
    priority: int = 1  # lower is tried first
    weight: int = 1
    enabled: bool = True
    headers: dict[str, str] = {}  # extra headers sent upstream
    timeouts: Timeouts = Timeouts()
    source: str = "cli"  # "config" when it came from the config file
    # openai-chat providers, translated requests: the output-limit field to send.
    # "auto": max_completion_tokens for api.openai.com (its reasoning models refuse
    # max_tokens), max_tokens elsewhere (DeepSeek, vLLM, Ollama... read only max_tokens)
    chat_max_tokens: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"

    def __post_init__(self) -> None:
        if not PROVIDER_NAME_RE.match(self.name):
            raise ValueError(
                f"provider name {self.name!r} must be 1-64 letters, digits, '_' or '-'"
            )
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {self.base_url!r} must start with http:// or https://")
        if self.weight < 0:
            raise ValueError("weight must be >= 0")

    def max_tokens_field(self) -> str:
        if self.chat_max_tokens != "auto":
            return self.chat_max_tokens
        return "max_completion_tokens" if "api.openai.com" in self.base_url else "max_tokens"

    def serves(self, model: str) -> bool:
        if not self.models:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def upstream_model(self, model: str) -> str:
        exact = self.model_map.get(model)
        if exact is not None:
            return exact
        for pattern, target in self.model_map.items():
            if fnmatch.fnmatchcase(model, pattern):
                return target
        return model

    def masked(self) -> ProviderConfig:
        """A copy safe to print: a literal key is reduced to its last 4 characters (decrypt an
        encrypted one first to see those; otherwise it shows as ``enc:…``)."""
        key = self.api_key
        if key.startswith(ENCRYPTED_PREFIX):
            key = "enc:…"
        elif key and not key.startswith("env:"):
            key = "…" + key[-4:] if len(key) > 8 else "…"
        return msgspec.structs.replace(self, api_key=key)


class GatewaySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Edge-wide settings (KV bucket cs_settings, key "gateway")."""

    # sha256 hex digests of accepted client keys; empty = any key accepted
    key_hashes: list[str] = []
    max_body_bytes: int = 32 * 1024 * 1024
    pickup_timeout: float = 5.0  # seconds for a router to take a request before a 503
    body_log: bool = False
    # the time zone of budget periods (day, week, month): an IANA name; "" = the machine's
    timezone: str = ""


class BreakerPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Circuit breaker thresholds (workers/router/breaker.py)."""

    failures: int = 5  # failures inside the window that open the breaker
    window_s: float = 60.0
    cooldown_s: float = 30.0  # open -> half_open after this long
    successes: int = 1  # successful probes in a row that close it again
    probe_timeout_s: float = 120.0


MAX_AFFINITY_TTL_S = 7 * 24 * 3600.0  # the affinity bucket's own max age (runtime/names.py)
DEFAULT_FAILOVER_STATUSES = [408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529]


class RoutingSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """KV cs_settings key "routing"; config file table [routing]."""

    # inside one priority level: round-robin | weighted | least-loaded
    strategy: str = "round-robin"
    # upstream statuses that fall back to the next provider (before anything reached the
    # client); any other 4xx goes back to the client: it would fail everywhere
    failover_statuses: list[int] = msgspec.field(
        default_factory=lambda: list(DEFAULT_FAILOVER_STATUSES))
    breaker: BreakerPolicy = BreakerPolicy()
    # session affinity: a session's requests (per session and model) go to the provider that
    # served its previous one while that provider is healthy, so its prompt cache keeps
    # hitting (workers/router/affinity.py); forgotten after affinity_ttl_s without a request
    affinity: bool = True
    affinity_ttl_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.strategy not in ("round-robin", "weighted", "least-loaded"):
            raise ValueError(f"strategy {self.strategy!r} must be round-robin, weighted or "
                             "least-loaded")
        if not 1 <= self.affinity_ttl_s <= MAX_AFFINITY_TTL_S:
            raise ValueError(f"affinity_ttl_s must be between 1 and {MAX_AFFINITY_TTL_S:.0f} "
                             "seconds (7 days)")


# The clients whose active provider can be switched at run time, by the dialect they speak.
CLIENT_APPS = {"claude": "anthropic", "codex": "openai-responses", "gemini": "gemini",
               "openai": "openai-chat"}


class ActiveProviders(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """KV cs_settings key "active": the provider each client app uses first (the rest stay as
    fallback). Keys are CLIENT_APPS names."""

    by_app: dict[str, str] = {}

    def for_dialect(self, dialect: str) -> str | None:
        for app, app_dialect in CLIENT_APPS.items():
            if app_dialect == dialect and app in self.by_app:
                return self.by_app[app]
        return None


class UnifiedUpstream(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """KV cs_settings key "unified": every request goes to one NEW-API/one-api style gateway
    first; the local providers are the fallback (the seed's new_api_* settings)."""

    enabled: bool = False
    url: str = "http://localhost:3000"
    token: str = ""  # env:NAME, or a literal (stored encrypted, like a provider's api_key)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r} must start with http:// or https://")
