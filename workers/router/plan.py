"""Pure planning: which providers to try for a request, in which order, and whether a failed
attempt may fall back to the next one. No I/O here.

Order: a pinned provider (header ``x-codeswitch-provider`` or model ``provider/model``) alone;
otherwise the enabled providers that serve the model, by priority level (lower first); inside a
level, providers that speak the client's dialect first (no translation), then round-robin.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import NamedTuple

from schemas.config import ProviderConfig

__all__ = [
    "FAILOVER_STATUSES",
    "Candidate",
    "NoProviderError",
    "RoundRobin",
    "plan",
    "should_fail_over",
    "split_pinned_model",
]

# Statuses worth trying elsewhere: the provider, not the request, is the problem.
# 400/401/403/404/413/422 would fail everywhere, so they go straight back to the client.
FAILOVER_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


class NoProviderError(Exception):
    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Candidate(NamedTuple):
    provider: ProviderConfig
    upstream_model: str
    translated: bool


class RoundRobin:
    """A counter per priority level, shared by all requests of one router process."""

    def __init__(self) -> None:
        self._counters: dict[tuple[int, tuple[str, ...]], itertools.count[int]] = {}

    def next(self, level: int, names: tuple[str, ...]) -> int:
        key = (level, names)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = itertools.count()
        return next(counter)


def split_pinned_model(model: str, names: Iterable[str]) -> tuple[str | None, str]:
    """``provider/model`` pins a provider when the part before the slash names one."""
    head, sep, tail = model.partition("/")
    if sep and tail and head in set(names):
        return head, tail
    return None, model


def plan(providers: Iterable[ProviderConfig], *, dialect: str, model: str,
         pinned: str | None, can_translate: Callable[[str, str], bool],
         rr: RoundRobin | None = None) -> list[Candidate]:
    providers = list(providers)
    by_name = {p.name: p for p in providers}
    pin_from_model, model = split_pinned_model(model, by_name)
    pinned = pinned or pin_from_model
    if pinned:
        p = by_name.get(pinned)
        if p is None:
            raise NoProviderError(f"provider {pinned!r} is not configured")
        if not p.enabled:
            raise NoProviderError(f"provider {pinned!r} is disabled", 503)
        if p.dialect != dialect and not can_translate(dialect, p.dialect):
            raise NoProviderError(
                f"provider {pinned!r} speaks {p.dialect} and {dialect} cannot be translated "
                "to it", 400)
        return [Candidate(p, p.upstream_model(model), p.dialect != dialect)]

    usable = [
        p for p in providers
        if p.enabled and p.serves(model)
        and (p.dialect == dialect or can_translate(dialect, p.dialect))
    ]
    if not usable:
        if any(p.enabled and p.serves(model) for p in providers):
            raise NoProviderError(
                f"no provider for model {model!r} speaks {dialect} or can be translated to", 400)
        if any(p.serves(model) for p in providers):
            raise NoProviderError(f"every provider serving model {model!r} is disabled", 503)
        if not any(p.enabled for p in providers):
            raise NoProviderError("no provider is configured and enabled: add one with "
                                  "`codeswitch provider add` or a config file", 503)
        raise NoProviderError(f"no provider serves model {model!r}")

    levels: dict[int, list[ProviderConfig]] = {}
    for p in usable:
        levels.setdefault(p.priority, []).append(p)
    out: list[Candidate] = []
    for level in sorted(levels):
        group = sorted(levels[level], key=lambda p: (p.dialect != dialect, p.name))
        native = [p for p in group if p.dialect == dialect]
        foreign = [p for p in group if p.dialect != dialect]
        for part in (native, foreign):
            if len(part) > 1 and rr is not None:
                start = rr.next(level, tuple(p.name for p in part)) % len(part)
                part = part[start:] + part[:start]
            out.extend(Candidate(p, p.upstream_model(model), p.dialect != dialect)
                       for p in part)
    return out


def should_fail_over(status: int, *, has_next: bool) -> bool:
    return has_next and (status in FAILOVER_STATUSES or status >= 500)
