"""Client authentication: where the key is found, and the one place keys are checked.

On loopback with no keys configured any key is accepted (as the original tool does). With
``gateway.key_hashes`` set, the client's key must hash to one of them. The multi-user key and
quota check belongs in :func:`authenticate` — it is the only caller-facing gate.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import NamedTuple

from schemas.config import GatewaySettings
from schemas.errors import GatewayError

__all__ = ["AuthError", "Principal", "authenticate", "client_key", "hash_key"]


class AuthError(GatewayError):
    """No key, or a key this gateway does not know: 401, code ``authentication``."""

    status = 401
    code = "authentication"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class Principal(NamedTuple):
    key_hash: str | None  # sha256 of the key the client sent, never the key
    user: str | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def client_key(headers: dict[str, str], query: str) -> str | None:
    """The key as the client sent it: x-api-key, Authorization Bearer, x-goog-api-key, ?key=."""
    key = headers.get("x-api-key") or headers.get("x-goog-api-key")
    if key:
        return key
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value:
            return value.strip()
    if "key=" in query:
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if name == "key" and value:
                return value
    return None


def authenticate(headers: dict[str, str], query: str, settings: GatewaySettings) -> Principal:
    key = client_key(headers, query)
    digest = hash_key(key) if key else None
    if settings.key_hashes:
        if digest is None:
            raise AuthError("missing API key: this gateway requires a key")
        if not any(hmac.compare_digest(digest, h) for h in settings.key_hashes):
            raise AuthError("invalid API key")
    # Multi-user keys and quotas: look the key hash up here and return its user.
    return Principal(digest)
