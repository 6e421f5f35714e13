"""The quota fold (workers/quota/fold.py), pure: a request counts once whatever facts it has,
in the periods of its arrival; a deleted session's bill replaces its requests; the same facts
in the same order give the same spend (a replay); crossings are reported once per period."""

from __future__ import annotations

import datetime as dt
import random
from zoneinfo import ZoneInfo

import msgspec

from schemas.events import DeletedRequest, RequestCompleted, SessionDeleted, Usage
from schemas.users import Budget
from workers.quota.fold import QuotaFold, State

ZONE = ZoneInfo("Europe/Berlin")
NOON = dt.datetime(2026, 12, 3, 12, tzinfo=ZONE).timestamp()
MIDNIGHT = dt.datetime(2026, 12, 4, tzinfo=ZONE).timestamp()


def fact(rid: str, tokens: int, *, at: float = NOON, user: str = "u1", key: str = "k1",
         session: str | None = None, source: str = "router", estimated: bool = False,
         n: int = 0) -> RequestCompleted:
    return RequestCompleted(id=f"e-{rid}-{source}-{n}", ts=at + 1, request_id=rid,
                            dialect="anthropic", received_at=at, user_id=user, key_id=key,
                            usage=Usage(input_tokens=tokens - 10, output_tokens=5,
                                        cache_read_tokens=5),
                            session=session, source=source, usage_estimated=estimated)


def tokens(fold: QuotaFold, scope: str, period: str = "day") -> int:
    p = fold.record(scope).period(period)
    return p.tokens if p else 0


def test_counts_every_token_once_per_request() -> None:
    fold = QuotaFold(ZONE)
    assert fold.request(1, fact("r1", 100), 5) == {"user.u1", "key.k1"}
    fold.request(2, fact("r1", 100, n=1), 5)  # the same fact again (after the dedup window)
    fold.request(3, fact("r2", 50, key="k2"), 7)
    assert tokens(fold, "user.u1") == 150  # input + output + cache reads
    assert tokens(fold, "key.k1") == 100 and tokens(fold, "key.k2") == 50
    rec = fold.record("user.u1")
    assert rec.day is not None and rec.day.nusd == 12 and rec.seq == 3
    assert rec.total is not None and rec.total.end is None and rec.total.tokens == 150
    # the edge's view of a request (no usage) changes nothing
    no_usage = msgspec.structs.replace(fact("r3", 10), usage=None, source="edge")
    assert fold.request(4, no_usage, 0) == set()


def test_real_usage_replaces_an_estimate_in_either_order() -> None:
    for order in ((True, False), (False, True)):
        fold = QuotaFold(ZONE)
        for i, est in enumerate(order):
            f = fact("r1", 400 if est else 120, estimated=est,
                     source="recovered" if est else "router")
            fold.request(i + 1, f, 40 if est else 12)
        assert tokens(fold, "user.u1") == 120, order
        assert fold.record("key.k1").day.nusd == 12  # type: ignore[union-attr]


def test_periods_roll_over_and_a_late_fact_keeps_its_day() -> None:
    fold = QuotaFold(ZONE)
    fold.request(1, fact("a", 100, at=MIDNIGHT - 5), 0)
    fold.request(2, fact("b", 30, at=MIDNIGHT + 5), 0)  # a new day
    assert tokens(fold, "user.u1") == 30
    assert tokens(fold, "user.u1", "month") == 130 and tokens(fold, "user.u1", "total") == 130
    # a request that arrived before midnight and finished after it: the day before
    fold.request(3, fact("c", 70, at=MIDNIGHT - 1), 0)
    assert tokens(fold, "user.u1") == 30 and tokens(fold, "user.u1", "total") == 200
    day = fold.record("user.u1").day
    assert day is not None and (day.start, day.end) == (
        MIDNIGHT, dt.datetime(2026, 12, 5, tzinfo=ZONE).timestamp())


