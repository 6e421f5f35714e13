"""Users, their API keys and their limits: the records in KV buckets ``cs_users`` (one key per
user id) and ``cs_keys`` (one key per key id), written by the CLI and ``codeswitch up`` and
watched by every edge.

A key's secret (``cs-…``) is generated once, shown once, and never stored: the record holds
its sha256 (hex) and a short prefix for display. sha256, not a slow password hash: a generated
secret carries 256 random bits (``secrets.token_urlsafe(32)``), so no dictionary or brute
force applies, and the edge must find a key by its hash in O(1) on every request (a salted,
deliberately slow hash would cost milliseconds per request and need a scan). Secrets from the
config file (``env:NAME``) must be long enough for the same argument (``MIN_SECRET_CHARS``).

``Limits`` are recorded on users and keys; RPM/TPM and concurrency are enforced by the edges
(``edge/ratelimit.py``), budgets by the edges from the quota worker's spend (``edge/quota.py``,
``workers/quota``). Records are decoded leniently
(unknown fields ignored) so that an edge of an older version keeps reading records a newer CLI
wrote.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import Annotated, Literal

import msgspec

__all__ = [
    "KEY_PREFIX",
    "MIN_SECRET_CHARS",
    "NAME_RE",
    "Budget",
    "Key",
    "Limits",
    "User",
    "config_key_id",
    "config_user_id",
    "hash_password",
    "hash_secret",
    "new_key_id",
    "new_secret",
    "new_user_id",
    "parse_budget",
    "secret_prefix",
    "verify_password",
]

KEY_PREFIX = "cs-"
# an `env:` secret from the config file shorter than this is refused (see the module docstring)
MIN_SECRET_CHARS = 20
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")

Role = Literal["admin", "user"]
Positive = Annotated[int, msgspec.Meta(gt=0)]


class Budget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How much may be spent per period: ``5usd/day``, ``200000tokens/month``,
    ``20usd/total`` (prepaid: never resets). Day, week (from Monday) and month reset on
    calendar boundaries in the gateway's time zone."""

    amount: Annotated[float, msgspec.Meta(gt=0)]
    unit: Literal["usd", "tokens"] = "usd"
    period: Literal["day", "week", "month", "total"] = "month"

    def label(self) -> str:
        amount = f"{self.amount:g}" if self.unit == "usd" else f"{int(self.amount)}"
        return f"{amount}{self.unit}/{self.period}"


class Limits(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True,
             forbid_unknown_fields=True):
    """Limits of a user or a key (both apply; the stricter wins). None: no limit."""

    budget: Budget | None = None
    # a fact (and an alert) when this share of the budget is spent, in percent (0, 100]
    soft_pct: Annotated[float, msgspec.Meta(gt=0, le=100)] | None = None
    rpm: Positive | None = None  # requests per minute, across all edges
    tpm: Positive | None = None  # tokens per minute, across all edges
    concurrency: Positive | None = None  # requests in flight at once

    def empty(self) -> bool:
        return self == Limits()

    def label(self) -> str:
        parts = []
        if self.budget is not None:
            parts.append(self.budget.label())
        if self.soft_pct is not None:
            parts.append(f"soft {self.soft_pct:g}%")
        for name in ("rpm", "tpm", "concurrency"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name} {value}")
        return ", ".join(parts)


class User(msgspec.Struct, frozen=True, kw_only=True):
    """KV ``cs_users``, key = ``id`` (stable: the name may be shown, the id is recorded)."""

    id: str
    name: str
    display_name: str = ""
    role: Role = "user"
    enabled: bool = True
    created: float = 0.0
    limits: Limits = Limits()
    source: str = "cli"  # "config": from [[users]] (removed when it leaves the file)
    # the console's sign-in password (`codeswitch user passwd`): hash_password's string, never
    # the password; "" = none (sign in with an admin key)
    password: str = ""

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ValueError(f"user name {self.name!r} must be 1-64 letters, digits, "
                             "'_', '.', '@' or '-', starting with a letter or digit")


