"""Alert rules and their evaluation over the event stream: pure, no I/O, no wall clock.

The clock is the largest event ``ts`` seen, advanced by ``Engine.tick(now)`` (the service
passes the wall clock; tests pass numbers), so a recorded sequence always gives the same alerts.

State machine of one rule (persisted as ``AlertState`` so that a restart sends nothing twice)::

    ok ──condition true, not in cool-down──▶ firing      emits AlertFired
    firing ──still true, cool-down elapsed, remind──▶ firing   emits AlertFired(repeat_of=...)
    firing ──condition false / rule disabled or removed──▶ ok  emits AlertResolved

The cool-down is the minimum time between two notifications of a rule: while firing, a
reminder only after it (if ``remind``); after a resolve, a new fire only once it has passed
since the last fire (a flapping rule notifies at most once per cool-down). Alert ids are
derived from (rule, state epoch, generation), so re-evaluating the same history after a crash
produces the same ids, which JetStream de-duplicates (Nats-Msg-Id).
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import operator
import os
import re
from collections.abc import Callable, Iterable
from typing import cast

import msgspec

from schemas.events import (
    AlertFired,
    AlertResolved,
    CircuitChanged,
    Event,
    QuotaUsed,
    RequestCompleted,
    Usage,
)
from schemas.prices import PriceBook
from workers.alerts._prices import Pricer
from workers.alerts._windows import (
    CountWindow,
    History,
    QuantileWindow,
    Sample,
    SumWindow,
    Window,
)

__all__ = [
    "CHANNEL_FORMATS",
    "COMPARISONS",
    "METRICS",
    "PERCENT_METRICS",
    "SCOPE_KINDS",
    "SEVERITIES",
    "AlertState",
    "Channel",
    "Engine",
    "Rule",
    "Transition",
    "alert_id",
    "format_value",
    "sample_of",
]

METRICS: dict[str, str] = {
    "error_rate": "% of requests that failed (error_class set or status >= 500)",
    "request_rate": "requests per minute",
    "latency_p50": "ms, exact p50 of request duration",
    "latency_p95": "ms, exact p95 of request duration",
    "latency_p99": "ms, exact p99 of request duration",
    "ttfb_p95": "ms, exact p95 of time to first byte",
    "cost": "USD spent in the window",
    "tokens": "tokens (input incl. cache + output) in the window",
    "circuit_open": "number of circuit breakers not closed (not windowed)",
    "no_traffic": "minutes without a request (fires after `minutes`)",
    "quota_used_pct": "% of the period's quota used, latest per user, max over users (a level)",
}
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
SCOPE_KINDS = ("provider", "model", "user", "dialect")
SEVERITIES = ("info", "warning", "critical")
CHANNEL_FORMATS = ("json", "slack", "feishu", "dingtalk")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PERCENTILE = {"latency_p50": 50, "latency_p95": 95, "latency_p99": 99, "ttfb_p95": 95}
_NEEDS_SAMPLES = {"error_rate", *_PERCENTILE}
_LEVELS = {"circuit_open", "quota_used_pct"}  # not windowed: the current state is the value
# metrics whose value is a percentage (0-100, not a fraction): thresholds are in percent too
PERCENT_METRICS = frozenset({"error_rate", "quota_used_pct"})

Transition = AlertFired | AlertResolved


class Channel(msgspec.Struct, frozen=True, kw_only=True):
    """One webhook. ``url`` and ``secret`` may be ``env:NAME`` references."""

    url: str
    format: str = "json"  # json | slack | feishu | dingtalk
    name: str = ""
    timeout_s: float = 5.0
    retries: int = 3  # extra attempts after the first, with exponential backoff
    secret: str = ""  # Feishu / DingTalk signing secret

    def __post_init__(self) -> None:
        if self.format not in CHANNEL_FORMATS:
            raise ValueError(f"channel format {self.format!r} not in {CHANNEL_FORMATS}")
        if not self.url.startswith(("http://", "https://", "env:")):
            raise ValueError(f"channel url {self.url!r} must be http(s):// or env:NAME")
        if self.timeout_s <= 0 or self.retries < 0:
            raise ValueError("channel timeout_s must be > 0 and retries >= 0")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.url.startswith("env:"):
            return f"{self.format}:{self.url}"
        host = self.url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        return f"{self.format}:{host}"


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    """An alert rule (KV bucket cs_rules, key = name)."""

    name: str
    metric: str
    threshold: float = 0.0
    comparison: str = ">"
    scope: str = "all"  # "all" or "<provider|model|user|dialect>:<value or glob>"
    window_s: float = 300.0
    severity: str = "warning"
    enabled: bool = True
    cooldown_s: float = 600.0
    remind: bool = True  # re-notify every cooldown_s while firing
    channels: list[Channel] = []
    minutes: float = 0.0  # no_traffic only: fire after this many minutes without a request
    min_samples: int = 1  # error_rate and percentiles: no verdict on fewer samples
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"rule name {self.name!r} must be 1-64 letters, digits, '_' or '-'")
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r} not in {sorted(METRICS)}")
        if self.comparison not in COMPARISONS:
            raise ValueError(f"comparison {self.comparison!r} not in {sorted(COMPARISONS)}")
        if self.scope != "all":
            kind, _, value = self.scope.partition(":")
            if self.metric == "quota_used_pct" and kind != "user":
                raise ValueError("quota_used_pct scope must be all or user:X")
            if kind not in SCOPE_KINDS or not value:
                raise ValueError(f"scope {self.scope!r}: 'all' or one of {SCOPE_KINDS}:<value>")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} not in {SEVERITIES}")
        if not 0 < self.window_s <= 7 * 86400:
            raise ValueError("window_s must be > 0 and at most 7 days")
        if self.metric == "no_traffic" and not 0 < self.minutes <= 7 * 1440:
            raise ValueError("no_traffic needs minutes > 0")
        if self.cooldown_s < 0 or self.min_samples < 1:
            raise ValueError("cooldown_s must be >= 0 and min_samples >= 1")
        if not math.isfinite(self.threshold):
            raise ValueError("threshold must be finite")

    @property
    def span(self) -> float:
        """Seconds of history the rule looks at."""
        if self.metric == "no_traffic":
            return self.minutes * 60.0
        if self.metric in _LEVELS:
            return 0.0
        return self.window_s

    @property
    def effective_threshold(self) -> float:
        return self.minutes if self.metric == "no_traffic" else self.threshold

    @property
    def effective_comparison(self) -> str:
        return ">=" if self.metric == "no_traffic" else self.comparison


class AlertState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Where a rule stands (KV bucket cs_alert_state, key = rule name)."""

    rule: str
    epoch: str  # random per state record: ids stay unique if a rule is removed and re-added
    firing: bool = False
    generation: int = 0  # how many times it has fired
    fired_id: str | None = None
    fired_at: float = 0.0
    value: float = 0.0
    last_fired_at: float = 0.0  # cool-down anchor for a new fire
    last_notified_at: float = 0.0  # cool-down anchor for reminders
    reminders: int = 0
    since: float | None = None  # no_traffic: the last request seen when it fired
    severity: str | None = None  # the rule's when it fired or reminded (a removed rule's too)


