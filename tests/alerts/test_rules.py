"""The pure core: every metric against a brute-force oracle over a recorded sequence, window
edges, exact percentiles, and the fire / stay / resolve / cool-down state machine."""

from __future__ import annotations

import fnmatch
import math
import random

import msgspec
import pytest

from schemas.events import (
    AlertFired,
    AlertResolved,
    CircuitChanged,
    QuotaUsed,
    RequestCompleted,
    Usage,
)
from schemas.prices import BUILTIN_PRICES, PriceBook
from workers.alerts._prices import Pricer
from workers.alerts.rules import METRICS, AlertState, Engine, Rule, alert_id

from .conftest import load_events

T0 = 1735689600.0
MIXED = load_events("alerts_mixed.jsonl")
_SEQ = iter(range(10**9))


def req(ts: float, **kw: object) -> RequestCompleted:
    n = next(_SEQ)
    base: dict[str, object] = {
        "id": f"e{n}", "ts": ts, "request_id": f"r{n}", "dialect": "anthropic",
        "model": "claude-sonnet-4-5", "provider": "main", "status": 200, "duration_ms": 100.0,
        "ttfb_ms": 50.0, "user": "alice",
    }
    base.update(kw)
    return RequestCompleted(**base)  # type: ignore[arg-type]


def engine(*rules: Rule, now: float = T0) -> Engine:
    e = Engine(new_epoch=lambda: "e0")
    e.set_rules(rules, now)
    return e


def run(e: Engine, events: list, tick_every: float = 0.0) -> list[tuple[str, float, float]]:
    """Feed events (with ticks every ``tick_every`` s of event time); the transitions."""
    out: list = []
    next_tick = events[0].ts + tick_every if tick_every else math.inf
    for ev in events:
        while ev.ts > next_tick:
            out += e.tick(next_tick)
            next_tick += tick_every
        out += e.observe(ev)
    return [(type(t).__name__, t.ts, t.value) for t in out]


# -- oracle: the metric recomputed from scratch at every evaluation point ----------------------


def _match(scope: str, value: str | None) -> bool:
    if scope == "all":
        return True
    return bool(value) and fnmatch.fnmatchcase(value or "", scope.split(":", 1)[1])


def _field(scope: str, ev: RequestCompleted) -> str | None:
    if scope == "all":
        return ""
    return getattr(ev, scope.split(":", 1)[0])


_BOOK = PriceBook()


def _oracle_cost(e: RequestCompleted) -> int:
    """nano-USD as the ledger bills it: Price.cost of the book's match (not the engine's
    compiled copy of it)."""
    priced = _BOOK.lookup(e.provider, e.upstream_model or e.model)
    if priced is None or e.usage is None:
        return 0
    u = e.usage
    return round(priced.price.cost(u.input_tokens, u.output_tokens, u.cache_read_tokens,
                                   u.cache_write_tokens, u.reasoning_tokens) * 1e9)


def _oracle_value(rule: Rule, reqs: list, circuits: dict, last_seen: float, now: float):
    m = rule.metric
    if m == "circuit_open":
        kind = rule.scope.split(":", 1)[0]
        return float(sum(
            1 for (p, mod) in circuits
            if rule.scope == "all"
            or (kind == "provider" and _match(rule.scope, p))
            or (kind == "model" and _match(rule.scope, mod))
        ))
    if m == "no_traffic":
        return (now - last_seen) / 60.0
    win = [e for e in reqs
           if now - rule.window_s < e.ts <= now and _match(rule.scope, _field(rule.scope, e))]
    if m == "request_rate":
        return len(win) * 60.0 / rule.window_s
    if m == "error_rate":
        if len(win) < rule.min_samples:
            return None if win else "empty"
        errors = sum(1 for e in win if e.error_class is not None or e.status >= 500)
        return 100.0 * errors / len(win)
    if m in ("cost", "tokens"):
        if m == "tokens":
            return float(sum(e.usage.total_tokens for e in win if e.usage))
        return sum(_oracle_cost(e) for e in win) / 1e9
    attr = "ttfb_ms" if m == "ttfb_p95" else "duration_ms"
    vals = sorted(getattr(e, attr) for e in win if getattr(e, attr) is not None)
    if len(vals) < rule.min_samples or not vals:
        return None if vals else "empty"
    p = int(m.rsplit("p", 1)[1])
    return vals[math.ceil(p * len(vals) / 100) - 1]


