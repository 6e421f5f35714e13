"""Client authentication: where the key is found, and the one place keys are checked.

Without users (KV ``cs_users`` empty) nothing changes from a personal gateway: on loopback with
no keys configured any key is accepted (as the original tool does), and with
``gateway.key_hashes`` set the client's key must hash to one of them. Once a user exists, every
request needs one of the users' keys (KV ``cs_keys``), and ``gateway.key_hashes`` no longer
applies: :class:`Directory` is the edge's watched local copy of both buckets, indexed by the
keys' sha256, so the check is one hash and one dict lookup per request (O(1) in the number of
users and keys). A key that is unknown or missing is a 401; a known key that may not make the
request (revoked, expired, disabled, its user disabled, a model outside its allow-list) is a
403 whose message says why: both are final for every SDK and CLI (none retries them).

:func:`authenticate` is the only caller-facing gate; budgets (``edge/quota.py``) and rate
limits (``edge/ratelimit.py``) are checked after it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from typing import NamedTuple

import msgspec

from schemas.config import GatewaySettings
from schemas.errors import GatewayError
from schemas.users import Key, User

__all__ = ["AccessDenied", "AuthError", "Directory", "Principal", "authenticate",
           "client_key", "for_client", "hash_key"]

log = logging.getLogger("codeswitch.edge.auth")


class AuthError(GatewayError):
    """No key, or a key this gateway does not know: 401, code ``authentication``."""

    status = 401
    code = "authentication"

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message, retryable=retryable)


class AccessDenied(GatewayError):
    """A known key that may not make this request: 403 (Anthropic ``permission_error``, OpenAI
    ``permission_denied`` with ``code`` = why, Gemini ``PERMISSION_DENIED``), never retried.
    ``code``: key_revoked | key_expired | key_disabled | user_disabled | model_not_allowed."""

    status = 403
    code = "permission"

    def __init__(self, message: str, code: str, *, user_id: str | None = None,
                 key_id: str | None = None) -> None:
        super().__init__(message, code=code, retryable=False)
        self.user_id = user_id
        self.key_id = key_id


class _Grant(NamedTuple):
    """One key as the edge holds it: the record and its model allow-list compiled."""

    key: Key
    allow: Callable[[str], object] | None  # None: every model


class Principal(NamedTuple):
    key_hash: str | None  # sha256 of the key the client sent, never the key
    user_id: str | None = None  # the gateway user (None without users)
    key_id: str | None = None
    grant: _Grant | None = None  # set when the key has a model allow-list
    directory: Directory | None = None

    def check_model(self, model: str) -> None:
        """Refuse a model outside the key's allow-list (a 403 naming the allowed globs)."""
        grant = self.grant
        if grant is None or grant.allow is None or grant.allow(model):
            return
        key = grant.key
        raise AccessDenied(
            f"API key {self._label()} may not use model {model!r} (allowed: "
            f"{', '.join(key.models)}); ask your gateway admin to change the key's models",
            "model_not_allowed", user_id=self.user_id, key_id=self.key_id)

    def _label(self) -> str:
        if self.grant is None:
            return "?"
        return _label(self.grant.key, self.directory.users if self.directory else {})


def _label(key: Key, users: dict[str, User]) -> str:
    owner = users.get(key.user)
    return f"{key.name!r} ({key.prefix}…) of user {owner.name if owner else key.user}"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


_user_decoder = msgspec.json.Decoder(User)
_key_decoder = msgspec.json.Decoder(Key)


def _allow(models: list[str]) -> Callable[[str], object] | None:
    if not models:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in models)).match


