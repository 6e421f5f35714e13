"""The quota fold, pure: ``RequestCompleted`` and ``SessionDeleted`` facts, in event-log order,
-> spend per user and per key in each period (day, week, month, total).

A request is counted once, whatever facts it has (the router's, the edge's, a recovered
intent, the same fact published twice): the fold remembers the contribution of the last
``recent`` requests by request id and, as the ledger does (``projection.fold_requests``),
real usage replaces an estimate and a larger real usage a smaller one (the difference is
added). It counts in the periods of its arrival at the edge (``received_at``); a period that
has ended takes nothing more (a request that arrived before midnight and finished after it
counts in the day before). A ``SessionDeleted`` tombstone takes back what the session's
requests counted in the periods still current (the fold keeps, per session and user/key, what
it counted in each period: ``SESSIONS`` sessions, the least recently active forgotten first)
and counts its bill instead, so the spend is the same live, after a delete and in a replay,
where the erased facts are gone and only the bill is left.

Budgets only decide the levels and crossings (:meth:`QuotaFold.level`): the spend itself is
kept in both units for every period, so a budget set or changed mid-period applies to what
was already spent. The same facts in the same order give the same state: a replay gives the
same spend (the price book aside: USD is priced when a fact is folded).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from datetime import tzinfo
from typing import NamedTuple

import msgspec

from schemas.events import RequestCompleted, SessionDeleted, Usage
from schemas.quota import (
    PERIODS,
    PeriodSpend,
    Spend,
    key_scope,
    period_bounds,
    user_scope,
    zone_name,
)
from schemas.users import Budget

__all__ = ["RECENT", "Level", "QuotaFold", "State"]

# requests remembered for de-duplication (~250 bytes each): the facts of one request arrive
# within seconds (a re-published one: after the part that held it is back)
RECENT = 20_000
# sessions (per user and key) whose spend is remembered for a delete (~400 bytes each)
SESSIONS = 20_000


class Contribution(NamedTuple):
    user: str | None
    key: str | None
    at: float  # received_at: the periods it counts in
    tokens: int
    nusd: int
    real: bool  # not an estimate
    session: bytes | None  # sha256 of the session id


class Level(NamedTuple):
    used: float  # in the budget's unit, in the period holding ``at``
    period: PeriodSpend
    crossed: str | None  # "soft" | "hard": this change crossed it (once per period)


class _Period:
    """One scope's current period, changed in place."""

    __slots__ = ("end", "nusd", "start", "tokens")

    def __init__(self, start: float, end: float | None, tokens: int = 0, nusd: int = 0) -> None:
        self.start, self.end, self.tokens, self.nusd = start, end, tokens, nusd

    def holds(self, at: float) -> bool:
        return self.start <= at and (self.end is None or at < self.end)

    def frozen(self) -> PeriodSpend:
        return PeriodSpend(start=self.start, end=self.end, tokens=self.tokens, nusd=self.nusd)


Scopes = dict[str, tuple[str, dict[str, _Period]]]


class State(msgspec.Struct, kw_only=True):
    """What the fold holds, as saved between runs (``<home>/quota/state.msgpack``)."""

    seq: int = 0
    zone: str = ""
    # scope -> (owner user id, period -> (start, end, tokens, nusd))
    scopes: dict[str, tuple[str, dict[str, tuple[float, float | None, int, int]]]] = {}
    # scope -> [period, start, level] of the last crossing (0 none, 1 soft, 2 hard)
    crossings: dict[str, tuple[str, float, int]] = {}
    recent: list[tuple[str, Contribution]] = []
    tombstones: list[str] = []
    # (session digest, user, key, [start, tokens, nusd] x day/week/month/total as doubles)
    sessions: list[tuple[bytes, str | None, str | None, bytes]] = []


def session_hash(session: str) -> bytes:
    return hashlib.sha256(session.encode()).digest()


