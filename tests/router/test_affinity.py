"""Session affinity, pure: the table (lookup, when to write, expiry) and its place in the order
of choice (pinned, active, affinity, strategy; circuits and cool-downs still win)."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from schemas.config import ActiveProviders, ProviderConfig, RoutingSettings, UnifiedUpstream
from workers.router.affinity import Affinity, AffinityTable, affinity_key
from workers.router.breaker import BreakerState
from workers.router.plan import Candidate, RoundRobin, plan_request, with_sticky

NOW = 1_700_000_000.0
TTL = 3600.0


def p(name: str, **kw: Any) -> ProviderConfig:
    return ProviderConfig(name=name, dialect="anthropic", base_url="http://x", **kw)


def names(cands: list[Candidate]) -> list[str]:
    return [c.provider.name for c in cands]


THREE = [p("a"), p("b"), p("c")]


def plan(providers: list[ProviderConfig], *, sticky: str | None, rr: RoundRobin | None = None,
         active: dict[str, str] | None = None, circuits: dict[str, BreakerState] | None = None,
         cool_downs: dict[str, float] | None = None, pinned: str | None = None,
         routing: RoutingSettings = RoutingSettings()) -> list[str]:
    table = circuits or {}
    return names(plan_request(
        providers, dialect="anthropic", model="m", pinned=pinned,
        can_translate=lambda _a, _b: True, routing=routing,
        active=ActiveProviders(by_app=active or {}), unified=UnifiedUpstream(),
        circuits=table.get, cool_downs=cool_downs or {}, now=NOW, monotonic=100.0,
        rr=rr or RoundRobin(), sticky=sticky))


def test_key_is_a_hash_per_session_and_model() -> None:
    k = affinity_key("sess-1", "claude-opus-4-8")
    assert len(k) == 32 and "sess" not in k
    assert k == affinity_key("sess-1", "claude-opus-4-8")
    assert k != affinity_key("sess-1", "claude-haiku-4-5")  # background calls: their own
    assert k != affinity_key("sess-2", "claude-opus-4-8")


def test_table_lookup_write_and_expiry() -> None:
    t = AffinityTable()
    assert t.sticky("s", "m", TTL, NOW) is None and t.sticky(None, "m", TTL, NOW) is None
    first = t.served("s", "m", "b", TTL, NOW)
    assert first is not None
    key, value = first
    assert key == affinity_key("s", "m")
    assert msgspec.json.decode(value, type=Affinity) == Affinity("b", NOW)
    assert t.sticky("s", "m", TTL, NOW + 10) == "b"
    assert t.sticky("s", "other-model", TTL, NOW + 10) is None
    # the same provider again soon: nothing to write (most requests)
    assert t.served("s", "m", "b", TTL, NOW + 60) is None
    # a quarter of the TTL later: written again, so an active session keeps it
    assert t.served("s", "m", "b", TTL, NOW + TTL / 4 + 1) is not None
    # another provider served (a fallback): written at once
    assert t.served("s", "m", "c", TTL, NOW + TTL / 4 + 2) is not None
    assert t.sticky("s", "m", TTL, NOW + TTL / 4 + 3) == "c"
    # expired: gone from lookups, then swept
    assert t.sticky("s", "m", TTL, NOW + 2 * TTL) is None
    assert t.sweep(TTL, NOW + 2 * TTL) == 1 and not t.entries


def test_table_follows_the_bucket() -> None:
    t = AffinityTable()
    key = affinity_key("s", "m")
    enc = msgspec.json.encode
    t.apply(key, enc(Affinity("a", NOW)))
    t.apply(key, enc(Affinity("old", NOW - 5)))  # an older write seen late: ignored
    assert t.sticky("s", "m", TTL, NOW) == "a"
    t.apply(key, b"garbage")
    assert t.sticky("s", "m", TTL, NOW) == "a"
    t.apply(key, None)  # expired (the bucket's delete marker) or deleted
    assert t.sticky("s", "m", TTL, NOW) is None


def test_affinity_beats_round_robin() -> None:
    rr = RoundRobin()
    assert [plan(THREE, sticky=None, rr=rr)[0] for _ in range(3)] == ["a", "b", "c"]
    assert [plan(THREE, sticky="b", rr=rr)[0] for _ in range(5)] == ["b"] * 5
    assert plan(THREE, sticky="b")[1:] in (["a", "c"], ["c", "a"])  # fallback still there
    assert plan(THREE, sticky="gone") == ["a", "b", "c"]  # no longer configured
    off = RoutingSettings(affinity=False)
    assert plan(THREE, sticky="b", routing=off)[0] == "a"


def test_order_of_choice_pinned_active_affinity_strategy() -> None:
    assert plan(THREE, sticky="b", pinned="c") == ["c"]
    assert plan(THREE, sticky="b", active={"claude": "c"}) == ["c", "b", "a"]


def test_a_sticky_provider_counts_only_while_healthy() -> None:
    open_ = BreakerState(state="open", opened_at=NOW - 1)
    assert plan(THREE, sticky="b", circuits={"b": open_}) == ["a", "c", "b"]
    assert plan(THREE, sticky="b", cool_downs={"b": 200.0}) == ["a", "c", "b"]


def test_affinity_stays_inside_its_priority_level() -> None:
    tiered = [p("main1", priority=1), p("main2", priority=1), p("backup", priority=2)]
    # the backup served while the main level failed; it is healthy again: back to it
    assert plan(tiered, sticky="backup")[0].startswith("main")
    assert plan(tiered, sticky="main2")[0] == "main2"
    ordered = [p("x", priority=1), p("y", priority=2), p("z", priority=2)]
    assert [q.name for q in with_sticky(ordered, "z")] == ["x", "z", "y"]


def test_lookup_costs_under_10_us() -> None:
    t = AffinityTable()
    for i in range(10_000):
        t.served(f"session-{i:05d}-{'x' * 24}", "claude-opus-4-8", "p", TTL, NOW)
    sessions = [f"session-{i:05d}-{'x' * 24}" for i in range(0, 10_000, 7)]
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for s in sessions:
            t.sticky(s, "claude-opus-4-8", TTL, NOW)
        best = min(best, (time.perf_counter() - t0) / len(sessions))
    assert best < 10e-6, f"{best * 1e6:.2f} us per lookup"


@pytest.mark.parametrize("ttl", [0.5, 8 * 86400.0])
def test_ttl_is_bounded(ttl: float) -> None:
    with pytest.raises(ValueError, match="affinity_ttl_s"):
        RoutingSettings(affinity_ttl_s=ttl)
