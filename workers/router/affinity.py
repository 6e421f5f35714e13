"""Session affinity, pure: which provider served a session's previous request (per session and
model), and when that is worth writing down again. No I/O here: ``affinities.py`` is the NATS
side (the shared KV bucket ``cs_affinity`` and this router's watched copy of it).

Keys are ``affinity_key(session, model)``: a hash, so neither the session id nor the model
name is stored (and a key is always one valid KV token). Per model because Claude Code's
background calls (same session, a small model) must keep their own route.

A lookup is a hash and a dict read (~1 µs; the budget is 10 µs): the router never asks KV on
the request path.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import msgspec

__all__ = ["Affinity", "AffinityTable", "affinity_key"]


def affinity_key(session: str, model: str) -> str:
    """The KV key of a session+model: 32 hex digits."""
    return hashlib.blake2b(f"{session}\x00{model}".encode(), digest_size=16).hexdigest()


class Affinity(msgspec.Struct, frozen=True, array_like=True):
    """The value kept under a key: the provider and when it served (wall clock)."""

    provider: str
    ts: float


class _Entry(NamedTuple):
    provider: str
    ts: float


_decode = msgspec.json.Decoder(Affinity).decode
_encode = msgspec.json.Encoder().encode


class AffinityTable:
    """A router's copy of the affinities: key -> (provider, when it last served)."""

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}

    def apply(self, key: str, value: bytes | None, revision: int = 0) -> None:
        """A change seen on the bucket (None: deleted or expired)."""
        if not value:
            self.entries.pop(key, None)
            return
        try:
            a = _decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        old = self.entries.get(key)
        if old is None or a.ts >= old.ts:
            self.entries[key] = _Entry(a.provider, a.ts)

    def sticky(self, session: str | None, model: str, ttl: float, now: float) -> str | None:
        """The provider that served this session+model within ``ttl`` seconds, if any."""
        if session is None:
            return None
        entry = self.entries.get(affinity_key(session, model))
        if entry is None or entry.ts + ttl <= now:
            return None
        return entry.provider

    def served(self, session: str, model: str, provider: str, ttl: float,
               now: float) -> tuple[str, bytes] | None:
        """``provider`` served this session+model now: kept here at once, and the KV write to
        make (key, value) when the shared copy needs it — a new provider, or the entry is a
        quarter of its TTL old (so it outlives an active session); None otherwise (most
        requests write nothing)."""
        key = affinity_key(session, model)
        old = self.entries.get(key)
        if old is not None and old.provider == provider and now - old.ts < ttl / 4:
            return None  # the shared copy is fresh enough
        self.entries[key] = _Entry(provider, now)
        return key, _encode(Affinity(provider, now))

    def sweep(self, ttl: float, now: float) -> int:
        """Forget what expired (the bucket's delete markers do it too; this catches ones
        missed while disconnected). Returns how many went."""
        stale = [k for k, e in self.entries.items() if e.ts + ttl <= now]
        for k in stale:
            del self.entries[k]
        return len(stale)
