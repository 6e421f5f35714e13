"""Budget periods: calendar boundaries in the configured zone (schemas/quota.py), pure."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from schemas.quota import PeriodSpend, Spend, format_reset, period_bounds, resolve_zone, spent
from schemas.users import Budget

BERLIN = ZoneInfo("Europe/Berlin")


def ts(zone: ZoneInfo, *args: int) -> float:
    return dt.datetime(*args, tzinfo=zone).timestamp()


def local(t: float, zone: ZoneInfo = BERLIN) -> str:
    return dt.datetime.fromtimestamp(t, zone).strftime("%Y-%m-%d %H:%M %Z")


def test_day_is_local_midnight_to_midnight() -> None:
    start, end = period_bounds("day", ts(BERLIN, 2026, 12, 3, 17, 30), BERLIN)
    assert (local(start), local(end)) == ("2026-12-03 00:00 CET", "2026-12-04 00:00 CET")
    # one second before midnight is the old day, midnight itself the new one
    assert period_bounds("day", end - 1, BERLIN) == (start, end)
    assert period_bounds("day", end, BERLIN)[0] == end
    # the same instant in UTC is another day window
    utc = ZoneInfo("UTC")
    s2, e2 = period_bounds("day", ts(BERLIN, 2026, 12, 3, 0, 30), utc)
    assert local(s2, utc) == "2026-12-02 00:00 UTC" and e2 - s2 == 86400


def test_dst_days_are_23_and_25_hours() -> None:
    spring = period_bounds("day", ts(BERLIN, 2026, 3, 29, 12), BERLIN)
    autumn = period_bounds("day", ts(BERLIN, 2026, 10, 25, 12), BERLIN)
    assert spring[1] - spring[0] == 23 * 3600
    assert autumn[1] - autumn[0] == 25 * 3600
    assert local(spring[0]) == "2026-03-29 00:00 CET"
    assert local(spring[1]) == "2026-03-30 00:00 CEST"
    # the hour that happens twice (02:00-03:00 on 25 October) is in that day, both times
    twice = ts(BERLIN, 2026, 10, 25, 2, 30)
    assert period_bounds("day", twice, BERLIN) == autumn
    assert period_bounds("day", twice + 3600, BERLIN) == autumn
    # a week across the spring change is 7 days minus an hour
    ws, we = period_bounds("week", ts(BERLIN, 2026, 3, 27, 9), BERLIN)
    assert we - ws == 7 * 86400 - 3600


def test_midnight_that_does_not_exist() -> None:
    # Santiago moved its clocks from 00:00 to 01:00 on 2026-09-06: the day starts at the change
    chile = ZoneInfo("America/Santiago")
    start, end = period_bounds("day", ts(chile, 2026, 9, 6, 12), chile)
    assert dt.datetime.fromtimestamp(start, chile).strftime("%H:%M") == "01:00"
    assert end - start == 23 * 3600
    before = period_bounds("day", start - 1, chile)
    assert before[1] == start


def test_week_starts_monday() -> None:
    # Thursday 3 Dec 2026 -> Monday 30 Nov .. Monday 7 Dec
    start, end = period_bounds("week", ts(BERLIN, 2026, 12, 3, 10), BERLIN)
    assert (local(start), local(end)) == ("2026-11-30 00:00 CET", "2026-12-07 00:00 CET")
    # Sunday 23:59 is still that week; Monday 00:00 the next
    assert period_bounds("week", ts(BERLIN, 2026, 12, 6, 23, 59), BERLIN)[0] == start
    assert period_bounds("week", ts(BERLIN, 2026, 12, 7, 0, 0), BERLIN)[0] == end
    # a week across the new year
    s2, e2 = period_bounds("week", ts(BERLIN, 2027, 1, 1, 12), BERLIN)
    assert (local(s2), local(e2)) == ("2026-12-28 00:00 CET", "2027-01-04 00:00 CET")


def test_month_boundaries() -> None:
    for (y, m, d), first, nxt in (
            ((2026, 12, 31), "2026-12-01", "2027-01-01"),
            ((2027, 2, 28), "2027-02-01", "2027-03-01"),
            ((2028, 2, 29), "2028-02-01", "2028-03-01"),  # leap year
            ((2026, 1, 31), "2026-01-01", "2026-02-01"),
            ((2026, 3, 31), "2026-03-01", "2026-04-01")):  # DST inside the month
        start, end = period_bounds("month", ts(BERLIN, y, m, d, 23, 59), BERLIN)
        assert local(start).startswith(first + " 00:00"), (y, m, d)
        assert local(end).startswith(nxt + " 00:00"), (y, m, d)
    s, e = period_bounds("month", ts(BERLIN, 2026, 3, 15), BERLIN)
    assert e - s == 31 * 86400 - 3600


def test_total_never_resets() -> None:
    assert period_bounds("total", 1e9, BERLIN) == (0.0, None)
    record = Spend(scope="user", id="u", user="u",
                   total=PeriodSpend(start=0, end=None, tokens=500, nusd=2_000_000_000))
    assert spent(record, Budget(amount=400, unit="tokens", period="total"), 4e9) == (500.0,
                                                                                      None)
    assert spent(record, Budget(amount=1, unit="usd", period="total"), 4e9) == (2.0, None)
    assert format_reset(None, BERLIN) == "never"


def test_spent_is_zero_once_the_period_ended() -> None:
    start, end = period_bounds("day", ts(BERLIN, 2026, 12, 3, 12), BERLIN)
    assert end is not None
    record = Spend(scope="key", id="k", user="u",
                   day=PeriodSpend(start=start, end=end, tokens=900, nusd=0))
    budget = Budget(amount=800, unit="tokens", period="day")
    assert spent(record, budget, end - 0.001) == (900.0, end)
    assert spent(record, budget, end) == (0.0, None)  # a new day: nothing spent yet
    assert spent(None, budget, end) == (0.0, None)
    assert spent(record, Budget(amount=1, period="week"), end - 1) == (0.0, None)
    assert format_reset(end, BERLIN) == "2026-12-04 00:00 CET (Europe/Berlin)"


def test_zone_names() -> None:
    assert resolve_zone("Europe/Berlin") == BERLIN
    assert resolve_zone("") is not None  # the machine's zone
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        resolve_zone("Mars/Olympus")
