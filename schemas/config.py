"""Configuration kept in NATS KV: providers and gateway settings.

The TOML config file and the CLI both produce these Structs; routers and edges watch the KV
buckets, so a change is seen on the next request without a restart.
"""

from __future__ import annotations

import fnmatch
import os
import re

import msgspec

from schemas.dialects import Dialect

__all__ = [
    "GatewaySettings",
    "ProviderConfig",
    "Timeouts",
    "resolve_secret",
    "PROVIDER_NAME_RE",
]

PROVIDER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


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
    api_key: str = ""  # literal, or "env:NAME" resolved by the router at call time
    models: list[str] = []  # glob patterns of requested models it serves; empty = all
    model_map: dict[str, str] = {}  # requested model (glob) -> upstream model
    priority: int = 1  # lower is tried first
    weight: int = 1
    enabled: bool = True
    headers: dict[str, str] = {}  # extra headers sent upstream
    timeouts: Timeouts = Timeouts()
    source: str = "cli"  # "config" when it came from the config file

    def __post_init__(self) -> None:
        if not PROVIDER_NAME_RE.match(self.name):
            raise ValueError(
                f"provider name {self.name!r} must be 1-64 letters, digits, '_' or '-'"
            )
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {self.base_url!r} must start with http:// or https://")
        if self.weight < 0:
            raise ValueError("weight must be >= 0")

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
        """A copy safe to print: a literal key is reduced to its last 4 characters."""
        key = self.api_key
        if key and not key.startswith("env:"):
            key = "…" + key[-4:] if len(key) > 8 else "…"
        return msgspec.structs.replace(self, api_key=key)


class GatewaySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Edge-wide settings (KV bucket cs_settings, key "gateway")."""

    # sha256 hex digests of accepted client keys; empty = any key accepted
    key_hashes: list[str] = []
    max_body_bytes: int = 32 * 1024 * 1024
    pickup_timeout: float = 5.0  # seconds for a router to take a request before a 503
    body_log: bool = False


def resolve_secret(value: str) -> str:
    """Resolve "env:NAME" to the variable's value ("" when unset); literals pass through."""
    if value.startswith("env:"):
        return os.environ.get(value[4:], "")
    return value
