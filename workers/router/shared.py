"""Router state shared through NATS KV: routing settings, active providers, unified upstream
(bucket cs_settings) and circuit breakers (bucket cs_circuits). Each router keeps a local view
fed by a KV watch; breaker changes are compare-and-set writes, so when two routers race for
the same transition exactly one wins (and only the winner publishes the fact)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from schemas.config import ActiveProviders, RoutingSettings, UnifiedUpstream
from schemas.routes import ROUTES_KEY, RouteTable, check_rules
from workers.router.breaker import BreakerState
from workers.router.rules import RuleSet, compile_rules

__all__ = ["CircuitTable", "SettingsView"]

log = logging.getLogger("codeswitch.router.shared")

_routing = msgspec.json.Decoder(RoutingSettings)
_active = msgspec.json.Decoder(ActiveProviders)
_unified = msgspec.json.Decoder(UnifiedUpstream)
_routes = msgspec.json.Decoder(RouteTable)
_breaker = msgspec.json.Decoder(BreakerState)
_enc = msgspec.json.Encoder()


class SettingsView:
    def __init__(self) -> None:
        self.routing = RoutingSettings()
        self.active = ActiveProviders()
        self.unified = UnifiedUpstream()
        self.routes = RuleSet()  # route rules, compiled once per change (workers/router/rules)
        self.ready = asyncio.Event()

    def apply(self, key: str, value: bytes | None, revision: int) -> None:
        try:
            if key == "routing":
                self.routing = _routing.decode(value) if value else RoutingSettings()
            elif key == "active":
                self.active = _active.decode(value) if value else ActiveProviders()
            elif key == "unified":
                self.unified = _unified.decode(value) if value else UnifiedUpstream()
            elif key == ROUTES_KEY:
                table = _routes.decode(value) if value else RouteTable()
                check_rules(table.rules, None)  # written by the CLI/up, which checked them
                self.routes = compile_rules(table.rules)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            log.error("ignoring invalid %s settings: %s", key, exc)


class CircuitTable:
    def __init__(self) -> None:
        self.states: dict[str, tuple[BreakerState, int]] = {}
        self.ready = asyncio.Event()
        self.kv: KeyValue | None = None

    def apply(self, key: str, value: bytes | None, revision: int) -> None:
        if value is None:
            self.states.pop(key, None)
            return
        try:
            self.states[key] = (_breaker.decode(value), revision)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("ignoring invalid circuit %r: %s", key, exc)

    def get(self, key: str) -> BreakerState | None:
        entry = self.states.get(key)
        return entry[0] if entry else None

    async def swap(self, key: str,
                   change: Callable[[BreakerState | None], BreakerState | None],
                   on_change: Callable[[BreakerState | None, BreakerState],
                                       Awaitable[None] | None] | None = None) -> bool:
        """Compare-and-set ``change(current)`` into KV; retry on a lost race (re-reading the
        current value). Returns False when this caller's change did not happen."""
        assert self.kv is not None
        for _ in range(5):
            entry = self.states.get(key)
            current, revision = entry if entry else (None, 0)
            new = change(current)
            if new is None:
                return False
            data = _enc.encode(new)
            try:
                if revision:
                    rev = await self.kv.update(key, data, last=revision)
                else:
                    rev = await self.kv.create(key, data)
            except KeyWrongLastSequenceError:  # another router changed it first: re-read
                try:
                    latest = await self.kv.get(key)
                    self.apply(key, latest.value, latest.revision or 0)
                except Exception:
                    self.states.pop(key, None)
                continue
            except Exception as exc:
                log.warning("circuit %s not stored: %s", key, exc)
                return False
            self.states[key] = (new, rev)
            if on_change is not None:
                result = on_change(current, new)
                if result is not None:
                    await result
            return True
        return False

