"""Budgets at the edge: a request whose user or key has spent its budget for the period is
refused before it is published.

:class:`SpendView` is the edge's watched local copy of KV ``cs_quota`` (written by the quota
worker, ``workers/quota``): per user and per key, the spend of the current day, week, month
and total. :meth:`SpendView.check` is two dict lookups and a comparison per budget (O(1) in
users, keys and spend): a period whose end has passed counts as a new one with nothing spent,
so a budget resets at the boundary even before the worker has folded a request of the new
period. Both the user's and the key's budgets apply; when both are spent, the refusal names
the one that resets last (the stricter).

The refusal (:class:`BudgetExhausted`) is a 403 ``budget_exhausted`` with
``x-should-retry: false`` (400 for Codex, see ``edge.auth.for_client``): final for Claude
Code, Codex and Gemini CLI (``bench/real_clients/users.py``), with a message that says which
budget, how much was spent and when it resets, in the gateway's time zone.
"""

from __future__ import annotations

import logging
from datetime import tzinfo
from functools import lru_cache

import msgspec

from edge.auth import AccessDenied, Directory, Principal
from schemas.quota import Spend, format_amount, format_reset, resolve_zone, spent
from schemas.users import Budget

__all__ = ["BudgetExhausted", "SpendView"]

log = logging.getLogger("codeswitch.edge.quota")
_spend_decoder = msgspec.json.Decoder(Spend)


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


class SpendView:
    """The edge's copy of KV ``cs_quota``; ``apply`` is a ``bus.follow_bucket`` callback."""

    def __init__(self) -> None:
        self.users: dict[str, Spend] = {}
        self.keys: dict[str, Spend] = {}

    def apply(self, key: str, value: bytes | None, revision: int = 0) -> None:
        kind, _, ident = key.partition(".")
        table = self.users if kind == "user" else self.keys if kind == "key" else None
        if table is None:
            return
        if value is None:
            table.pop(ident, None)
            return
        try:
            table[ident] = _spend_decoder.decode(value)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.error("quota %s: invalid record dropped: %s", key, exc)
            table.pop(ident, None)

    def check(self, principal: Principal, directory: Directory, now: float) -> None:
        """Refuse (:class:`BudgetExhausted`) a request of a user or key whose budget for the
        period holding ``now`` is spent. Nothing to do without users."""
        uid = principal.user_id
        if uid is None:
            return
        user = directory.users.get(uid)
        kid = principal.key_id
        key = directory.keys.get(kid) if kid is not None else None
        worst: tuple[float, str, Budget, float, float | None, str] | None = None
        for budget, record, label in (
                (user.limits.budget if user else None, self.users.get(uid),
                 f"user {user.name if user else uid}"),
                (key.limits.budget if key else None, self.keys.get(kid or ""),
                 f"API key {key.name!r} ({key.prefix}…)" if key else "")):
            if budget is None:
                continue
            used, resets = spent(record, budget, now)
            if used < budget.amount:
                continue
            order = float("inf") if resets is None else resets
            if worst is None or order > worst[0]:
                worst = (order, label, budget, used, resets,
                         record.zone if record is not None else "")
        if worst is None:
            return
        _, label, budget, used, resets, zone = worst
        period = "in total" if budget.period == "total" else f"this {budget.period}"
        when = ("this budget is prepaid and does not reset" if budget.period == "total"
                else f"it resets at {format_reset(resets, _zone(zone))}")
        raise BudgetExhausted(
            f"budget exhausted: {label} has spent {format_amount(used, budget.unit)} of its "
            f"{format_amount(budget.amount, budget.unit)} {period} "
            f"(budget {budget.label()}); {when}; ask your gateway admin for more",
            user_id=uid, key_id=kid)