class QuotaFold:
    def __init__(self, zone: tzinfo, *, recent: int = RECENT,
                 sessions: int = SESSIONS) -> None:
        self.zone = zone
        self.limit = recent
        self.session_limit = sessions
        self._ids: dict[str, str] = {}  # one string per user and key id
        self.seq = 0
        self.scopes: Scopes = {}
        self.crossings: dict[str, tuple[str, float, int]] = {}
        self.recent: OrderedDict[str, Contribution] = OrderedDict()
        # (session digest, user, key) -> [start, tokens, nusd] per period: what it counted
        self.sessions: OrderedDict[tuple[bytes, str | None, str | None], array[float]] = (
            OrderedDict())
        self.tombstones: OrderedDict[str, None] = OrderedDict()

    # -- folding ----------------------------------------------------------------------------

    def request(self, seq: int, ev: RequestCompleted, nusd: int) -> set[str]:
        """Fold one request fact; the scopes whose spend changed."""
        self.seq = max(self.seq, seq)
        usage = ev.usage
        if usage is None or not (ev.user_id or ev.key_id):
            return set()
        new = Contribution(self._id(ev.user_id), self._id(ev.key_id), ev.received_at or ev.ts,
                           usage.total_tokens, nusd, not ev.usage_estimated,
                           session_hash(ev.session) if ev.session else None)
        old = self.recent.get(ev.request_id)
        if old is None:
            if new.tokens == 0 and new.nusd == 0:
                return set()
            self._remember(ev.request_id, new)
            return self._add(new.user, new.key, new.at, new.tokens, new.nusd, new.session)
        self.recent.move_to_end(ev.request_id)
        if not ((new.real and not old.real) or (new.real == old.real
                                                 and new.tokens > old.tokens)):
            return set()
        # the better usage replaces the one counted, in the periods the request counted in
        self.recent[ev.request_id] = old._replace(tokens=new.tokens, nusd=new.nusd,
                                                  real=new.real)
        return self._add(old.user, old.key, old.at, new.tokens - old.tokens,
                         new.nusd - old.nusd, old.session)

    def deleted(self, seq: int, ev: SessionDeleted, nusds: Iterable[int]) -> set[str]:
        """Fold a session's tombstone: what the session counted in the periods still current
        goes, its bill counts. A tombstone seen before (its id) changes nothing."""
        self.seq = max(self.seq, seq)
        if ev.id in self.tombstones:
            return set()
        self.tombstones[ev.id] = None
        while len(self.tombstones) > 10_000:
            self.tombstones.popitem(last=False)
        changed: set[str] = set()
        try:
            digest = bytes.fromhex(ev.session_hash)
        except ValueError:
            digest = b""
        for entry in [k for k in self.sessions if k[0] == digest]:
            changed |= self._take_back(entry[1], entry[2], self.sessions.pop(entry))
        # its requests are forgotten: a late fact of one of them counts again, as new
        for rid in [r for r, c in self.recent.items() if c.session == digest]:
            del self.recent[rid]
        for d, nusd in zip(ev.requests, nusds, strict=True):
            usage = d.usage or Usage()
            if d.user_id or d.key_id:
                changed |= self._add(d.user_id, d.key_id, d.received_at or d.ts,
                                     usage.total_tokens, nusd)
        return changed

    def _id(self, ident: str | None) -> str | None:
        """One string object per user or key id (the fold holds many references to few)."""
        if ident is None:
            return None
        return self._ids.setdefault(ident, ident)

    def _remember(self, request_id: str, c: Contribution) -> None:
        self.recent[request_id] = c
        while len(self.recent) > self.limit:
            self.recent.popitem(last=False)

    def _add(self, user: str | None, key: str | None, at: float, tokens: int,
             nusd: int, session: bytes | None = None) -> set[str]:
        changed: set[str] = set()
        owner = user or ""
        landed: list[float | None] = []  # the start of the period each amount went into
        for scope in ((user_scope(user),) if user else ()) + ((key_scope(key),) if key else ()):
            entry = self.scopes.get(scope)
            if entry is None:
                entry = self.scopes[scope] = (owner, {})
            periods = entry[1]
            landed = []
            for period in PERIODS:
                p = periods.get(period)
                if p is None or not p.holds(at):  # else the common case: no calendar arithmetic
                    start, end = period_bounds(period, at, self.zone)
                    if p is not None and start < p.start:
                        landed.append(None)
                        continue  # a period that has ended takes nothing more
                    p = periods[period] = _Period(start, end)
                p.tokens += tokens
                p.nusd += nusd
                landed.append(p.start)
            changed.add(scope)
        if session is not None and landed:
            self._count_session(session, user, key, landed, tokens, nusd)
        return changed

    def _count_session(self, session: bytes, user: str | None, key: str | None,
                       landed: list[float | None], tokens: int, nusd: int) -> None:
        """What the session counted per period (for a delete): [start, tokens, nusd] x 4."""
        entry = (session, user, key)
        amounts = self.sessions.get(entry)
        if amounts is None:
            amounts = self.sessions[entry] = array("d", bytes(8 * 3 * len(PERIODS)))
            while len(self.sessions) > self.session_limit:
                self.sessions.popitem(last=False)
        else:
            self.sessions.move_to_end(entry)
        for i, start in enumerate(landed):
            if start is None:
                continue
            if amounts[3 * i] != start:  # a newer period: what it counted before has ended
                amounts[3 * i], amounts[3 * i + 1], amounts[3 * i + 2] = start, 0.0, 0.0
            amounts[3 * i + 1] += tokens
            amounts[3 * i + 2] += nusd

    def _take_back(self, user: str | None, key: str | None,
                   amounts: array[float]) -> set[str]:
        """Subtract what a session counted, in the periods that are still the current ones."""
        changed: set[str] = set()
        for scope in ((user_scope(user),) if user else ()) + ((key_scope(key),) if key else ()):
            entry = self.scopes.get(scope)
            if entry is None:
                continue
            for i, period in enumerate(PERIODS):
                p = entry[1].get(period)
                if p is not None and p.start == amounts[3 * i]:
                    p.tokens -= int(amounts[3 * i + 1])
                    p.nusd -= int(amounts[3 * i + 2])
            changed.add(scope)
        return changed

    # -- reading ----------------------------------------------------------------------------

    def record(self, scope: str) -> Spend:
        owner, periods = self.scopes.get(scope, ("", {}))
        kind, _, ident = scope.partition(".")
        values = {name: p.frozen() for name, p in periods.items()}
        return Spend(scope="user" if kind == "user" else "key", id=ident, user=owner or ident,
                     seq=self.seq, zone=zone_name(self.zone), day=values.get("day"),
                     week=values.get("week"), month=values.get("month"),
                     total=values.get("total"))

    def level(self, scope: str, budget: Budget, soft_pct: float | None) -> Level | None:
        """The scope's use of ``budget`` in its current period, and whether this change
        crossed the soft threshold or the limit (each reported once per period)."""
        entry = self.scopes.get(scope)
        p = entry[1].get(budget.period) if entry else None
        if p is None:
            return None
        period = p.frozen()
        used = float(period.tokens) if budget.unit == "tokens" else period.usd
        reached = 2 if used >= budget.amount else (
            1 if soft_pct is not None and used >= budget.amount * soft_pct / 100 else 0)
        before = self.crossings.get(scope)
        was = before[2] if before and before[:2] == (budget.period, period.start) else 0
        crossed = None
        if reached > was:
            crossed = "hard" if reached == 2 else "soft"
            self.crossings[scope] = (budget.period, period.start, reached)
        return Level(used, period, crossed)

    # -- saving -----------------------------------------------------------------------------

    def state(self) -> State:
        return State(seq=self.seq, zone=zone_name(self.zone),
                     scopes={k: (owner, {n: (p.start, p.end, p.tokens, p.nusd)
                                         for n, p in periods.items()})
                             for k, (owner, periods) in self.scopes.items()},
                     crossings=self.crossings,
                     recent=list(self.recent.items()), tombstones=list(self.tombstones),
                     sessions=[(d, u, k, a.tobytes()) for (d, u, k), a in self.sessions.items()])

    @classmethod
    def restore(cls, state: State, zone: tzinfo, *, recent: int = RECENT,
                sessions: int = SESSIONS) -> QuotaFold:
        fold = cls(zone, recent=recent, sessions=sessions)
        fold.seq = state.seq
        fold.scopes = {k: (owner, {n: _Period(*p) for n, p in periods.items()})
                       for k, (owner, periods) in state.scopes.items()}
        fold.crossings = dict(state.crossings)
        for rid, c in state.recent:
            fold._remember(rid, Contribution(fold._id(c[0]), fold._id(c[1]), *c[2:]))
        for digest, u, k, raw in state.sessions:
            amounts: array[float] = array("d")
            amounts.frombytes(raw)
            fold.sessions[(digest, fold._id(u), fold._id(k))] = amounts
        fold.tombstones = OrderedDict.fromkeys(state.tombstones)
        return fold
