"""The router's live view of the providers KV bucket (watched: changes apply on the next
request), plus per-provider cool-downs from Retry-After."""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from schemas.config import ProviderConfig

__all__ = ["ProviderTable"]

log = logging.getLogger("codeswitch.router.providers")
_decoder = msgspec.json.Decoder(ProviderConfig)


class ProviderTable:
    def __init__(self) -> None:
        self.providers: dict[str, ProviderConfig] = {}
        self.ready = asyncio.Event()
        self._cooldown: dict[str, float] = {}

    def apply(self, key: str, value: bytes | None, revision: int = 0) -> None:
        if not value:
            self.providers.pop(key, None)
            return
        try:
            self.providers[key] = _decoder.decode(value)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            log.error("ignoring invalid provider %r in KV: %s", key, exc)

    def cool_down(self, name: str, seconds: float) -> None:
        self._cooldown[name] = time.monotonic() + min(seconds, 3600.0)

    def cooling(self, name: str) -> bool:
        until = self._cooldown.get(name)
        if until is None:
            return False
        if until <= time.monotonic():
            del self._cooldown[name]
            return False
        return True

    def active(self) -> list[ProviderConfig]:
        return list(self.providers.values())