def alert_id(state: AlertState, kind: str, n: int = 0) -> str:
    """Deterministic 24-hex id of an alert fact, stable across re-evaluation."""
    key = f"{state.rule}\x00{state.epoch}\x00{state.generation}\x00{kind}\x00{n}"
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def sample_of(
    ev: RequestCompleted, cost_nano: Callable[[str | None, str, Usage | None], int]
) -> Sample:
    usage = ev.usage
    return Sample(
        ev.ts,
        ev.provider or "",
        ev.model,
        ev.user or "",
        ev.dialect,
        ev.error_class is not None or ev.status >= 500,
        ev.duration_ms,
        ev.ttfb_ms,
        cost_nano(ev.provider, ev.upstream_model or ev.model, usage),
        usage.total_tokens if usage is not None else 0,
    )


_SAMPLE_FIELD = {"provider": 1, "model": 2, "user": 3, "dialect": 4}


class _Scope:
    """Rules sharing one scope, their windows, and a memo of which values match it."""

    __slots__ = ("field", "kind", "memo", "pattern", "rules", "windows")

    def __init__(self, scope: str) -> None:
        kind, _, pattern = scope.partition(":")
        self.kind = kind
        self.pattern = pattern
        self.field = _SAMPLE_FIELD.get(kind, -1)
        self.memo: dict[str, bool] = {}
        self.rules: list[_Bound] = []
        self.windows: dict[tuple[str, float], Window] = {}

    def matches_value(self, value: str | None) -> bool:
        if self.kind == "all":
            return True
        if not value:
            return False
        hit = self.memo.get(value)
        if hit is None:
            hit = fnmatch.fnmatchcase(value, self.pattern)
            if len(self.memo) < 4096:
                self.memo[value] = hit
        return hit

    def matches(self, s: Sample) -> bool:
        return self.field < 0 or self.matches_value(cast(str, s[self.field]))

    def matches_circuit(self, provider: str, model: str) -> bool:
        if self.kind == "provider":
            return self.matches_value(provider)
        if self.kind == "model":
            return self.matches_value(model)
        return self.kind == "all"