def test_session_delete_replaces_its_requests_with_the_bill() -> None:
    live = QuotaFold(ZONE)
    live.request(1, fact("s1", 100, session="sess-A"), 10)
    live.request(2, fact("s2", 200, session="sess-A"), 20)
    live.request(3, fact("o1", 50, session="sess-B"), 5)
    before = live.record("user.u1")
    bill = [DeletedRequest(ts=NOON + 1, received_at=NOON, dialect="anthropic", user_id="u1",
                           key_id="k1", usage=Usage(input_tokens=90, output_tokens=5,
                                                    cache_read_tokens=5)),
            DeletedRequest(ts=NOON + 1, received_at=NOON, dialect="anthropic", user_id="u1",
                           key_id="k1", usage=Usage(input_tokens=190, output_tokens=5,
                                                    cache_read_tokens=5))]
    import hashlib
    tomb = SessionDeleted(id="t1", ts=NOON + 100,
                          session_hash=hashlib.sha256(b"sess-A").hexdigest(), requests=bill)
    live.deleted(4, tomb, [10, 20])
    after = live.record("user.u1")
    assert (after.day, after.total) == (before.day, before.total)  # same spend, no ids left
    assert "s1" not in live.recent and "o1" in live.recent
    live.deleted(5, tomb, [10, 20])  # the same tombstone again: nothing
    assert live.record("user.u1").day == before.day
    # a replay after the delete: the erased facts are gone, only the bill is on the log
    replay = QuotaFold(ZONE)
    replay.request(3, fact("o1", 50, session="sess-B"), 5)
    replay.deleted(4, tomb, [10, 20])
    assert replay.record("user.u1").day == before.day
    # a replay that still finds a fact the erase missed does not count it twice
    missed = QuotaFold(ZONE)
    missed.request(1, fact("s1", 100, session="sess-A"), 10)
    missed.request(3, fact("o1", 50, session="sess-B"), 5)
    missed.deleted(4, tomb, [10, 20])
    assert missed.record("user.u1").day == before.day


def test_replay_gives_the_same_state_and_restore_continues() -> None:
    rng = random.Random(7)
    facts = []
    for i in range(3000):
        rid = f"r{rng.randrange(2000)}"  # duplicates, estimates, several users and keys
        at = NOON + rng.uniform(-3 * 86400, 3 * 86400)
        facts.append(fact(rid, rng.randrange(1, 500), at=at, user=f"u{rng.randrange(3)}",
                          key=f"k{rng.randrange(5)}", estimated=rng.random() < 0.1,
                          session=f"s{rng.randrange(50)}", n=i))
    a, b = QuotaFold(ZONE, recent=500), QuotaFold(ZONE, recent=500)
    for seq, f in enumerate(facts, 1):
        a.request(seq, f, f.usage.total_tokens if f.usage else 0)
    for seq, f in enumerate(facts, 1):
        b.request(seq, f, f.usage.total_tokens if f.usage else 0)
    assert {s: a.record(s) for s in a.scopes} == {s: b.record(s) for s in b.scopes}
    # saved half way and restored: the same as never stopping
    c = QuotaFold(ZONE, recent=500)
    for seq, f in enumerate(facts[:1500], 1):
        c.request(seq, f, f.usage.total_tokens if f.usage else 0)
    raw = msgspec.msgpack.encode(c.state())
    d = QuotaFold.restore(msgspec.msgpack.decode(raw, type=State), ZONE, recent=500)
    for seq, f in enumerate(facts[1500:], 1501):
        d.request(seq, f, f.usage.total_tokens if f.usage else 0)
    assert {s: a.record(s) for s in a.scopes} == {s: d.record(s) for s in d.scopes}
    assert len(d.recent) == 500


