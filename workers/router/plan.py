"""Pure planning: which providers to try for a request, in which order, and whether a failed
attempt may fall back to the next one. No I/O here.

Order: a pinned provider (header ``x-codeswitch-provider`` or model ``provider/model``) alone;
otherwise the enabled providers that serve the model, by priority level (lower first); inside a
level, providers that speak the client's dialect first (no translation), then the level's
strategy: round-robin (default), weighted (smooth weighted round-robin) or least-loaded
(fewest requests in flight at this router). The client's active provider goes first; providers
whose circuit is open go last.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import NamedTuple

from schemas.config import DEFAULT_FAILOVER_STATUSES, ProviderConfig

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
FAILOVER_STATUSES = frozenset(DEFAULT_FAILOVER_STATUSES)


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
    """Per-level rotation state shared by all requests of one router process: a counter for
    round-robin, and smooth weighted round-robin (nginx's algorithm: exact ratios, evenly
    interleaved) for weights."""

    def __init__(self) -> None:
        self._counters: dict[tuple[int, tuple[str, ...]], itertools.count[int]] = {}
        self._current: dict[tuple[int, tuple[str, ...]], dict[str, int]] = {}

    def next(self, level: int, names: tuple[str, ...]) -> int:
        key = (level, names)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = itertools.count()
        return next(counter)

    def weighted(self, level: int, group: list[ProviderConfig]) -> int:
        """Index in ``group`` of the provider to try first."""
        key = (level, tuple(p.name for p in group))
        current = self._current.setdefault(key, dict.fromkeys(key[1], 0))
        total = 0
        best = 0
        for i, p in enumerate(group):
            current[p.name] += p.weight
            total += p.weight
            if current[p.name] > current[group[best].name]:
                best = i
        current[group[best].name] -= total
        return best


def split_pinned_model(model: str, names: Iterable[str]) -> tuple[str | None, str]:
    """``provider/model`` pins a provider when the part before the slash names one."""
    head, sep, tail = model.partition("/")
    if sep and tail and head in set(names):
        return head, tail
    return None, model


def _order(part: list[ProviderConfig], level: int, strategy: str, rr: RoundRobin | None,
           load: Mapping[str, int] | None) -> list[ProviderConfig]:
    if len(part) < 2 or rr is None:
        return part
    if strategy == "weighted":
        weighted = [p for p in part if p.weight > 0] or part
        first = rr.weighted(level, weighted)
        chosen = weighted[first]
        rest = [p for p in part if p is not chosen]
        return [chosen, *sorted(rest, key=lambda p: -p.weight)]
    start = rr.next(level, tuple(p.name for p in part)) % len(part)
    rotated = part[start:] + part[:start]
    if strategy == "least-loaded" and load is not None:
        return sorted(rotated, key=lambda p: load.get(p.name, 0))  # stable: ties rotate
    return rotated


def plan(providers: Iterable[ProviderConfig], *, dialect: str, model: str,
         pinned: str | None, can_translate: Callable[[str, str], bool],
         rr: RoundRobin | None = None, strategy: str = "round-robin",
         load: Mapping[str, int] | None = None, active: str | None = None,
         blocked: Callable[[ProviderConfig, str], bool] | None = None) -> list[Candidate]:
    """Candidates in the order to try them.

    ``active``: the provider the user switched this client to; tried first, the others stay
    as fallback. ``blocked``: providers whose circuit is open for this model go last (they
    only get the request when everything else failed)."""
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
    ordered: list[ProviderConfig] = []
    for level in sorted(levels):
        group = sorted(levels[level], key=lambda p: p.name)
        for part in ([p for p in group if p.dialect == dialect],
                     [p for p in group if p.dialect != dialect]):
            ordered.extend(_order(part, level, strategy, rr, load))
    if active is not None:
        first = [p for p in ordered if p.name == active]
        ordered = first + [p for p in ordered if p.name != active]
    if blocked is not None:
        open_ = [p for p in ordered if blocked(p, p.upstream_model(model))]
        if open_:
            ordered = [p for p in ordered if p not in open_] + open_
    return [Candidate(p, p.upstream_model(model), p.dialect != dialect) for p in ordered]


def should_fail_over(status: int, *, has_next: bool,
                     statuses: Collection[int] = FAILOVER_STATUSES) -> bool:
    return has_next and status in statuses