class Key(msgspec.Struct, frozen=True, kw_only=True):
    """KV ``cs_keys``, key = ``id``. Never the secret: its sha256 and a display prefix."""

    id: str
    name: str
    user: str  # the owner's user id
    hash: str  # sha256 hex of the secret
    prefix: str = ""  # the secret's first characters, for display ("cs-AbCd")
    models: list[str] = []  # globs of the models it may request; empty = any
    expires: float | None = None  # unix seconds; None = never
    enabled: bool = True
    revoked: float | None = None  # when it was revoked (for good); None = not revoked
    created: float = 0.0
    limits: Limits = Limits()
    source: str = "cli"  # "config": from [[keys]]

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ValueError(f"key name {self.name!r} must be 1-64 letters, digits, "
                             "'_', '.', '@' or '-', starting with a letter or digit")
        if not re.fullmatch(r"[0-9a-f]{64}", self.hash):
            raise ValueError("key hash must be 64 lowercase hex digits (sha256)")

    def state(self, now: float | None = None) -> str:
        """active | disabled | revoked | expired."""
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and (time.time() if now is None else now) >= self.expires:
            return "expired"
        return "active" if self.enabled else "disabled"


def new_secret() -> str:
    """A new key's secret: ``cs-`` and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_prefix(secret: str) -> str:
    """What lists show of a key: its first 7 characters (``cs-`` + 4 of 43 random ones)."""
    return secret[:7]


# scrypt (RFC 7914) at N=2**15, r=8, p=1: ~32 MiB and ~50-100 ms per check, the cost OWASP
# suggests; a sign-in is rare, a request never checks a password
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**15, 8, 1
MIN_PASSWORD_CHARS = 10


def hash_password(password: str, *, n: int = _SCRYPT_N, r: int = _SCRYPT_R,
                  p: int = _SCRYPT_P) -> str:
    """``scrypt$N$r$p$<salt hex>$<hash hex>`` with a random 16-byte salt."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p,
                            maxmem=256 * n * r + 1024 * 1024, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a ``hash_password`` string (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or int(n) > 2**20 or int(r) > 32 or int(p) > 16:
            return False
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                             p=int(p), maxmem=256 * int(n) * int(r) + 1024 * 1024, dklen=32)
    except (ValueError, TypeError):
        return False
    return secrets.compare_digest(got.hex(), digest)


def new_user_id() -> str:
    return "u_" + secrets.token_hex(6)


def new_key_id() -> str:
    return "k_" + secrets.token_hex(6)


def config_user_id(name: str) -> str:
    """A config-file user's id: the same on every `codeswitch up` (derived from its name)."""
    return "u_" + hashlib.sha256(f"config-user:{name}".encode()).hexdigest()[:12]


def config_key_id(user: str, name: str) -> str:
    """A config-file key's id, derived from its owner's name and its own."""
    return "k_" + hashlib.sha256(f"config-key:{user}:{name}".encode()).hexdigest()[:12]


_BUDGET_RE = re.compile(
    r"^\s*(?P<dollar>\$)?\s*(?P<amount>\d+(?:\.\d+)?)\s*(?P<mult>[kKmM])?\s*"
    r"(?P<unit>usd|\$|tokens?|tok)?\s*/\s*(?P<period>day|week|month|total)\s*$", re.I)


def parse_budget(text: str) -> Budget:
    """``5usd/day``, ``$5/day``, ``200000tokens/month``, ``200k tokens/week``,
    ``20usd/total`` -> Budget. ValueError with the accepted forms otherwise."""
    m = _BUDGET_RE.match(text)
    unit = None
    if m:
        raw = (m.group("unit") or "").lower()
        if m.group("dollar") or raw in ("usd", "$"):
            unit = "usd" if not (m.group("dollar") and raw.startswith("tok")) else None
        elif raw.startswith("tok"):
            unit = "tokens"
    if not m or unit is None:
        raise ValueError(f"budget {text!r}: write AMOUNT UNIT/PERIOD, e.g. 5usd/day, "
                         "200000tokens/month, 200k tokens/week or 20usd/total (unit usd or "
                         "tokens; period day, week, month or total)")
    amount = float(m.group("amount")) * {"k": 1e3, "m": 1e6}.get(
        (m.group("mult") or "").lower(), 1)
    if amount <= 0:
        raise ValueError(f"budget {text!r}: the amount must be more than 0")
    if unit == "tokens" and amount != int(amount):
        raise ValueError(f"budget {text!r}: a token budget is a whole number")
    return Budget(amount=amount, unit=unit,  # type: ignore[arg-type]
                  period=m.group("period").lower())  # type: ignore[arg-type]