class Directory:
    """The edge's local copy of KV ``cs_users`` and ``cs_keys`` (``apply_user`` /
    ``apply_key`` are ``bus.follow_bucket`` callbacks), indexed by key hash. A record that
    does not decode is dropped (its key stops working: fail closed), and logged."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.keys: dict[str, Key] = {}  # by key id
        self.by_hash: dict[str, _Grant] = {}
        # key ids per hash: a secret moved from one key to another (the config file) has two
        # records for a moment; the live one answers
        self._ids: dict[str, set[str]] = {}
        self._allow: dict[str, Callable[[str], object] | None] = {}

    @property
    def active(self) -> bool:
        """Users exist: every request needs one of their keys."""
        return bool(self.users)

    def apply_user(self, key: str, value: bytes | None, revision: int = 0) -> None:
        if value is None:
            self.users.pop(key, None)
            return
        try:
            self.users[key] = _user_decoder.decode(value)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.error("user %s: invalid record dropped: %s", key, exc)
            self.users.pop(key, None)

    def apply_key(self, key: str, value: bytes | None, revision: int = 0) -> None:
        old = self.keys.pop(key, None)
        self._allow.pop(key, None)
        if old is not None:
            self._ids.get(old.hash, set()).discard(key)
            self._reindex(old.hash)
        if value is None:
            return
        try:
            record = _key_decoder.decode(value)
            allow = _allow(record.models)
        except (msgspec.ValidationError, msgspec.DecodeError, re.error) as exc:
            log.error("key %s: invalid record dropped: %s", key, exc)
            return
        self.keys[key] = record
        self._allow[key] = allow
        self._ids.setdefault(record.hash, set()).add(key)
        self._reindex(record.hash)

    def _reindex(self, digest: str) -> None:
        """The grant of a hash: its key, or of several the one not revoked (else any)."""
        ids = self._ids.get(digest)
        if not ids:
            self._ids.pop(digest, None)
            self.by_hash.pop(digest, None)
            return
        kid = min(ids, key=lambda i: (self.keys[i].revoked is not None, i))
        self.by_hash[digest] = _Grant(self.keys[kid], self._allow[kid])

    def check(self, digest: str | None, now: float) -> Principal:
        """The principal of a request presenting the key with this sha256 (None: no key)."""
        # x-should-retry: false on these 401s: Claude Code retries a 401 ten times otherwise
        # (over three minutes), taking it for an expired login (bench/real_clients/users.py)
        if digest is None:
            raise AuthError("missing API key: this gateway has users, and each request needs "
                            "one of their keys (an admin creates one with `codeswitch key "
                            "create`)", retryable=False)
        grant = self.by_hash.get(digest)
        if grant is None:
            raise AuthError("invalid API key", retryable=False)
        key = grant.key
        user = self.users.get(key.user)
        if user is None:  # its owner was removed (its keys go with it)
            raise AuthError("invalid API key", retryable=False)
        if key.revoked is not None or not key.enabled or not user.enabled or (
                key.expires is not None and now >= key.expires):
            raise self._denied(key, user, now)
        return Principal(digest, user.id, key.id, grant if grant.allow is not None else None,
                         self)

    def _denied(self, key: Key, user: User, now: float) -> AccessDenied:
        label = _label(key, self.users)
        if key.revoked is not None:
            why, code = f"was revoked at {_when(key.revoked)}", "key_revoked"
        elif key.expires is not None and now >= key.expires:
            why, code = f"expired at {_when(key.expires)}", "key_expired"
        elif not key.enabled:
            why, code = "is disabled", "key_disabled"
        else:
            return AccessDenied(f"user {user.name} is disabled on this gateway (API key "
                                f"{key.name!r}); ask your gateway admin", "user_disabled",
                                user_id=user.id, key_id=key.id)
        return AccessDenied(f"API key {label} {why}; ask your gateway admin for a new key",
                            code, user_id=user.id, key_id=key.id)


# The status a client family gets for a refused user key instead of 401/403, when it retries
# those. Codex 0.171 retries 401 and 403 five times (six requests in ~7 s) and only then shows
# the message; a 400 it neither retries nor hides (bench/real_clients/users.py).
_REFUSAL_STATUS = {"codex": 400}


def for_client(exc: GatewayError, headers: dict[str, str]) -> None:
    """A refused user key (not today's gateway-key 401): the status that client stops at."""
    if isinstance(exc, AuthError | AccessDenied) and exc.retryable is False:
        from edge.identity import client_family

        status = _REFUSAL_STATUS.get(client_family(headers) or "")
        if status is not None:
            exc.status = status


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


def authenticate(headers: dict[str, str], query: str, settings: GatewaySettings,
                 directory: Directory | None = None, now: float | None = None) -> Principal:
    key = client_key(headers, query)
    digest = hash_key(key) if key else None
    if directory is not None and directory.users:  # users exist: only their keys
        return directory.check(digest, time.time() if now is None else now)
    if settings.key_hashes:
        if digest is None:
            raise AuthError("missing API key: this gateway requires a key")
        if not any(hmac.compare_digest(digest, h) for h in settings.key_hashes):
            raise AuthError("invalid API key")
    return Principal(digest)
