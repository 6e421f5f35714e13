"""The heatmap's kept days (queries.heatmap with the store's ``heat_cache``): after every kind of
write the cached answer equals a fresh one (a request today, a late fact of an older day, a fact
that folds an older request into today, a partial first day), and an unchanged past is not
grouped again."""

from __future__ import annotations

from pathlib import Path

from schemas.events import RequestCompleted, Usage, encode_event
from schemas.prices import PriceBook
from workers.ledger.projection import Rows, project
from workers.ledger.queries import Filter, heatmap
from workers.ledger.store import Store

DAY = 86400.0
NOW = 1_796_000_000.0 - (1_796_000_000.0 % DAY) + 15 * 3600  # 15:00 UTC on some day
TODAY = NOW - 15 * 3600
BOOK = PriceBook()


def fact(rid: str, ts: float, tokens: int = 10, status: int = 200) -> RequestCompleted:
    return RequestCompleted(id=f"e-{rid}-{ts}", ts=ts, request_id=rid, dialect="anthropic",
                            model="claude-sonnet-4-5", provider="main",
                            upstream_model="claude-sonnet-4-5", status=status,
                            usage=Usage(input_tokens=tokens, output_tokens=tokens))


class Ledger:
    def __init__(self, path: Path) -> None:
        self.store = Store(path)
        self.seq = 0

    def apply(self, *facts: RequestCompleted) -> None:
        rows = Rows()
        for ev in facts:
            self.seq += 1
            rows.add(project(self.seq, "llm.response.anthropic.main", encode_event(ev), BOOK))
        self.store.apply(rows)

    def both(self, f: Filter) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        con = self.store.con
        return (heatmap(con, f, ["cost"], cache=self.store.heat_cache, now=NOW),
                heatmap(con, f, ["cost"], now=NOW))


def test_kept_days_always_equal_a_fresh_answer(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.duckdb")
    year = Filter(since=NOW - 365 * DAY, tz_offset_s=0)
    partial = Filter(since=TODAY - 2.5 * DAY, tz_offset_s=0)  # starts at noon, 3 days ago
    led.apply(*(fact(f"r{d}-{i}", TODAY - d * DAY + 3600 * (i + 1))
                for d in range(5) for i in range(3)))
    for f in (year, partial):
        cached, fresh = led.both(f)
        assert cached == fresh and [r["requests"] for r in fresh][-1] == 3
    assert len(led.store.heat_cache) == 2
    kept = dict(led.store.heat_cache)

    led.apply(fact("today-1", TODAY + 7200))  # today only: the kept days stay
    for f in (year, partial):
        cached, fresh = led.both(f)
        assert cached == fresh
    assert led.store.heat_cache == kept
    assert led.both(year)[0][-1]["requests"] == 4

    led.apply(fact("late", TODAY - 2 * DAY + 60))  # a late fact of an older day
    assert not led.store.heat_cache
    for f in (year, partial):
        cached, fresh = led.both(f)
        assert cached == fresh
    assert [r["requests"] for r in led.both(year)[0]] == [3, 3, 4, 3, 4]

    # a second fact of yesterday's request, written today: the fold moves its row to today
    led.apply(fact("r1-0", TODAY + 60, tokens=500))
    for f in (year, partial):
        cached, fresh = led.both(f)
        assert cached == fresh
    assert [r["requests"] for r in led.both(year)[0]] == [3, 3, 4, 2, 5]
    led.store.close()


def test_a_window_that_ends_is_not_cached(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.duckdb")
    led.apply(fact("a", TODAY - DAY), fact("b", TODAY + 60))
    f = Filter(since=TODAY - 3 * DAY, until=TODAY, tz_offset_s=0)
    cached, fresh = led.both(f)
    assert cached == fresh and [r["requests"] for r in cached] == [1]
    assert not led.store.heat_cache
    led.store.close()


def test_a_window_starting_just_after_midnight_counts_nothing_before_it(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.duckdb")
    led.apply(fact("before", TODAY - 2 * DAY + 0.2), fact("after", TODAY - 2 * DAY + 0.7),
              fact("now", TODAY + 60))
    f = Filter(since=TODAY - 2 * DAY + 0.5, tz_offset_s=0)
    cached, fresh = led.both(f)
    assert cached == fresh and [r["requests"] for r in cached] == [1, 1]
    led.store.close()