def oracle(rule: Rule, events: list, tick_every: float, start: float = T0):
    ops = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
           "<=": lambda a, b: a <= b}
    reqs: list = []
    circuits: dict = {}
    last_seen = start
    firing = False
    out = []
    now = 0.0

    def evaluate() -> None:
        nonlocal firing
        v = _oracle_value(rule, reqs, circuits, last_seen, now)
        if v is None:  # too few samples: the state holds
            return
        if rule.metric == "no_traffic":
            cond = v >= rule.minutes
        else:
            cond = v != "empty" and ops[rule.comparison](v, rule.threshold)
        if cond and not firing:
            firing = True
            out.append(("AlertFired", now, v))
        elif not cond and firing:
            firing = False
            out.append(("AlertResolved", now, 0.0 if v == "empty" else v))

    next_tick = events[0].ts + tick_every
    for ev in events:
        while ev.ts > next_tick:
            now = max(now, next_tick)
            evaluate()
            next_tick += tick_every
        now = max(now, ev.ts)
        if isinstance(ev, RequestCompleted):
            reqs.append(ev)
            if rule.metric != "circuit_open" and _match(rule.scope, _field(rule.scope, ev)):
                last_seen = max(last_seen, ev.ts)
                evaluate()
        elif isinstance(ev, CircuitChanged):
            key = (ev.provider, ev.model or "")
            if ev.state == "closed":
                circuits.pop(key, None)
            else:
                circuits[key] = ev.state
            kind = rule.scope.split(":", 1)[0]
            hit = rule.scope == "all" or (kind == "provider" and _match(rule.scope, ev.provider)) \
                or (kind == "model" and _match(rule.scope, ev.model))
            if rule.metric == "circuit_open" and hit:
                evaluate()
    return out


ORACLE_RULES = [
    Rule(name="err-backup", metric="error_rate", threshold=30, scope="provider:backup",
         window_s=120, min_samples=5),
    Rule(name="err-all", metric="error_rate", threshold=6, window_s=300, min_samples=10),
    Rule(name="rate-low", metric="request_rate", comparison="<", threshold=2, window_s=300),
    Rule(name="rate-high", metric="request_rate", threshold=17, window_s=60),
    Rule(name="p50-main", metric="latency_p50", threshold=15000, scope="provider:main",
         window_s=120, min_samples=3),
    Rule(name="p95-all", metric="latency_p95", threshold=20000, window_s=300),
    Rule(name="p99-claude", metric="latency_p99", threshold=30000, scope="model:claude-*",
         window_s=600),
    Rule(name="ttfb", metric="ttfb_p95", threshold=3000, window_s=180, min_samples=5),
    Rule(name="cost-all", metric="cost", threshold=8.0, window_s=300),
    Rule(name="cost-alice", metric="cost", threshold=1.5, scope="user:alice", window_s=120),
    Rule(name="tokens-anth", metric="tokens", threshold=400_000, scope="dialect:anthropic",
         window_s=120),
    Rule(name="cb-backup", metric="circuit_open", threshold=0, scope="provider:backup"),
    Rule(name="cb-any", metric="circuit_open", comparison=">=", threshold=1),
    Rule(name="quiet", metric="no_traffic", minutes=5),
    Rule(name="quiet-ci", metric="no_traffic", minutes=3, scope="user:ci"),
]


def test_oracle_rules_cover_every_metric() -> None:
    # quota_used_pct: the recorded sequence has no quota facts; its own oracle test is below
    assert {r.metric for r in ORACLE_RULES} | {"quota_used_pct"} == set(METRICS)


@pytest.mark.parametrize("rule", ORACLE_RULES, ids=lambda r: r.name)
def test_metric_matches_brute_force_oracle(rule: Rule) -> None:
    rule = msgspec.structs.replace(rule, cooldown_s=0)
    got = run(engine(rule), MIXED, tick_every=15.0)
    want = oracle(rule, MIXED, 15.0)
    assert got == want
    kinds = [k for k, _, _ in got]
    assert "AlertFired" in kinds and "AlertResolved" in kinds  # the rule is exercised both ways


