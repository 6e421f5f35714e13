"""Pure planning: which providers to try for a request, in which order, and whether a failed
attempt may fall back to the next one. No I/O here.

Order: a pinned provider (header ``x-codeswitch-provider`` or model ``provider/model``) alone;
otherwise the enabled providers that serve the model, by priority level (lower first); inside a
level, providers that speak the client's dialect first (no translation), then the level's
strategy: round-robin (default), weighted (smooth weighted round-robin) or least-loaded
(fewest requests in flight at this router). Session affinity overrides the strategy: the
provider that served the session's previous request (for this model) goes first in its
priority level. The client's active provider goes first of all; providers whose circuit is
open go last, and so do those cooling down after a 429 (so a sticky provider counts only
while it is healthy). The order of choice: pinned, the first matching route rule (its ``to``
providers in order; after them, when its ``fallback`` is on, everything below), active,
affinity, strategy.

``plan_request`` is the whole decision for one request, from what the router holds in memory
(providers, settings, circuits, 429 cool-downs) and the clock, all passed in: the unified
upstream (``with_unified``) ahead of the providers when it is on, then ``plan``, circuits read
with ``circuit_open``, then providers cooling down after a 429 last (``cooling_last``; the
cool-down itself is ``cool_down_until``). The router only reads its state and calls these.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import NamedTuple

from schemas.config import (
    DEFAULT_FAILOVER_STATUSES,
    ActiveProviders,
    BreakerPolicy,
    ProviderConfig,
    RoutingSettings,
    UnifiedUpstream,
)
from schemas.errors import GatewayError
from schemas.routes import RouteRule
from workers.router.breaker import BreakerState, allow, breaker_key

__all__ = [
    "FAILOVER_STATUSES",
    "MAX_COOL_DOWN_S",
    "UNIFIED",
    "Candidate",
    "NoProviderError",
    "RoundRobin",
    "circuit_open",
    "cool_down_until",
    "cooling",
    "cooling_last",
    "plan",
    "plan_request",
    "retry_after_s",
    "should_fail_over",
    "split_pinned_model",
    "unified_provider",
    "with_sticky",
    "with_unified",
]

# Statuses worth trying elsewhere: the provider, not the request, is the problem.
# 400/401/403/404/413/422 would fail everywhere, so they go straight back to the client.
FAILOVER_STATUSES = frozenset(DEFAULT_FAILOVER_STATUSES)


class NoProviderError(GatewayError):
    """No provider can take the request: 404 (none serves the model), 503 (all disabled).
    Final: the client is told not to retry (``schemas.errors.final_error``)."""

    code = "no_provider"

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message, status=status, retryable=False)


NO_PROVIDER_HINT = ("set ANTHROPIC_API_KEY, OPENAI_API_KEY or GEMINI_API_KEY and restart "
                    "`codeswitch up`, add one with `codeswitch provider add`, or try "
                    "`codeswitch up --demo`")


def _served(providers: list[ProviderConfig]) -> str:
    """"a (claude-*), b (gpt-*, o*)": who serves what, for a no-provider message."""
    shown = [f"{p.name} ({', '.join(p.models[:3]) + (', …' if len(p.models) > 3 else '') or '*'})"
             for p in providers if p.enabled][:4]
    more = sum(1 for p in providers if p.enabled) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


class Candidate(NamedTuple):
    provider: ProviderConfig
    upstream_model: str
    translated: bool
    rule: str | None = None  # the route rule that put it here (None: normal routing)


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
         blocked: Callable[[ProviderConfig, str], bool] | None = None,
         sticky: str | None = None, rule: RouteRule | None = None) -> list[Candidate]:
    """Candidates in the order to try them.

    ``active``: the provider the user switched this client to; tried first, the others stay
    as fallback. ``sticky``: the provider that served this session's previous request (session
    affinity): first in its priority level, ahead of what the strategy would pick (a backup
    level that served while the preferred one failed is left once that one is healthy again).
    ``blocked``: providers whose circuit is open for this model go last (they only get the
    request when everything else failed). ``rule``: the route rule the request matched (not
    for a pinned request): its providers first, in its order, asked for its ``model`` when it
    names one; then, with ``fallback``, the normal order without them."""
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
    if rule is not None:
        return _ruled(providers, by_name, rule, dialect=dialect, model=model,
                      can_translate=can_translate, rr=rr, strategy=strategy, load=load,
                      active=active, blocked=blocked, sticky=sticky)
    return _planned(providers, dialect=dialect, model=model, can_translate=can_translate,
                    rr=rr, strategy=strategy, load=load, active=active, blocked=blocked,
                    sticky=sticky)


def _ruled(providers: list[ProviderConfig], by_name: Mapping[str, ProviderConfig],
           rule: RouteRule, *, dialect: str, model: str,
           can_translate: Callable[[str, str], bool], rr: RoundRobin | None, strategy: str,
           load: Mapping[str, int] | None, active: str | None,
           blocked: Callable[[ProviderConfig, str], bool] | None,
           sticky: str | None) -> list[Candidate]:
    """A route rule's candidates: its usable providers in its order, then the normal order
    when it falls back; its providers with an open circuit go last (of all)."""
    mine: list[Candidate] = []
    for name in rule.to:
        p = by_name.get(name)
        if p is None or not p.enabled or (
                p.dialect != dialect and not can_translate(dialect, p.dialect)):
            continue
        up = rule.model if rule.model else p.upstream_model(model)
        mine.append(Candidate(p, up, p.dialect != dialect, rule.name))
    open_: list[Candidate] = []
    if blocked is not None:
        open_ = [c for c in mine if blocked(c.provider, c.upstream_model)]
        if open_:
            mine = [c for c in mine if c not in open_]
    if not rule.fallback:
        mine += open_
        if not mine:
            raise NoProviderError(
                f"route rule {rule.name!r}: none of its providers ({', '.join(rule.to)}) is "
                f"configured, enabled and able to take {dialect} requests, and the rule "
                "does not fall back", 503)
        return mine
    try:
        rest = _planned(providers, dialect=dialect, model=model, can_translate=can_translate,
                        rr=rr, strategy=strategy, load=load, active=active, blocked=blocked,
                        sticky=sticky)
    except NoProviderError:
        if mine or open_:
            return mine + open_
        raise
    taken = {c.provider.name for c in mine + open_}
    # a rule's provider with an open circuit goes last of all, as in normal routing
    return mine + [c for c in rest if c.provider.name not in taken] + open_


def _planned(providers: list[ProviderConfig], *, dialect: str, model: str,
             can_translate: Callable[[str, str], bool], rr: RoundRobin | None, strategy: str,
             load: Mapping[str, int] | None, active: str | None,
             blocked: Callable[[ProviderConfig, str], bool] | None,
             sticky: str | None) -> list[Candidate]:
    """The normal order: priority levels, dialect, strategy, affinity, active, circuits."""
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
            raise NoProviderError("no provider is configured and enabled: "
                                  + NO_PROVIDER_HINT, 503)
        raise NoProviderError(
            f"no provider serves model {model!r}; configured: {_served(providers)}. Ask "
            "for a model they serve, or add it to a provider's models (`codeswitch provider "
            "add NAME ... --model GLOB`)")

    levels: dict[int, list[ProviderConfig]] = {}
    for p in usable:
        levels.setdefault(p.priority, []).append(p)
    ordered: list[ProviderConfig] = []
    for level in sorted(levels):
        group = sorted(levels[level], key=lambda p: p.name)
        for part in ([p for p in group if p.dialect == dialect],
                     [p for p in group if p.dialect != dialect]):
            ordered.extend(_order(part, level, strategy, rr, load))
    if sticky is not None:
        ordered = with_sticky(ordered, sticky)
    if active is not None:
        first = [p for p in ordered if p.name == active]
        ordered = first + [p for p in ordered if p.name != active]
    if blocked is not None:
        open_ = [p for p in ordered if blocked(p, p.upstream_model(model))]
        if open_:
            ordered = [p for p in ordered if p not in open_] + open_
    return [Candidate(p, p.upstream_model(model), p.dialect != dialect) for p in ordered]


def with_sticky(ordered: list[ProviderConfig], sticky: str) -> list[ProviderConfig]:
    """``sticky`` moved to the front of its priority level (``ordered`` is by level); the
    order unchanged when it is not among them."""
    at = next((i for i, p in enumerate(ordered) if p.name == sticky), None)
    if at is None:
        return ordered
    level = ordered[at].priority
    first = next(i for i, p in enumerate(ordered) if p.priority == level)
    return [*ordered[:first], ordered[at], *ordered[first:at], *ordered[at + 1:]]


def should_fail_over(status: int, *, has_next: bool,
                     statuses: Collection[int] = FAILOVER_STATUSES) -> bool:
    return has_next and status in statuses


# -- the unified upstream ----------------------------------------------------------------------

UNIFIED = "unified"  # the unified upstream's provider name (replaces a provider of that name)
_UNIFIED_PRIORITY = -(10**9)  # ahead of every configured priority level


def unified_provider(unified: UnifiedUpstream, dialect: str) -> ProviderConfig | None:
    """The unified upstream (a NEW-API/one-api gateway that speaks every dialect) as a
    provider of the client's own dialect, or None when it is off. OpenAI dialects get ``/v1``
    appended to its URL unless it already ends with it."""
    if not unified.enabled:
        return None
    base = unified.url.rstrip("/")
    if dialect.startswith("openai") and not base.endswith("/v1"):
        base += "/v1"
    return ProviderConfig(
        name=UNIFIED, dialect=dialect, base_url=base,  # type: ignore[arg-type]
        api_key=unified.token, priority=_UNIFIED_PRIORITY, source="unified",
    )


def with_unified(providers: Iterable[ProviderConfig], unified: UnifiedUpstream,
                 dialect: str) -> list[ProviderConfig]:
    """The configured providers, plus the unified upstream ahead of them when it is on (a
    configured provider named ``unified`` gives way to it)."""
    first = unified_provider(unified, dialect)
    if first is None:
        return list(providers)
    return [first, *[p for p in providers if p.name != UNIFIED]]


# -- circuits ----------------------------------------------------------------------------------

def circuit_open(circuits: Callable[[str], BreakerState | None], provider: str, model: str,
                 policy: BreakerPolicy, now: float) -> bool:
    """Whether the provider's breaker or its breaker for this model keeps it out now
    (``circuits``: breaker key -> shared state; ``now``: wall clock, as the states are shared
    between routers)."""
    for key in (breaker_key(provider), breaker_key(provider, model)):
        st = circuits(key)
        if st is not None and st.state != "closed" and not allow(st, now, policy)[0]:
            return True
    return False


# -- 429 cool-downs ----------------------------------------------------------------------------

MAX_COOL_DOWN_S = 3600.0


def retry_after_s(headers: Mapping[str, str]) -> float:
    """The seconds a Retry-After header asks for: 1 when absent or not a number (an HTTP date
    included), never negative."""
    try:
        return max(0.0, float(headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


def cool_down_until(status: int, headers: Mapping[str, str], now: float) -> float | None:
    """After an upstream answer: until when (same clock as ``now``) its provider cools down,
    or None when the answer is not a 429. At most ``MAX_COOL_DOWN_S``."""
    if status != 429:
        return None
    return now + min(retry_after_s(headers), MAX_COOL_DOWN_S)


def cooling(cool_downs: Mapping[str, float], name: str, now: float) -> bool:
    """``cool_downs``: provider -> when its cool-down ends. Ended at that instant."""
    until = cool_downs.get(name)
    return until is not None and until > now


def cooling_last(candidates: list[Candidate], cool_downs: Mapping[str, float],
                 now: float) -> list[Candidate]:
    """Providers cooling down after a 429 Retry-After go last, not away (in their order)."""
    if not cool_downs:
        return candidates
    warm = [c for c in candidates if not cooling(cool_downs, c.provider.name, now)]
    if len(warm) == len(candidates) or not warm:
        return candidates
    return warm + [c for c in candidates if c not in warm]


# -- one request -------------------------------------------------------------------------------

def plan_request(providers: Iterable[ProviderConfig], *, dialect: str, model: str,
                 pinned: str | None, can_translate: Callable[[str, str], bool],
                 routing: RoutingSettings, active: ActiveProviders, unified: UnifiedUpstream,
                 circuits: Callable[[str], BreakerState | None],
                 cool_downs: Mapping[str, float], now: float, monotonic: float,
                 rr: RoundRobin | None = None,
                 load: Mapping[str, int] | None = None,
                 sticky: str | None = None, rule: RouteRule | None = None) -> list[Candidate]:
    """Candidates for one request in the order to try them, from the router's state passed
    in: the providers (unified upstream added when on), the routing settings (strategy,
    breaker policy), the client app's active provider, the session's sticky provider (session
    affinity, ``affinity.sticky``), the matched route rule (``rules.match``), the circuits
    (``now``: wall clock) and the 429 cool-downs (``monotonic``: this router's clock). Raises
    NoProviderError."""
    policy = routing.breaker

    def blocked(p: ProviderConfig, upstream_model: str) -> bool:
        return circuit_open(circuits, p.name, upstream_model, policy, now)

    candidates = plan(with_unified(providers, unified, dialect), dialect=dialect, model=model,
                      pinned=pinned, can_translate=can_translate, rr=rr,
                      strategy=routing.strategy, load=load,
                      active=active.for_dialect(dialect), blocked=blocked,
                      sticky=sticky if routing.affinity else None, rule=rule)
    return cooling_last(candidates, cool_downs, monotonic)
