"""The pure planner for one request: the unified upstream, 429 cool-downs and circuits, with
the router's state and the clocks passed in (no servers, no NATS)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from schemas.config import (
    ActiveProviders,
    BreakerPolicy,
    ProviderConfig,
    RoutingSettings,
    UnifiedUpstream,
)
from workers.router.breaker import BreakerState
from workers.router.plan import (
    MAX_COOL_DOWN_S,
    Candidate,
    NoProviderError,
    RoundRobin,
    circuit_open,
    cool_down_until,
    cooling,
    cooling_last,
    plan_request,
    retry_after_s,
    unified_provider,
    with_unified,
)

NOW = 1_700_000_000.0  # wall clock (circuits)
MONO = 5_000.0  # this router's monotonic clock (cool-downs)
ON = UnifiedUpstream(enabled=True, url="https://one.example/", token="sk-unified")


def p(name: str, dialect: str = "anthropic", **kw: Any) -> ProviderConfig:
    return ProviderConfig(name=name, dialect=dialect, base_url="http://x", **kw)


def names(cands: list[Candidate]) -> list[str]:
    return [c.provider.name for c in cands]


def always(_a: str, _b: str) -> bool:
    return True


def request(providers: list[ProviderConfig], *, dialect: str = "anthropic", model: str = "m",
            pinned: str | None = None, unified: UnifiedUpstream = UnifiedUpstream(),
            active: Mapping[str, str] | None = None,
            circuits: Mapping[str, BreakerState] | None = None,
            cool_downs: Mapping[str, float] | None = None, now: float = NOW,
            monotonic: float = MONO, routing: RoutingSettings = RoutingSettings(),
            rr: RoundRobin | None = None) -> list[Candidate]:
    table = dict(circuits or {})
    return plan_request(providers, dialect=dialect, model=model, pinned=pinned,
                        can_translate=always, routing=routing,
                        active=ActiveProviders(by_app=dict(active or {})), unified=unified,
                        circuits=table.get, cool_downs=cool_downs or {}, now=now,
                        monotonic=monotonic, rr=rr)


def opened(at: float) -> BreakerState:
    return BreakerState(state="open", opened_at=at)


# -- unified upstream ---------------------------------------------------------------------------

def test_unified_off_adds_nothing() -> None:
    assert unified_provider(UnifiedUpstream(), "anthropic") is None
    providers = [p("a"), p("b")]
    assert with_unified(providers, UnifiedUpstream(), "anthropic") == providers
    assert names(request(providers)) == ["a", "b"]


@pytest.mark.parametrize(("dialect", "url", "base"), [
    ("anthropic", "https://one.example/", "https://one.example"),
    ("gemini", "https://one.example", "https://one.example"),
    ("openai-chat", "https://one.example/", "https://one.example/v1"),
    ("openai-responses", "https://one.example/v1/", "https://one.example/v1"),
])
def test_unified_speaks_the_clients_dialect(dialect: str, url: str, base: str) -> None:
    u = unified_provider(UnifiedUpstream(enabled=True, url=url, token="sk-u"), dialect)
    assert u is not None
    assert (u.name, u.dialect, u.base_url, u.api_key, u.source) == (
        "unified", dialect, base, "sk-u", "unified")


def test_unified_goes_first_untranslated_and_replaces_a_provider_of_its_name() -> None:
    providers = [p("a", priority=0), p("unified", "gemini"), p("g", "gemini", priority=-5)]
    got = request(providers, dialect="openai-chat", unified=ON)
    assert names(got) == ["unified", "g", "a"]
    first = got[0]
    assert first.provider.base_url == "https://one.example/v1"  # not the configured one's
    assert first.provider.api_key == "sk-unified" and first.translated is False
    assert [c.translated for c in got] == [False, True, True]


def test_unified_gives_way_to_the_active_provider_and_to_a_pin() -> None:
    providers = [p("a"), p("b")]
    got = request(providers, unified=ON, active={"claude": "b"})
    assert names(got) == ["b", "unified", "a"]
    assert names(request(providers, unified=ON, pinned="a")) == ["a"]
    pinned = request(providers, unified=ON, pinned="unified")
    assert names(pinned) == ["unified"] and pinned[0].provider.source == "unified"


def test_unified_alone_serves_a_model_no_provider_serves() -> None:
    providers = [p("a", models=["claude-*"])]
    with pytest.raises(NoProviderError):
        request(providers, model="gpt-9")
    assert names(request(providers, model="gpt-9", unified=ON)) == ["unified"]


def test_unified_with_an_open_circuit_goes_last() -> None:
    got = request([p("a"), p("b")], unified=ON, circuits={"unified": opened(NOW - 1)})
    assert names(got) == ["a", "b", "unified"]


# -- circuits -----------------------------------------------------------------------------------

def test_circuit_open_reads_the_provider_and_the_model_breaker_at_the_given_time() -> None:
    policy = BreakerPolicy()
    table = {"a": opened(NOW - 1), "b.big_v2": opened(NOW - 1),
             "c": BreakerState(state="half_open", opened_at=NOW - 100, probe_at=NOW - 1),
             "d": BreakerState(failures=[NOW - 1, NOW - 2])}
    assert circuit_open(table.get, "a", "m", policy, NOW)
    assert circuit_open(table.get, "b", "big.v2", policy, NOW)  # keyed like breaker_key
    assert not circuit_open(table.get, "b", "other", policy, NOW)
    assert circuit_open(table.get, "c", "m", policy, NOW)  # another router's probe is out
    assert not circuit_open(table.get, "d", "m", policy, NOW)  # closed, failures counted
    # once the cool-down has passed an open circuit lets a probe through: not blocked
    assert not circuit_open(table.get, "a", "m", policy, NOW + policy.cooldown_s)
    assert not circuit_open(table.get, "c", "m", policy, NOW + policy.probe_timeout_s)


def test_open_circuit_moves_last_and_reopens_with_the_clock() -> None:
    providers = [p("a"), p("b"), p("c")]
    circuits = {"a": opened(NOW - 1)}
    assert names(request(providers, circuits=circuits)) == ["b", "c", "a"]
    later = NOW + RoutingSettings().breaker.cooldown_s
    assert names(request(providers, circuits=circuits, now=later)) == ["a", "b", "c"]


# -- 429 cool-downs -----------------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "seconds"), [
    ({}, 1.0), ({"retry-after": "30"}, 30.0), ({"retry-after": "2.5"}, 2.5),
    ({"retry-after": "-4"}, 0.0), ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 1.0),
    ({"retry-after": ""}, 1.0),
])
def test_retry_after_seconds(headers: dict[str, str], seconds: float) -> None:
    assert retry_after_s(headers) == seconds


def test_only_a_429_cools_a_provider_down_and_at_most_an_hour() -> None:
    assert cool_down_until(429, {"retry-after": "30"}, MONO) == MONO + 30
    assert cool_down_until(429, {}, MONO) == MONO + 1
    assert cool_down_until(429, {"retry-after": "86400"}, MONO) == MONO + MAX_COOL_DOWN_S
    for status in (200, 500, 503, 529):
        assert cool_down_until(status, {"retry-after": "30"}, MONO) is None


def test_cooling_ends_at_its_instant() -> None:
    downs = {"a": MONO + 30}
    assert cooling(downs, "a", MONO)
    assert cooling(downs, "a", MONO + 29.999)
    assert not cooling(downs, "a", MONO + 30)
    assert not cooling(downs, "b", MONO)


def test_cooling_providers_go_last_in_their_order_not_away() -> None:
    providers = [p("a"), p("b"), p("c"), p("d")]
    downs = {"a": MONO + 10, "c": MONO + 60, "d": MONO - 1}  # d's cool-down is over
    assert names(request(providers, cool_downs=downs)) == ["b", "d", "a", "c"]
    assert names(request(providers, cool_downs=downs, monotonic=MONO + 10)) == \
        ["a", "b", "d", "c"]
    assert names(request(providers, cool_downs=downs, monotonic=MONO + 60)) == \
        ["a", "b", "c", "d"]


def test_everyone_cooling_keeps_the_planned_order() -> None:
    providers = [p("a"), p("b", priority=2)]
    downs = {"a": MONO + 10, "b": MONO + 5}
    assert names(request(providers, cool_downs=downs)) == ["a", "b"]
    cands = request(providers)
    assert cooling_last(cands, downs, MONO) == cands


def test_cooling_goes_behind_an_open_circuit_and_the_active_provider_too() -> None:
    providers = [p("a"), p("b"), p("c")]
    got = request(providers, active={"claude": "a"}, circuits={"c": opened(NOW - 1)},
                  cool_downs={"a": MONO + 10})
    assert names(got) == ["b", "c", "a"]
    # the unified upstream cools down like any provider
    got = request(providers, unified=ON, cool_downs={"unified": MONO + 10})
    assert names(got) == ["a", "b", "c", "unified"]


def test_a_pinned_provider_is_tried_even_while_cooling() -> None:
    got = request([p("a"), p("b")], pinned="a", cool_downs={"a": MONO + 10})
    assert names(got) == ["a"]


def test_strategy_comes_from_the_routing_settings() -> None:
    providers = [p("a", weight=1), p("b", weight=3)]
    rr = RoundRobin()
    weighted = RoutingSettings(strategy="weighted")
    firsts = [names(request(providers, routing=weighted, rr=rr))[0] for _ in range(8)]
    assert firsts.count("b") == 6 and firsts.count("a") == 2