def test_mixed_sequence_incidents_land_where_recorded() -> None:
    rules = {r.name: msgspec.structs.replace(r, cooldown_s=0) for r in ORACLE_RULES}
    e = engine(*rules.values())
    fired: dict[str, list[float]] = {}
    for ev in MIXED:
        for t in e.observe(ev):
            if isinstance(t, AlertFired):
                fired.setdefault(t.rule, []).append((t.ts - T0) / 60)
    assert 8 <= fired["err-backup"][0] < 10  # the 5xx burst
    assert fired["cb-backup"] == [9.0]  # the circuit opened at minute 9 (half-open stays firing)
    assert 14 <= fired["p50-main"][0] < 16  # the latency spike
    assert 18 <= fired["cost-all"][0] < 19.5  # the opus burst


# -- window edges: inside fires, outside does not ---------------------------------------------

OPUS = Usage(input_tokens=0, output_tokens=8000)  # $0.60 at $75/MTok
BAD = {
    "error_rate": ({"status": 502, "error_class": "http_5xx"}, 50.0, 2),
    "request_rate": ({}, 1.0, 1),
    "latency_p50": ({"duration_ms": 5000.0}, 1000.0, 2),
    "latency_p95": ({"duration_ms": 5000.0}, 1000.0, 2),
    "latency_p99": ({"duration_ms": 5000.0}, 1000.0, 2),
    "ttfb_p95": ({"ttfb_ms": 5000.0}, 1000.0, 2),
    "cost": ({"model": "claude-opus-4-1", "usage": OPUS}, 1.0, 1),
    "tokens": ({"usage": Usage(input_tokens=400, output_tokens=200)}, 1000.0, 1),
}


@pytest.mark.parametrize("metric", sorted(BAD))
@pytest.mark.parametrize(("gap", "fires"), [(59.9, True), (60.0, False), (61.0, False)])
def test_two_bad_events_fire_only_inside_the_window(metric: str, gap: float, fires: bool) -> None:
    fields, threshold, min_samples = BAD[metric]
    rule = Rule(name="r", metric=metric, threshold=threshold, window_s=60.0,
                min_samples=min_samples)
    e = engine(rule)
    assert e.observe(req(T0 + 10, **fields)) == []
    got = e.observe(req(T0 + 10 + gap, **fields))
    assert [type(t) for t in got] == ([AlertFired] if fires else [])
    if fires:
        assert got[0].ts == T0 + 10 + gap and got[0].window_s == 60.0


def test_p99_is_exact_nearest_rank_not_an_estimate() -> None:
    rule = Rule(name="p99", metric="latency_p99", threshold=98.9, window_s=600)
    e = engine(rule)
    fired_at = None
    for i in range(100):  # durations 1..100 ms, ascending
        if e.observe(req(T0 + i, duration_ms=float(i + 1))):
            fired_at = i
    # after k samples p99 = ceil(0.99 k): 98 at k=98, 99 at k=99 -> fires on the 99th sample
    assert fired_at == 98
    assert e.value("p99") == 99.0  # not 99.01 (interpolated), not 101 (2 x mean)


def test_p99_drops_samples_that_leave_the_window() -> None:
    rule = Rule(name="p99", metric="latency_p99", threshold=1000, window_s=60, min_samples=1)
    e = engine(rule)
    assert [type(t) for t in e.observe(req(T0, duration_ms=5000.0))] == [AlertFired]
    e.observe(req(T0 + 1, duration_ms=5000.0))
    for i in range(98):
        e.observe(req(T0 + 30 + i * 0.1, duration_ms=10.0))
    assert e.value("p99") == 5000.0  # n=100: rank 99 is the first slow one
    assert e.tick(T0 + 60) == []  # the first slow one is exactly 60 s old: out
    assert e.value("p99") == 5000.0  # n=99: rank ceil(98.01) = 99 is the other slow one
    resolved = e.tick(T0 + 61)
    assert [type(t) for t in resolved] == [AlertResolved]
    assert e.value("p99") == 10.0


# -- state machine ------------------------------------------------------------------------------


def errors(e: Engine, t0: float, n: int, step: float = 1.0, **kw: object) -> list:
    out = []
    for i in range(n):
        out += e.observe(req(t0 + i * step, status=502, error_class="http_5xx", **kw))
    return out


