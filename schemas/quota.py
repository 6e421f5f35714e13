"""Spend per user and per key, per budget period: the record the quota worker keeps in KV
``cs_quota`` for the edges, and the calendar arithmetic of the periods.

Periods are calendar periods in the gateway's time zone (``[gateway] timezone``, an IANA name
such as ``Europe/Berlin``; empty = the machine's local zone): ``day`` from local midnight,
``week`` from Monday 00:00, ``month`` from the 1st 00:00, and ``total`` (prepaid), which never
resets. A request counts in the periods its arrival at the edge (``received_at``) falls in.
Boundaries are computed on local dates with ``zoneinfo``, so a day is 23 or 25 hours long
across a DST change, and a midnight that does not exist (a zone that moves its clocks at
00:00) starts the day at the moment of the change.

Spent tokens are every token of the request: input, cache reads, cache writes and output
(``Usage.total_tokens``); spent USD is the ledger's price of that usage, in integer nano-USD
(summed exactly). Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from schemas.users import Budget

__all__ = [
    "PERIODS",
    "PeriodSpend",
    "Spend",
    "format_amount",
    "format_reset",
    "key_scope",
    "period_bounds",
    "resolve_zone",
    "spent",
    "user_scope",
    "zone_name",
]

Period = Literal["day", "week", "month", "total"]
PERIODS: tuple[Period, ...] = ("day", "week", "month", "total")
NANO = 1_000_000_000  # nano-USD per USD


class PeriodSpend(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """What one scope spent in one period: [start, end, tokens, nano-USD]. ``end`` is None for
    ``total`` (it never resets); a period whose end has passed is spent 0."""

    start: float
    end: float | None
    tokens: int = 0
    nusd: int = 0

    @property
    def usd(self) -> float:
        return self.nusd / NANO


class Spend(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """KV ``cs_quota``, key ``user.<id>`` or ``key.<id>``: the scope's current periods.
    ``seq``: the last event-log sequence folded into it; ``zone``: the time zone the period
    boundaries were computed in; ``ids``: see below."""

    scope: Literal["user", "key"]
    id: str
    user: str  # the owner (the user itself for a user scope)
    day: PeriodSpend | None = None
    week: PeriodSpend | None = None
    month: PeriodSpend | None = None
    total: PeriodSpend | None = None
    seq: int = 0
    zone: str = ""
    # the requests folded into it in the last 5 s (at most 512): an edge that counted them
    # early from their facts drops those counts (edge/quota.py)
    ids: list[str] = []

    def period(self, period: str) -> PeriodSpend | None:
        value: PeriodSpend | None = getattr(self, period, None)
        return value


def user_scope(user_id: str) -> str:
    return f"user.{user_id}"


def key_scope(key_id: str) -> str:
    return f"key.{key_id}"


def resolve_zone(name: str | None) -> ZoneInfo:
    """The zone named (an IANA name), or the machine's local zone for an empty name.
    ValueError for a name zoneinfo does not know."""
    if not name:
        from tzlocal import get_localzone

        local = get_localzone()
        if isinstance(local, ZoneInfo):
            return local
        return ZoneInfo(str(local))
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Europe/Berlin "
                         "or UTC)") from exc


def zone_name(zone: dt.tzinfo) -> str:
    return getattr(zone, "key", None) or str(zone)


def _midnight(day: dt.date, zone: dt.tzinfo) -> float:
    """Unix time of local 00:00 on ``day`` (a 00:00 skipped by a DST change: the change)."""
    return dt.datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


def period_bounds(period: str, ts: float, zone: dt.tzinfo) -> tuple[float, float | None]:
    """(start, end) of the ``period`` holding unix time ``ts`` in ``zone``; end None for
    ``total`` (start 0)."""
    if period == "total":
        return 0.0, None
    local = dt.datetime.fromtimestamp(ts, zone).date()
    if period == "day":
        first = local
        nxt = local + dt.timedelta(days=1)
    elif period == "week":
        first = local - dt.timedelta(days=local.weekday())
        nxt = first + dt.timedelta(days=7)
    elif period == "month":
        first = local.replace(day=1)
        nxt = (first + dt.timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown period {period!r}")
    # fold=0: a local midnight that happens twice (clocks set back at 00:00) starts the day
    # at its first occurrence
    return _midnight(first, zone), _midnight(nxt, zone)


def spent(record: Spend | None, budget: Budget, now: float) -> tuple[float, float | None]:
    """(spent in the budget's unit, when it resets) for the period holding ``now``: a record
    whose period ended is a new period with nothing spent. Resets None: never (total), or not
    known from the record (nothing spent in the period yet)."""
    p = record.period(budget.period) if record is not None else None
    if p is None or (p.end is not None and now >= p.end) or now < p.start:
        return 0.0, None
    used = float(p.tokens) if budget.unit == "tokens" else p.usd
    return used, p.end


def format_amount(value: float, unit: str) -> str:
    if unit == "tokens":
        return f"{int(value):,} tokens"
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def format_reset(ts: float | None, zone: dt.tzinfo) -> str:
    """``2026-12-04 00:00 CET (Europe/Berlin)``; ``never`` for None."""
    if ts is None or math.isinf(ts):
        return "never"
    local = dt.datetime.fromtimestamp(ts, zone)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()} ({zone_name(zone)})"