class _Bound:
    """A rule attached to its scope, window and state, with its check compiled to a closure
    (the hot path: one call per rule per matching event)."""

    __slots__ = ("check", "cmp", "kind", "last_seen", "remind_every", "rule", "scope", "state",
                 "threshold", "window")

    def __init__(self, rule: Rule, scope: _Scope, window: Window | None,
                 state: AlertState) -> None:
        self.rule = rule
        self.scope = scope
        self.window = window
        self.state = state
        self.cmp = COMPARISONS[rule.effective_comparison]
        self.threshold = rule.effective_threshold
        self.last_seen = 0.0  # no_traffic
        # 0 windowed, 1 no_traffic, 2 circuit_open, 3 quota_used_pct (>= 2: requests skip it)
        self.kind = _KIND.get(rule.metric, 0)
        self.remind_every = rule.cooldown_s if rule.remind and rule.cooldown_s > 0 else math.inf
        self.check: Callable[[float], bool | None] = _no_check


_KIND = {"no_traffic": 1, "circuit_open": 2, "quota_used_pct": 3}


def _no_check(now: float) -> bool | None:
    return None


def _compile_check(
    bound: _Bound,
    circuits: Callable[[_Scope], int],
    quota: Callable[[_Scope], tuple[str, float] | None],
) -> Callable[[float], bool | None]:
    """The rule's condition as a closure: True/False, or None when there are too few samples."""
    rule, w, cmp, threshold = bound.rule, bound.window, bound.cmp, bound.threshold
    least = rule.min_samples
    if isinstance(w, CountWindow):
        if rule.metric == "request_rate":
            per_minute = 60.0 / w.span
            return lambda now: cmp(w.n * per_minute, threshold)
        return lambda now: None if w.n < least else cmp(100.0 * w.errors / w.n, threshold)
    if isinstance(w, SumWindow):
        scale = 1e-9 if rule.metric == "cost" else 1.0
        return lambda now: cmp(w.total * scale, threshold)
    if isinstance(w, QuantileWindow):
        # nearest rank r = ceil(p n / 100); p-th percentile > T  <=>  #(values <= T) < r
        p, counts = _PERCENTILE[rule.metric], w.counts[threshold]
        if rule.comparison == ">":
            return lambda now: None if w.n < least else counts[1] < -(-p * w.n // 100)
        if rule.comparison == ">=":
            return lambda now: None if w.n < least else counts[0] < -(-p * w.n // 100)
        if rule.comparison == "<":
            return lambda now: None if w.n < least else counts[0] >= -(-p * w.n // 100)
        return lambda now: None if w.n < least else counts[1] >= -(-p * w.n // 100)
    if rule.metric == "no_traffic":
        silence = rule.minutes * 60.0
        return lambda now: now - bound.last_seen >= silence
    scope = bound.scope
    if rule.metric == "quota_used_pct":

        def quota_check(now: float) -> bool | None:
            top = quota(scope)  # None: no user in scope has reported a quota yet
            return None if top is None else cmp(top[1], threshold)

        return quota_check
    return lambda now: cmp(circuits(scope), threshold)


def _new_window(rule: Rule) -> tuple[tuple[str, float], Window] | None:
    m, span = rule.metric, rule.window_s
    if m in ("error_rate", "request_rate"):
        return ("count", span), CountWindow(span)
    if m in ("latency_p50", "latency_p95", "latency_p99"):
        return ("duration_ms", span), QuantileWindow(span, "duration_ms")
    if m == "ttfb_p95":
        return ("ttfb_ms", span), QuantileWindow(span, "ttfb_ms")
    if m == "cost":
        return ("cost_nano", span), SumWindow(span, "cost_nano")
    if m == "tokens":
        return ("tokens", span), SumWindow(span, "tokens")
    return None


class Engine:
    """Sliding-window aggregates per rule, evaluated on every event and every tick."""

    def __init__(
        self,
        *,
        history_s: float = 3600.0,
        history_max: int = 500_000,
        new_epoch: Callable[[], str] = lambda: os.urandom(4).hex(),
        prices: PriceBook | None = None,
    ) -> None:
        self.clock = 0.0
        self._pricer = Pricer(prices)  # the cost metric's prices (schemas/prices.py)
        self.rules: dict[str, Rule] = {}
        self.states: dict[str, AlertState] = {}
        self.dirty: set[str] = set()  # states changed since the service last persisted them
        self._new_epoch = new_epoch
        # the recent samples a rule added later is seeded from (packed, ~45 bytes per sample)
        self._history = History(history_s, history_max)
        self._bound: dict[str, _Bound] = {}
        self._scopes: dict[str, _Scope] = {}
        self._circuits: dict[tuple[str, str], str] = {}
        self._circuit_rules: list[_Bound] = []
        self._silence_rules: list[_Bound] = []
        # (user id, key id or None) -> (latest used / limit * 100, user name, key name): a
        # user's own budget and each of its keys' are levels of their own
        self._quota: dict[tuple[str, str | None], tuple[float, str | None, str | None]] = {}
        self._quota_rules: list[_Bound] = []

    @property
    def prices(self) -> PriceBook:
        return self._pricer.book

    @prices.setter
    def prices(self, book: PriceBook) -> None:
        """New prices (the user's overrides changed): requests from now on are priced with
        them; the samples already in the windows keep their cost."""
        self._pricer = Pricer(book)

    # -- rules ------------------------------------------------------------------------------

    def restore(self, states: Iterable[AlertState]) -> None:
        """Load persisted states (before the rules)."""
        for st in states:
            self.states[st.rule] = st

    def set_rules(self, rules: Iterable[Rule], now: float) -> list[Transition]:
        """Replace the whole rule set; firing alerts of rules that are gone resolve."""
        wanted = {r.name: r for r in rules}
        out: list[Transition] = []
        for name in sorted((set(self.states) | set(self.rules)) - set(wanted)):
            out += self.remove_rule(name, now)
        for rule in wanted.values():
            out += self.put_rule(rule, now)
        return out

    def put_rule(self, rule: Rule, now: float) -> list[Transition]:
        """Add or replace a rule. Not evaluated here: the next event or tick does that."""
        self._unbind(rule.name)
        self.rules[rule.name] = rule
        st = self.states.get(rule.name)
        if st is None:
            st = self.states[rule.name] = AlertState(rule=rule.name, epoch=self._new_epoch())
            self.dirty.add(rule.name)
        if not rule.enabled:
            ev = self._resolve(rule, st, st.value, max(self.clock, now), "rule disabled",
                               rule.severity)
            return [ev] if ev is not None else []
        self._bind(rule, st, now)
        return []

    def remove_rule(self, name: str, now: float) -> list[Transition]:
        self._unbind(name)
        rule = self.rules.pop(name, None)
        st = self.states.pop(name, None)
        if st is None:
            return []
        self.dirty.add(name)
        # a state restored for a rule gone from KV: its severity is the one it fired with
        severity = rule.severity if rule is not None else st.severity
        if rule is None:
            rule = Rule(name=name, metric="request_rate")  # only name/metric/scope are used
        ev = self._resolve(rule, st, st.value, max(self.clock, now), "rule removed", severity)
        return [ev] if ev is not None else []

    def _bind(self, rule: Rule, st: AlertState, now: float) -> None:
        scope = self._scopes.get(rule.scope)
        if scope is None:
            scope = self._scopes[rule.scope] = _Scope(rule.scope)
        window: Window | None = None
        made = _new_window(rule)
        if made is not None:
            key, fresh = made
            window = scope.windows.get(key)
            if window is None:
                window = scope.windows[key] = fresh
                for s in self._history:  # seed from history: a new rule sees the past window
                    if scope.matches(s):
                        window.add(s, self.clock)
        if isinstance(window, QuantileWindow):
            window.watch(rule.threshold)
        bound = _Bound(rule, scope, window, st)
        bound.check = _compile_check(bound, self._circuit_count, self._quota_top)
        scope.rules.append(bound)
        self._bound[rule.name] = bound
        if rule.metric == "circuit_open":
            self._circuit_rules.append(bound)
        elif rule.metric == "quota_used_pct":
            self._quota_rules.append(bound)
        elif rule.metric == "no_traffic":
            # a firing alert keeps its silence start; otherwise the clock starts at binding
            last = st.since if st.firing and st.since is not None else now
            seen = self._history.latest(scope.matches)
            if seen is not None:
                last = max(last, seen.ts)
            bound.last_seen = last
            self._silence_rules.append(bound)

    def _unbind(self, name: str) -> None:
        bound = self._bound.pop(name, None)
        if bound is None:
            return
        scope = bound.scope
        scope.rules.remove(bound)
        if bound in self._circuit_rules:
            self._circuit_rules.remove(bound)
        if bound in self._silence_rules:
            self._silence_rules.remove(bound)
        if bound in self._quota_rules:
            self._quota_rules.remove(bound)
        used = set()
        for other in scope.rules:
            made = _new_window(other.rule)
            if made is not None:
                used.add(made[0])
        for key in [k for k in scope.windows if k not in used]:
            del scope.windows[key]
        if not scope.rules:
            del self._scopes[bound.rule.scope]

    # -- events -----------------------------------------------------------------------------

    def observe(self, event: Event, evaluate: bool = True) -> list[Transition]:
        """Feed one fact. With ``evaluate`` False only the aggregates move (warm-up)."""
        if isinstance(event, RequestCompleted):
            return self._observe_request(sample_of(event, self._pricer), evaluate)
        if isinstance(event, CircuitChanged):
            return self._observe_circuit(event, evaluate)
        if isinstance(event, QuotaUsed):
            return self._observe_quota(event, evaluate)
        return []

    def _observe_request(self, s: Sample, evaluate: bool) -> list[Transition]:
        if s.ts > self.clock:
            self.clock = s.ts
        now = self.clock
        self._history.add(s, now)
        out: list[Transition] = []
        for scope in self._scopes.values():
            if scope.field >= 0 and not scope.matches_value(s[scope.field]):  # type: ignore[arg-type]
                continue
            for window in scope.windows.values():
                window.add(s, now)
            for bound in scope.rules:
                if bound.kind:
                    if bound.kind >= 2:
                        continue  # circuit_open, quota_used_pct: requests do not move them
                    if s.ts > bound.last_seen:
                        bound.last_seen = s.ts
                if not evaluate:
                    continue
                # inline fast path of _evaluate: most checks change nothing
                verdict = bound.check(now)
                st = bound.state
                if verdict:
                    if st.firing and now < st.last_notified_at + bound.remind_every:
                        continue
                elif not st.firing:
                    continue
                t = self._evaluate(bound, now)
                if t is not None:
                    out.append(t)
        return out

    def _observe_circuit(self, ev: CircuitChanged, evaluate: bool) -> list[Transition]:
        if ev.ts > self.clock:
            self.clock = ev.ts
        key = (ev.provider, ev.model or "")
        if ev.state == "closed":
            self._circuits.pop(key, None)
        else:
            self._circuits[key] = ev.state
        out: list[Transition] = []
        if evaluate:
            for bound in self._circuit_rules:
                if bound.scope.matches_circuit(*key):
                    t = self._evaluate(bound, self.clock)
                    if t is not None:
                        out.append(t)
        return out

    def _observe_quota(self, ev: QuotaUsed, evaluate: bool) -> list[Transition]:
        if ev.ts > self.clock:
            self.clock = ev.ts
        # the latest fact per user (and key) is the level; the schema guarantees limit > 0
        self._quota[(ev.user, ev.key)] = (ev.used / ev.limit * 100.0, ev.name, ev.key_name)
        out: list[Transition] = []
        if evaluate:
            for bound in self._quota_rules:
                if bound.scope.matches_value(ev.user) or bound.scope.matches_value(ev.name):
                    t = self._evaluate(bound, self.clock)
                    if t is not None:
                        out.append(t)
        return out

    def tick(self, now: float) -> list[Transition]:
        """Advance the clock (never backwards) and evaluate every rule."""
        if now > self.clock:
            self.clock = now
        now = self.clock
        self._history.evict(now)
        out: list[Transition] = []
        for scope in self._scopes.values():
            for window in scope.windows.values():
                window.evict(now)
            for bound in scope.rules:
                t = self._evaluate(bound, now)
                if t is not None:
                    out.append(t)
        return out

    # -- evaluation -------------------------------------------------------------------------

    def value(self, name: str) -> float | None:
        """The rule's metric now (None: not enough samples for a verdict)."""
        bound = self._bound.get(name)
        return None if bound is None else self._value(bound, self.clock)

    def _value(self, bound: _Bound, now: float) -> float | None:
        rule, w = bound.rule, bound.window
        m = rule.metric
        if isinstance(w, CountWindow):
            if m == "request_rate":
                return w.request_rate()
            return w.error_rate() if w.n >= rule.min_samples else None
        if isinstance(w, QuantileWindow):
            return w.percentile(_PERCENTILE[m]) if w.n >= rule.min_samples else None
        if isinstance(w, SumWindow):
            return w.total / 1e9 if m == "cost" else float(w.total)
        if m == "no_traffic":
            return (now - bound.last_seen) / 60.0
        if m == "quota_used_pct":
            top = self._quota_top(bound.scope)
            return None if top is None else top[1]
        return float(self._circuit_count(bound.scope))

    def _circuit_count(self, scope: _Scope) -> int:
        return sum(1 for key in self._circuits if scope.matches_circuit(*key))

    def _quota_top(self, scope: _Scope) -> tuple[str, float] | None:
        """The user (or user's key) in scope with the highest quota used % and that %, None if
        none reported. A scope ``user:X`` matches the user's id or name."""
        top: tuple[str, float] | None = None
        for (user, key), (pct, name, key_name) in self._quota.items():
            if (top is None or pct > top[1]) and (scope.matches_value(user)
                                                  or scope.matches_value(name)):
                label = name or user
                top = (label if key is None else f"{label}, key {key_name or key}", pct)
        return top

    def _evaluate(self, bound: _Bound, now: float) -> Transition | None:
        verdict = bound.check(now)
        rule = bound.rule
        st = bound.state
        if verdict:
            if not st.firing:
                if st.generation and now < st.last_fired_at + rule.cooldown_s:
                    return None  # flap suppression: fires once the cool-down has passed
                return self._fire(bound, st, self._value(bound, now) or 0.0, now)
            if now >= st.last_notified_at + bound.remind_every:
                return self._remind(rule, st, self._value(bound, now) or 0.0, now)
            return None
        w = bound.window
        if st.firing and (verdict is not None or (w is not None and w.n == 0)):
            # no verdict (too few samples, no quota reported) holds a firing alert; an empty
            # window resolves it
            return self._resolve(rule, st, self._value(bound, now) or 0.0, now, "",
                                 rule.severity)
        return None

    def _fire(self, bound: _Bound, st: AlertState, value: float, now: float) -> AlertFired:
        rule = bound.rule
        st.generation += 1
        st.firing = True
        st.fired_id = alert_id(st, "fired")
        st.fired_at = st.last_fired_at = st.last_notified_at = now
        st.value = value
        st.reminders = 0
        st.since = bound.last_seen if rule.metric == "no_traffic" else None
        st.severity = rule.severity
        self.dirty.add(rule.name)
        return self._fired_event(rule, st, st.fired_id, value, now, None)

    def _remind(self, rule: Rule, st: AlertState, value: float, now: float) -> AlertFired:
        st.reminders += 1
        st.last_notified_at = now
        st.value = value
        st.severity = rule.severity
        self.dirty.add(rule.name)
        rid = alert_id(st, "reminder", st.reminders)
        return self._fired_event(rule, st, rid, value, now, st.fired_id)

    def _fired_event(
        self, rule: Rule, st: AlertState, id_: str, value: float, now: float, repeat_of: str | None
    ) -> AlertFired:
        return AlertFired(
            id=id_,
            ts=now,
            rule=rule.name,
            metric=rule.metric,
            scope=rule.scope,
            value=value,
            threshold=rule.effective_threshold,
            comparison=rule.effective_comparison,
            window_s=rule.span,
            severity=rule.severity,
            message=_message(rule, value) + self._detail(rule),
            repeat_of=repeat_of,
        )

    def _detail(self, rule: Rule) -> str:
        """quota_used_pct: which user the value is (the scope may hold many)."""
        bound = self._bound.get(rule.name)
        if rule.metric != "quota_used_pct" or bound is None:
            return ""
        top = self._quota_top(bound.scope)
        return "" if top is None else f" (user {top[0]})"

    def _resolve(
        self, rule: Rule, st: AlertState, value: float, now: float, why: str,
        severity: str | None,
    ) -> AlertResolved | None:
        if not st.firing:
            return None
        st.firing = False
        st.value = value
        st.since = None
        self.dirty.add(rule.name)
        ev = AlertResolved(
            id=alert_id(st, "resolved"),
            ts=now,
            rule=rule.name,
            metric=rule.metric,
            scope=rule.scope,
            value=value,
            fired_id=st.fired_id,
            message=why or f"{rule.name}: {rule.metric} back to {format_value(rule.metric, value)}",
            severity=severity,
        )
        return ev


def format_value(metric: str, value: float) -> str:
    if metric in PERCENT_METRICS:
        return f"{value:.2f}%"
    if metric == "cost":
        return f"${value:.4f}"
    if metric.startswith(("latency", "ttfb")):
        return f"{value:.6g} ms"
    if metric == "no_traffic":
        return f"{value:.1f} min"
    if metric == "request_rate":
        return f"{value:.2f}/min"
    return f"{value:g}"


def _message(rule: Rule, value: float) -> str:
    where = "" if rule.scope == "all" else f" [{rule.scope}]"
    if rule.metric == "no_traffic":
        return f"{rule.name}: no request for {value:.1f} min{where}"
    if rule.metric == "circuit_open":
        return f"{rule.name}: {value:g} circuit(s) open{where}"
    if rule.metric == "quota_used_pct":
        return (
            f"{rule.name}: quota used {format_value(rule.metric, value)} {rule.comparison} "
            f"{format_value(rule.metric, rule.threshold)}{where}"
        )
    return (
        f"{rule.name}: {rule.metric} {format_value(rule.metric, value)} {rule.comparison} "
        f"{format_value(rule.metric, rule.threshold)} over {rule.window_s:g}s{where}"
    )