def oks(e: Engine, t0: float, n: int, step: float = 1.0) -> list:
    out = []
    for i in range(n):
        out += e.observe(req(t0 + i * step))
    return out


ERR = Rule(name="err", metric="error_rate", threshold=50, window_s=60, cooldown_s=300,
           remind=False, min_samples=3)


def test_fires_once_stays_silent_then_resolves_once() -> None:
    e = engine(ERR)
    fired = errors(e, T0, 20)
    assert [type(t) for t in fired] == [AlertFired]
    assert fired[0].ts == T0 + 2  # the third sample: min_samples reached
    assert e.tick(T0 + 50) == []  # still firing: de-duplicated
    resolved = oks(e, T0 + 51, 30)
    assert [type(t) for t in resolved] == [AlertResolved]
    assert resolved[0].fired_id == fired[0].id
    assert resolved[0].value <= 50


def test_cooldown_holds_back_a_flapping_rule_then_fires() -> None:
    e = engine(ERR)
    assert len(errors(e, T0, 5)) == 1
    assert len(e.tick(T0 + 100)) == 1  # window empty: resolved
    assert errors(e, T0 + 110, 5) == []  # firing again inside the cool-down: held back
    late = e.tick(T0 + 300)  # cool-down since the fire at T0+2 passes at T0+302
    assert late == []
    again = errors(e, T0 + 302.5, 3, step=0.1)
    assert [type(t) for t in again] == [AlertFired]
    assert e.states["err"].generation == 2


def test_reminder_after_cooldown_while_firing() -> None:
    rule = msgspec.structs.replace(ERR, remind=True, cooldown_s=30)
    e = engine(rule)
    out = errors(e, T0, 70)
    kinds = [(type(t).__name__, t.ts - T0, t.repeat_of) for t in out]
    first = out[0].id
    assert kinds == [("AlertFired", 2.0, None), ("AlertFired", 32.0, first),
                     ("AlertFired", 62.0, first)]
    assert len({t.id for t in out}) == 3


def test_disable_and_remove_resolve_a_firing_alert() -> None:
    e = engine(ERR)
    errors(e, T0, 5)
    out = e.put_rule(msgspec.structs.replace(ERR, enabled=False), T0 + 10)
    assert [(type(t).__name__, t.message) for t in out] == [("AlertResolved", "rule disabled")]
    assert errors(e, T0 + 11, 5) == []  # disabled: not evaluated
    e.put_rule(ERR, T0 + 20)
    assert e.tick(T0 + 400)  == []  # nothing in the window any more
    assert len(errors(e, T0 + 401, 5)) == 1
    out = e.remove_rule("err", T0 + 420)
    assert [(type(t).__name__, t.message) for t in out] == [("AlertResolved", "rule removed")]
    assert "err" not in e.states and "err" in e.dirty


def test_every_resolve_carries_the_rules_severity() -> None:
    """AlertResolved has the severity too (the history showed None on resolved rows): the
    rule's when it is known, else (a restored state whose rule is gone) the one it fired with."""
    rule = msgspec.structs.replace(ERR, severity="critical")
    e = engine(rule)
    [fired] = errors(e, T0, 5)
    assert fired.severity == "critical" and e.states["err"].severity == "critical"
    [resolved] = oks(e, T0 + 61, 5)  # condition false
    assert (type(resolved), resolved.severity) == (AlertResolved, "critical")
    errors(e, T0 + 400, 5)
    [disabled] = e.put_rule(msgspec.structs.replace(rule, enabled=False, severity="info"),
                            T0 + 410)
    assert (disabled.message, disabled.severity) == ("rule disabled", "info")
    e.put_rule(rule, T0 + 420)
    errors(e, T0 + 800, 5)
    [removed] = e.remove_rule("err", T0 + 810)
    assert (removed.message, removed.severity) == ("rule removed", "critical")

    e = engine(rule)
    errors(e, T0, 5)
    saved = msgspec.json.decode(msgspec.json.encode(e.states["err"]), type=AlertState)
    restarted = Engine()
    restarted.restore([saved])
    [gone] = restarted.set_rules([], T0 + 10)  # its rule was deleted while the worker was down
    assert (gone.message, gone.severity) == ("rule removed", "critical")
    old = AlertState(rule="old", epoch="e", firing=True, generation=1, fired_id="f")
    before = Engine()  # a state persisted before AlertState kept the severity
    before.restore([old])
    [unknown] = before.set_rules([], T0)
    assert unknown.severity is None  # not made up