def test_crossings_once_per_period() -> None:
    fold = QuotaFold(ZONE)
    budget = Budget(amount=1000, unit="tokens", period="day")
    seen = []
    for i in range(12):
        at = NOON if i < 8 else MIDNIGHT + 60  # four requests on the next day
        fold.request(i + 1, fact(f"r{i}", 200, at=at), 0)
        level = fold.level("user.u1", budget, 50)
        assert level is not None
        seen.append((level.used, level.crossed))
    assert seen[:8] == [(200, None), (400, None), (600, "soft"), (800, None), (1000, "hard"),
                        (1200, None), (1400, None), (1600, None)]
    assert seen[8:] == [(200, None), (400, None), (600, "soft"), (800, None)]
    # straight over the limit: one "hard"
    jump = QuotaFold(ZONE)
    jump.request(1, fact("big", 5000), 0)
    level = jump.level("key.k1", budget, 80)
    assert level is not None and level.crossed == "hard"
    usd = jump.level("key.k1", Budget(amount=1, unit="usd", period="total"), None)
    assert usd is not None and usd.used == 0.0 and usd.crossed is None


def test_levels_are_published_at_most_once_a_second_per_scope(tmp_path: object) -> None:
    from pathlib import Path

    from schemas.events import QuotaUsed
    from workers.quota import service

    class Facts:
        def __init__(self) -> None:
            self.sent: list[QuotaUsed] = []

        def emit(self, subject: str, ev: QuotaUsed) -> None:
            self.sent.append(ev)

    q = service.QuotaService("nats://unused", Path(str(tmp_path)))
    facts = Facts()
    q.facts = facts  # type: ignore[assignment]

    def level(n: int, used: float, crossed: str | None = None, key: str | None = None
              ) -> QuotaUsed:
        return QuotaUsed(id=f"q{n}", ts=float(n), user="u1", used=used, limit=10.0,
                         crossed=crossed, key=key)

    q._publish([level(1, 1.0), level(2, 1.0, key="k1")])
    q._publish([level(3, 2.0)])  # within the second: waits
    q._publish([level(4, 6.0, crossed="soft")])  # a crossing goes at once
    q._publish([level(5, 7.0)])
    assert [e.id for e in facts.sent] == ["q1", "q2", "q4"]
    q._last_fact = {k: v - service.FACT_EVERY_S for k, v in q._last_fact.items()}
    q._publish([])  # the second has passed: the latest level waiting goes
    assert [e.id for e in facts.sent] == ["q1", "q2", "q4", "q5"] and not q._due
    q._publish([level(6, 8.0)])
    q._publish([], flush=True)  # on stop
    assert facts.sent[-1].id == "q6"


def test_a_session_deleted_long_after_its_requests_still_nets_out() -> None:
    """The per-request memory is short (de-duplication); what a session counted is kept per
    session, so a delete after many newer requests takes back exactly that."""
    import hashlib

    fold = QuotaFold(ZONE, recent=10)
    fold.request(1, fact("old1", 100, session="sess-old"), 10)
    fold.request(2, fact("old2", 50, session="sess-old"), 5)
    for i in range(50):  # the session's requests leave the per-request memory
        fold.request(3 + i, fact(f"n{i}", 10, session=f"other-{i}"), 1)
    assert "old1" not in fold.recent
    before = fold.record("user.u1")
    bill = [DeletedRequest(ts=NOON + 1, received_at=NOON, dialect="anthropic", user_id="u1",
                           key_id="k1", usage=Usage(input_tokens=t - 10, output_tokens=5,
                                                    cache_read_tokens=5)) for t in (100, 50)]
    tomb = SessionDeleted(id="t-old", ts=NOON + 500,
                          session_hash=hashlib.sha256(b"sess-old").hexdigest(), requests=bill)
    fold.deleted(100, tomb, [10, 5])
    assert fold.record("user.u1").day == before.day
    assert fold.record("key.k1").total == before.total
    # a session deleted after its day ended: the day is not touched, the totals net out
    late = QuotaFold(ZONE)
    late.request(1, fact("d1", 100, at=NOON, session="sess-y"), 10)
    late.request(2, fact("d2", 30, at=MIDNIGHT + 10, session="other"), 3)
    day_before, total_before = late.record("user.u1").day, late.record("user.u1").total
    late.deleted(3, SessionDeleted(
        id="t-y", ts=MIDNIGHT + 20, session_hash=hashlib.sha256(b"sess-y").hexdigest(),
        requests=[bill[0]]), [10])
    assert late.record("user.u1").day == day_before  # 30: today's, untouched
    assert late.record("user.u1").total == total_before
