"""Budgets at the edge: a request whose user or key has spent its budget for the period is
refused before it is published.

:class:`SpendView` is the edge's watched local copy of KV ``cs_quota`` (written by the quota
worker, ``workers/quota``): per user and per key, the spend of the current day, week, month
and total. :meth:`SpendView.check` is two dict lookups and a comparison per budget (O(1) in
users, keys and spend): a period whose end has passed counts as a new one with nothing spent,
so a budget resets at the boundary even before the worker has folded a request of the new
period. Both the user's and the key's budgets apply; when both are spent, the refusal names
the one that resets last (the stricter).

**Early counts.** The quota worker folds a fact within tens of milliseconds when it is idle,
but it shares the ``workers`` process (nice 10, one GIL) with the ledger and the alerts, and
lags under load. So every edge also counts each request's spend itself from the request's own
fact (``RequestCompleted``, which every edge reads for TPM anyway, ``edge/done.py``), for users
and keys with a budget: :meth:`SpendView.observe` keeps it per scope and request id ("pending"),
on top of the worker's record. The worker's record lists the requests folded into it in
the last 5 s (``Spend.ids``; not only since its previous record: a lagging watch may miss a
record the next one replaced): those pending counts are dropped as a record that holds
them arrives, and a fact that comes after the record that listed it is not counted. The
record stays the truth: a pending count is dropped after ``PENDING_S`` whatever happens (a
fact the worker counted differently, a record lost), and a fact this edge missed is in the
worker's next record. The fold's rule for a request's several facts applies (real usage
replaces an estimate, a larger one a smaller one).

The refusal (:class:`BudgetExhausted`) is a 403 ``budget_exhausted`` with
``x-should-retry: false`` (400 for Codex, see ``edge.auth.for_client``): final for Claude
Code, Codex and Gemini CLI (``bench/real_clients/users.py``), with a message that says which
budget, how much was spent and when it resets, in the gateway's time zone.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from datetime import tzinfo
from functools import lru_cache

import msgspec

from edge.auth import AccessDenied, Directory, Principal
from edge.done import Done
from runtime.prices import nano_usd
from schemas.prices import PriceBook
from schemas.quota import (
    NANO,
    Spend,
    format_amount,
    format_reset,
    period_bounds,
    resolve_zone,
)
from schemas.users import Budget

__all__ = ["PENDING_S", "BudgetExhausted", "SpendView"]

log = logging.getLogger("codeswitch.edge.quota")
_spend_decoder = msgspec.json.Decoder(Spend)
# how long an early count waits for the worker's record that holds it (then the record alone
# is the truth again)
PENDING_S = 5.0
# how long the requests a record listed are remembered (a fact re-published after a failed
# publish comes again seconds later: it must not be counted early once more)
FOLDED_S = 60.0


class BudgetExhausted(AccessDenied):
    """A user's or key's budget for the period is spent: 403 ``budget_exhausted``, final."""

    def __init__(self, message: str, *, user_id: str | None, key_id: str | None) -> None:
        super().__init__(message, "budget_exhausted", user_id=user_id, key_id=key_id)


@lru_cache(maxsize=16)
def _zone(name: str) -> tzinfo:
    try:
        return resolve_zone(name)
    except ValueError:
        return resolve_zone(None)


# a request's spend as this edge counted it from its fact, until the worker's record:
# (received_at, tokens, nano-USD, real usage (not an estimate), monotonic time seen)
_Early = tuple[float, int, int, bool, float]


def _count(early: dict[str, dict[str, _Early]], ident: str, rid: str, at: float, tokens: int,
           nusd: int, real: bool, now: float) -> None:
    pending = early.get(ident)
    if pending is None:
        early[ident] = {rid: (at, tokens, nusd, real, now)}
        return
    old = pending.get(rid)
    # the fold's rule: real usage replaces an estimate, a larger one a smaller one
    if old is None or (real and not old[3]) or (real == old[3] and tokens > old[1]):
        pending[rid] = (at, tokens, nusd, real, now if old is None else old[4])


class SpendView:
    """The edge's copy of KV ``cs_quota`` (``apply`` is a ``bus.follow_bucket`` callback) and
    its early counts of the requests the worker has not folded yet (``observe``)."""

    def __init__(self, zone: str = "") -> None:
        self.users: dict[str, Spend] = {}
        self.keys: dict[str, Spend] = {}
        # scope id -> request id -> its early count (user ids and key ids apart)
        self.early_users: dict[str, dict[str, _Early]] = {}
        self.early_keys: dict[str, dict[str, _Early]] = {}
        self._early_order: deque[tuple[float, str | None, str | None, str]] = deque()
        # request id -> when a record listed it (a fact that comes later is not counted)
        self._folded: dict[str, float] = {}
        self.zone = zone  # the zone of the last record ([gateway] timezone)
        self._bounds: dict[str, tuple[str, float, float | None]] = {}

    def apply(self, key: str, value: bytes | None, revision: int = 0) -> None:
        kind, _, ident = key.partition(".")
        if kind == "user":
            table, early = self.users, self.early_users
        elif kind == "key":
            table, early = self.keys, self.early_keys
        else:
            return
        if value is None:
            table.pop(ident, None)
            return
        try:
            record = table[ident] = _spend_decoder.decode(value)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.error("quota %s: invalid record dropped: %s", key, exc)
            table.pop(ident, None)
            return
        if record.zone:
            self.zone = record.zone
        if record.ids:
            now = time.monotonic()
            pending = early.get(ident)
            folded = self._folded
            for rid in record.ids:
                folded[rid] = now
                if pending:
                    pending.pop(rid, None)
            if pending is not None and not pending:
                del early[ident]
            if len(folded) > 1024 and next(iter(folded.values())) < now - FOLDED_S - 1.0:
                self._forget(now)

    def observe(self, done: Done, directory: Directory, book: PriceBook | None) -> None:
        """A request's fact: count its spend early for its user's and key's budgets."""
        usage = done.usage
        if usage is None or done.request_id in self._folded:
            return
        if done.ts and done.ts < time.time() - PENDING_S:
            return  # an old fact (re-published, recovered): the worker's record has it
        uid, kid = done.user_id, done.key_id
        user = directory.users.get(uid) if uid is not None else None
        key = directory.keys.get(kid) if kid is not None else None
        ub = user.limits.budget if user is not None else None
        kb = key.limits.budget if key is not None else None
        if ub is None and kb is None:
            return
        tokens = usage.total_tokens
        nusd = 0
        if book is not None and ((ub is not None and ub.unit == "usd")
                                 or (kb is not None and kb.unit == "usd")):
            nusd = nano_usd(book, done.provider, done.upstream_model or done.model, usage)
        if not tokens and not nusd:
            return
        now = time.monotonic()
        real = not done.usage_estimated
        at = done.received_at or done.ts
        rid = done.request_id
        if ub is not None and uid is not None:
            _count(self.early_users, uid, rid, at, tokens, nusd, real, now)
        else:
            uid = None
        if kb is not None and kid is not None:
            _count(self.early_keys, kid, rid, at, tokens, nusd, real, now)
        else:
            kid = None
        order = self._early_order
        order.append((now, uid, kid, rid))
        if order[0][0] < now - PENDING_S - 1.0:  # once a second or so
            self._forget(now)

    def _forget(self, now: float) -> None:
        """Early counts older than PENDING_S go (the record is the truth), and so does the
        memory of the requests records listed."""
        cutoff = now - PENDING_S
        order = self._early_order
        while order and order[0][0] < cutoff:
            _, uid, kid, rid = order.popleft()
            for ident, early in ((uid, self.early_users), (kid, self.early_keys)):
                pending = early.get(ident) if ident is not None else None
                if pending is not None:
                    e = pending.get(rid)
                    if e is not None and e[4] < cutoff:
                        del pending[rid]
                        if not pending:
                            del early[ident]  # type: ignore[arg-type]
        folded = self._folded
        kept = now - FOLDED_S
        while folded:
            rid = next(iter(folded))
            if folded[rid] >= kept and len(folded) <= 200_000:
                break
            del folded[rid]

    def spent(self, record: Spend | None, early: dict[str, _Early] | None, budget: Budget,
              now: float) -> tuple[float, float | None]:
        """(spent in the budget's unit, when it resets) in the period holding ``now``: the
        record's (a period that ended is a new one with nothing spent) plus the early counts
        of that period. Resets None: never (total), or not known (nothing spent)."""
        p = getattr(record, budget.period, None) if record is not None else None
        tokens = budget.unit == "tokens"
        if p is not None and p.start <= now and (p.end is None or now < p.end):
            start, end = p.start, p.end
            used = float(p.tokens) if tokens else p.nusd / NANO
            if not early:
                return used, end
        elif not early:
            return 0.0, None
        else:
            start, end = self._period(budget.period, now,
                                      record.zone if record is not None else self.zone)
            used = 0.0
        if early:
            cutoff = time.monotonic() - PENDING_S
            for at, t, nusd, _, seen in early.values():
                if seen >= cutoff and start <= at and (end is None or at < end):
                    used += t if tokens else nusd / NANO
        return used, end

    def _period(self, period: str, now: float, zone: str) -> tuple[float, float | None]:
        """The bounds of the period holding ``now`` (kept until it ends)."""
        cached = self._bounds.get(period)
        if cached is not None and cached[0] == zone and cached[1] <= now and (
                cached[2] is None or now < cached[2]):
            return cached[1], cached[2]
        start, end = period_bounds(period, now, _zone(zone))
        self._bounds[period] = (zone, start, end)
        return start, end

    def check(self, principal: Principal, directory: Directory, now: float) -> None:
        """Refuse (:class:`BudgetExhausted`) a request of a user or key whose budget for the
        period holding ``now`` is spent. Nothing to do without users."""
        uid = principal.user_id
        if uid is None:
            return
        user = directory.users.get(uid)
        kid = principal.key_id
        key = directory.keys.get(kid) if kid is not None else None
        ub = user.limits.budget if user is not None else None
        kb = key.limits.budget if key is not None else None
        if ub is None and kb is None:
            return
        worst: tuple[float, str, Budget, float, float | None, str] | None = None
        if ub is not None:
            record = self.users.get(uid)
            used, resets = self.spent(record, self.early_users.get(uid), ub, now)
            if used >= ub.amount:
                worst = (float("inf") if resets is None else resets, "user", ub, used, resets,
                         record.zone if record is not None else self.zone)
        if kb is not None and kid is not None:
            record = self.keys.get(kid)
            used, resets = self.spent(record, self.early_keys.get(kid), kb, now)
            if used >= kb.amount:
                order = float("inf") if resets is None else resets
                if worst is None or order > worst[0]:
                    worst = (order, "key", kb, used, resets,
                             record.zone if record is not None else self.zone)
        if worst is None:
            return
        _, which, budget, used, resets, zone = worst
        if which == "user":
            label = f"user {user.name if user else uid}"
        else:
            label = f"API key {key.name!r} ({key.prefix}…)" if key else ""
        period = "in total" if budget.period == "total" else f"this {budget.period}"
        when = ("this budget is prepaid and does not reset" if budget.period == "total"
                else f"it resets at {format_reset(resets, _zone(zone))}")
        raise BudgetExhausted(
            f"budget exhausted: {label} has spent {format_amount(used, budget.unit)} of its "
            f"{format_amount(budget.amount, budget.unit)} {period} "
            f"(budget {budget.label()}); {when}; ask your gateway admin for more",
            user_id=uid, key_id=kid)