def test_new_rule_sees_the_window_that_already_passed() -> None:
    e = engine()
    errors(e, T0, 5)
    e.put_rule(ERR, T0 + 5)  # added at runtime
    out = e.tick(T0 + 6)
    assert [type(t) for t in out] == [AlertFired]
    assert out[0].value == 100.0


def test_restored_firing_state_does_not_fire_again() -> None:
    e = engine(ERR)
    fired = errors(e, T0, 5)
    saved = msgspec.json.decode(msgspec.json.encode(e.states["err"]), type=AlertState)
    e2 = Engine()
    e2.restore([saved])
    e2.set_rules([ERR], T0 + 10)
    assert errors(e2, T0 + 10, 10) == [] and e2.tick(T0 + 20) == []
    out = oks(e2, T0 + 80, 5)
    assert [type(t) for t in out] == [AlertResolved]
    assert out[0].fired_id == fired[0].id


def test_alert_ids_are_deterministic() -> None:
    a, b = engine(ERR), engine(ERR)
    assert errors(a, T0, 5)[0].id == errors(b, T0, 5)[0].id
    st = AlertState(rule="x", epoch="e", generation=1)
    assert alert_id(st, "fired") != alert_id(st, "resolved") != alert_id(st, "reminder", 1)


def test_no_traffic_fires_on_tick_and_resolves_on_the_next_request() -> None:
    rule = Rule(name="quiet", metric="no_traffic", minutes=5, scope="user:ci", cooldown_s=0)
    e = engine(rule)
    e.observe(req(T0 + 10, user="ci"))
    e.observe(req(T0 + 200, user="alice"))  # other user: does not count as traffic
    assert e.tick(T0 + 10 + 299) == []
    out = e.tick(T0 + 10 + 300)
    assert [(type(t).__name__, t.value) for t in out] == [("AlertFired", 5.0)]
    assert e.states["quiet"].since == T0 + 10
    out = e.observe(req(T0 + 400, user="ci"))
    assert [type(t) for t in out] == [AlertResolved]


def test_circuit_open_counts_circuits_in_scope() -> None:
    rule = Rule(name="cb", metric="circuit_open", threshold=1, comparison=">=",
                scope="provider:main", cooldown_s=0)
    e = engine(rule)

    def cc(ts: float, provider: str, state: str, model: str | None = None) -> CircuitChanged:
        return CircuitChanged(id=f"c{ts}", ts=ts, provider=provider, model=model, state=state,
                              previous="closed")

    assert e.observe(cc(T0, "backup", "open")) == []
    assert [type(t) for t in e.observe(cc(T0 + 1, "main", "open", "m1"))] == [AlertFired]
    assert e.observe(cc(T0 + 2, "main", "open", "m2")) == []
    assert e.value("cb") == 2.0
    assert e.observe(cc(T0 + 3, "main", "closed", "m1")) == []
    assert [type(t) for t in e.observe(cc(T0 + 4, "main", "closed", "m2"))] == [AlertResolved]


def quota(ts: float, user: str, used: float, limit: float = 100.0) -> QuotaUsed:
    return QuotaUsed(id=f"q{next(_SEQ)}", ts=ts, user=user, used=used, limit=limit)


def test_quota_used_pct_fires_exactly_when_the_threshold_is_crossed() -> None:
    rule = Rule(name="quota", metric="quota_used_pct", threshold=80, cooldown_s=0)
    e = engine(rule)
    assert e.value("quota") is None  # nobody has reported a quota: no verdict
    assert e.observe(quota(T0, "alice", 79.9)) == []
    assert e.observe(quota(T0 + 1, "alice", 80.0)) == []  # 80% is not > 80%
    [fired] = e.observe(quota(T0 + 2, "alice", 40.5, limit=50.0))  # 81%
    assert isinstance(fired, AlertFired)
    assert (fired.value, fired.threshold, fired.window_s) == (81.0, 80.0, 0.0)
    assert fired.message == "quota: quota used 81.00% > 80.00% (user alice)"
    assert e.observe(quota(T0 + 3, "alice", 90.0)) == []  # still firing: de-duplicated
    assert e.tick(T0 + 3600) == []  # a level: time alone changes nothing
    [resolved] = e.observe(quota(T0 + 3601, "alice", 0.0))  # a new period
    assert isinstance(resolved, AlertResolved) and resolved.fired_id == fired.id
    assert resolved.value == 0.0
    assert e.observe(req(T0 + 3602)) == []  # requests do not move it


