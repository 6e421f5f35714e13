"""The router's live view of the providers KV bucket (watched: changes apply on the next
request), plus the per-provider cool-downs after a 429 (the state only: when a provider cools
down and what that does to the order is decided in ``plan.py``)."""

from __future__ import annotations

import asyncio
import logging

import msgspec

from schemas.config import ProviderConfig

__all__ = ["ProviderTable"]

log = logging.getLogger("codeswitch.router.providers")
_decoder = msgspec.json.Decoder(ProviderConfig)


class ProviderTable:
    def __init__(self) -> None:
        self.providers: dict[str, ProviderConfig] = {}
        self.ready = asyncio.Event()
        # provider -> time.monotonic() at which its 429 cool-down ends
        self.cool_downs: dict[str, float] = {}

    def apply(self, key: str, value: bytes | None, revision: int = 0) -> None:
        if not value:
            self.providers.pop(key, None)
            return
        try:
            self.providers[key] = _decoder.decode(value)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            log.error("ignoring invalid provider %r in KV: %s", key, exc)

    def cool_down(self, name: str, until: float, now: float) -> None:
        """Record a cool-down (``plan.cool_down_until``) and forget the ones over by ``now``."""
        self.cool_downs = {k: t for k, t in self.cool_downs.items() if t > now}
        self.cool_downs[name] = until

    def active(self) -> list[ProviderConfig]:
        return list(self.providers.values())