def test_quota_used_pct_scope_all_is_the_max_over_users_and_user_scope_is_per_user() -> None:
    rules = [
        Rule(name="any", metric="quota_used_pct", threshold=90, comparison=">=", cooldown_s=0),
        Rule(name="bob", metric="quota_used_pct", threshold=90, comparison=">=",
             scope="user:bob", cooldown_s=0),
        Rule(name="team", metric="quota_used_pct", threshold=90, comparison=">=",
             scope="user:team-*", cooldown_s=0),
    ]
    e = engine(*rules)

    def names(ts: float, user: str, used: float) -> list[tuple[str, str]]:
        return [(type(t).__name__, t.rule) for t in e.observe(quota(ts, user, used))]

    assert names(T0, "bob", 50) == []
    assert names(T0 + 1, "alice", 95) == [("AlertFired", "any")]
    assert e.value("any") == 95.0 and e.value("bob") == 50.0 and e.value("team") is None
    assert names(T0 + 2, "bob", 90) == [("AlertFired", "bob")]  # "any" is already firing
    assert names(T0 + 3, "alice", 10) == []  # bob still holds "any" at 90%
    assert e.value("any") == 90.0
    assert names(T0 + 4, "team-a", 99) == [("AlertFired", "team")]
    assert names(T0 + 5, "bob", 1) == [("AlertResolved", "bob")]
    assert names(T0 + 6, "team-a", 2) == [("AlertResolved", "any"), ("AlertResolved", "team")]


def test_quota_used_pct_matches_an_oracle_over_a_random_sequence() -> None:
    rnd = random.Random(6)
    users = ["alice", "bob", "team-a", "team-b"]
    events = [quota(T0 + i, rnd.choice(users), rnd.uniform(0, 120), rnd.choice([50.0, 200.0]))
              for i in range(400)]
    for scope, cmp_, thr in [("all", ">", 150.0), ("user:team-*", ">=", 60.0),
                             ("user:bob", "<", 20.0)]:
        rule = Rule(name="q", metric="quota_used_pct", scope=scope, comparison=cmp_,
                    threshold=thr, cooldown_s=0)
        got = run(engine(rule), events)
        level: dict[str, float] = {}
        firing, want = False, []
        for ev in events:
            level[ev.user] = ev.used / ev.limit * 100
            vals = [v for u, v in level.items() if _match(scope, u)]
            if not vals or not _match(scope, ev.user):
                continue
            cond = {">": max(vals) > thr, ">=": max(vals) >= thr, "<": max(vals) < thr}[cmp_]
            if cond != firing:
                firing = cond
                want.append(("AlertFired" if cond else "AlertResolved", ev.ts, max(vals)))
        assert got == want and len(want) >= 4, scope


def test_quota_used_pct_cooldown_and_restart_reuse_the_state_machine() -> None:
    rule = Rule(name="q", metric="quota_used_pct", threshold=80, cooldown_s=600)
    e = engine(rule)
    assert len(e.observe(quota(T0, "alice", 85))) == 1
    assert [type(t) for t in e.observe(quota(T0 + 10, "alice", 5))] == [AlertResolved]
    assert e.observe(quota(T0 + 20, "alice", 95)) == []  # flapping: held back by the cool-down
    assert [type(t) for t in e.tick(T0 + 600)] == [AlertFired]  # still true once it passed
    [reminder] = e.tick(T0 + 1200)
    assert reminder.repeat_of is not None
    # restart: the state is restored before any quota fact is seen; no verdict holds it
    again = Engine(new_epoch=lambda: "e1")
    again.restore([msgspec.convert(msgspec.to_builtins(e.states["q"]), AlertState)])
    again.set_rules([rule], T0 + 1300)
    assert again.tick(T0 + 1300) == []
    assert again.observe(quota(T0 + 1301, "alice", 96), evaluate=False) == []  # warm-up
    assert again.tick(T0 + 1302) == []  # firing, inside the cool-down: nothing twice
    assert [type(t) for t in again.observe(quota(T0 + 1400, "alice", 1))] == [AlertResolved]


def test_cost_is_priced_with_the_shared_book_and_its_overrides() -> None:
    """The engine prices with the PriceBook it is given (the worker gives it the ledger's, with
    the user's overrides); new prices apply to requests from then on."""
    rule = Rule(name="spend", metric="cost", threshold=0.5, window_s=60)
    big = Usage(input_tokens=100_000, output_tokens=50_000)
    plain = engine(rule)  # built-in prices only: my-finetune has no price, it costs 0
    assert plain.observe(req(T0 + 1, model="my-finetune", usage=big)) == []
    assert plain.value("spend") == 0.0
    book = PriceBook({"models": {"my-finetune": {"input": 2.0, "output": 8.0}}})
    e = Engine(new_epoch=lambda: "e0", prices=book)
    e.set_rules([rule], T0)
    [fired] = e.observe(req(T0 + 1, model="my-finetune", usage=big))
    assert fired.value == pytest.approx(0.2 + 0.4)
    dearer = PriceBook({"models": {"my-finetune": {"input": 20.0, "output": 80.0}}})
    e.prices = dearer
    assert e.prices is dearer
    e.observe(req(T0 + 2, model="my-finetune", usage=big))
    assert e.value("spend") == pytest.approx(0.6 + 6.0)  # the first sample kept its cost


def test_pricer_is_exactly_price_cost() -> None:
    """The compiled per-(provider, model) cost equals round(Price.cost * 1e9), the ledger's
    formula, on every built-in price (long-context tiers included), an override pricing
    reasoning apart, and an unpriced model (0)."""
    book = PriceBook({"models": {"thinker": {"input": 1.0, "output": 4.0, "reasoning": 10.0}}})
    pricer = Pricer(book)
    rng = random.Random(7)
    for model in [*BUILTIN_PRICES, "thinker", "claude-sonnet-4-5-20250929", "nobody-knows"]:
        for _ in range(200):
            out = rng.randint(0, 50_000)
            u = Usage(input_tokens=rng.randint(0, 300_000), output_tokens=out,
                      cache_read_tokens=rng.choice([0, rng.randint(0, 200_000)]),
                      cache_write_tokens=rng.choice([0, rng.randint(0, 20_000)]),
                      reasoning_tokens=rng.randint(0, out))
            priced = book.lookup("p", model)
            want = 0 if priced is None else round(priced.price.cost(
                u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens,
                u.reasoning_tokens) * 1e9)
            assert pricer("p", model, u) == want, (model, u)
    assert pricer("p", "gpt-5", None) == 0


def test_late_event_outside_the_window_is_ignored() -> None:
    rule = Rule(name="t", metric="tokens", threshold=500, window_s=60)
    e = engine(rule)
    e.observe(req(T0 + 100, usage=Usage(input_tokens=300)))
    assert e.observe(req(T0 + 30, usage=Usage(input_tokens=300))) == []  # 70 s late
    assert e.value("t") == 300.0


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "bad name!", "metric": "cost"},
        {"name": "x", "metric": "p99"},
        {"name": "x", "metric": "cost", "comparison": "=="},
        {"name": "x", "metric": "cost", "scope": "team:a"},
        {"name": "x", "metric": "cost", "scope": "provider:"},
        {"name": "x", "metric": "cost", "window_s": 0},
        {"name": "x", "metric": "no_traffic"},
        {"name": "x", "metric": "cost", "severity": "page"},
        {"name": "x", "metric": "quota_used_pct", "scope": "provider:main"},
        {"name": "x", "metric": "cost", "channels": [{"url": "ftp://x"}]},
        {"name": "x", "metric": "cost", "channels": [{"url": "http://x", "format": "teams"}]},
    ],
)
def test_invalid_rules_are_rejected(bad: dict) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(bad, Rule)
