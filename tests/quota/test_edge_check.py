"""edge/quota.py alone: the check a request passes at the edge, from the records as the KV
watch hands them over (no servers)."""

from __future__ import annotations

import msgspec
import pytest

from edge.auth import Directory, Principal
from edge.done import Done
from edge.quota import BudgetExhausted, SpendView
from schemas.quota import PeriodSpend, Spend
from schemas.users import Budget, Key, Limits, User

enc = msgspec.json.Encoder()
DAY_END = 1_800_000_000.0


def world(user_budget: Budget | None, key_budget: Budget | None) -> tuple[Directory, Principal]:
    d = Directory()
    d.apply_user("u1", enc.encode(User(id="u1", name="ann", limits=Limits(budget=user_budget))))
    d.apply_key("k1", enc.encode(Key(id="k1", name="cli", user="u1", hash="a" * 64,
                                     prefix="cs-AbCd", limits=Limits(budget=key_budget))))
    return d, Principal("a" * 64, "u1", "k1")


def spend(view: SpendView, scope: str, tokens: int, nusd: int = 0) -> None:
    kind, _, ident = scope.partition(".")
    view.apply(scope, enc.encode(Spend(
        scope="user" if kind == "user" else "key", id=ident, user="u1", zone="Europe/Berlin",
        day=PeriodSpend(start=DAY_END - 86400, end=DAY_END, tokens=tokens, nusd=nusd),
        total=PeriodSpend(start=0, end=None, tokens=tokens, nusd=nusd))))


def test_admits_until_spent_and_names_the_stricter() -> None:
    d, who = world(Budget(amount=100, unit="tokens", period="day"),
                   Budget(amount=2, unit="usd", period="total"))
    view = SpendView()
    view.check(who, d, DAY_END - 10)  # nothing spent yet
    spend(view, "user.u1", 99)
    view.check(who, d, DAY_END - 10)
    spend(view, "user.u1", 100)
    with pytest.raises(BudgetExhausted) as caught:
        view.check(who, d, DAY_END - 10)
    assert caught.value.status == 403 and caught.value.code == "budget_exhausted"
    assert caught.value.retryable is False
    assert ("user ann has spent 100 tokens of its 100 tokens this day (budget 100tokens/day)"
            "; it resets at 2027-01-15 09:00 CET (Europe/Berlin)") in caught.value.message
    view.check(who, d, DAY_END)  # the day ended: a new one, nothing spent
    # the key's prepaid total spent too: it never resets, so it is the stricter
    spend(view, "key.k1", 100, nusd=2_500_000_000)
    with pytest.raises(BudgetExhausted) as caught:
        view.check(who, d, DAY_END - 10)
    assert ("API key 'cli' (cs-AbCd…) has spent $2.50 of its $2.00 in total (budget "
            "2usd/total); this budget is prepaid and does not reset") in caught.value.message
    view.apply("key.k1", None)  # deleted record: nothing spent
    view.apply("key.k1", b"{not json")  # a record that does not decode is dropped
    assert "k1" not in view.keys


def test_no_users_no_check() -> None:
    view = SpendView()
    view.check(Principal(None), Directory(), 0.0)
    d, who = world(None, None)
    spend(view, "user.u1", 10**9)
    view.check(who, d, DAY_END - 1)  # no budget: never refused


def _fact(rid: str, tokens: int, at: float = DAY_END - 100, *, estimated: bool = False,
          user: str = "u1", key: str = "k1") -> Done:
    from schemas.events import Usage

    return Done(request_id=rid, user_id=user, key_id=key, received_at=at, ts=at + 1,
                usage=Usage(input_tokens=tokens), usage_estimated=estimated,
                provider="anthropic", model="claude-sonnet-4-5")


def _record(view: SpendView, scope: str, tokens: int, ids: list[str]) -> None:
    kind, _, ident = scope.partition(".")
    view.apply(scope, enc.encode(Spend(
        scope="user" if kind == "user" else "key", id=ident, user="u1", zone="Europe/Berlin",
        day=PeriodSpend(start=DAY_END - 86400, end=DAY_END, tokens=tokens), ids=ids)))


def test_a_fact_counts_at_once_until_the_record_that_holds_it() -> None:
    """Early counts: the edge counts a request's fact before the quota worker's record; the
    record that lists the request replaces the count (never both), a fact that comes after
    its record is not counted, an estimate is replaced by the real usage (not added)."""
    d, who = world(Budget(amount=100, unit="tokens", period="day"), None)
    view = SpendView()
    _record(view, "user.u1", 60, [])
    view.check(who, d, DAY_END - 10)
    view.observe(_fact("r1", 30, estimated=True), d, None)
    view.observe(_fact("r1", 25), d, None)  # the real usage replaces the estimate
    view.check(who, d, DAY_END - 10)  # 60 + 25 < 100
    view.observe(_fact("r2", 15), d, None)
    with pytest.raises(BudgetExhausted, match="has spent 100 tokens of its 100 tokens"):
        view.check(who, d, DAY_END - 10)
    # the worker folded r1 and r2: its record holds them, the early counts go
    _record(view, "user.u1", 100, ["r1", "r2"])
    assert "u1" not in view.early_users
    with pytest.raises(BudgetExhausted, match="has spent 100 tokens"):  # not 140
        view.check(who, d, DAY_END - 10)
    view.observe(_fact("r2", 15), d, None)  # the edge's own fact of r2, after the record
    assert "u1" not in view.early_users
    # a request of the day before does not count today; a new day starts empty
    view.observe(_fact("r3", 500, at=DAY_END - 86400 - 5), d, None)
    assert view.spent(view.users["u1"], view.early_users.get("u1"),
                      Budget(amount=100, unit="tokens", period="day"), DAY_END - 10)[0] == 100
    view.observe(_fact("r4", 500, at=DAY_END + 5), d, None)
    with pytest.raises(BudgetExhausted, match="has spent 500 tokens"):
        view.check(who, d, DAY_END + 10)  # the record's day ended: only the early count
    # a fact written more than PENDING_S ago (re-published after a failed publish, recovered
    # from a dead part's files) is the worker's record's business alone
    import time

    late = _fact("r6", 10**6)
    late.ts = time.time() - 60
    view.observe(late, d, None)
    assert "r6" not in view.early_users.get("u1", {})
    # no budget, no early count; no usage, nothing
    d2, _ = world(None, None)
    view.observe(_fact("r5", 10, user="u1"), d2, None)
    assert view.early_users.get("u1", {}).get("r5") is None


def test_an_early_count_the_worker_never_lists_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    import edge.quota as q

    d, who = world(None, Budget(amount=2, unit="usd", period="total"))
    from runtime.prices import LivePrices

    book = LivePrices(None).book
    clock = [1000.0]
    monkeypatch.setattr(q.time, "monotonic", lambda: clock[0])
    view = SpendView()
    view.observe(_fact("r1", 1_000_000), d, book)  # $6: 1M input tokens
    with pytest.raises(BudgetExhausted, match=r"API key 'cli' \(cs-AbCd…\) has spent \$6.00"):
        view.check(who, d, DAY_END - 10)
    clock[0] += q.PENDING_S + 2  # its record never came (lost): the record alone again
    view.check(who, d, DAY_END - 10)
    view.observe(_fact("r2", 10), d, book)  # the next fact forgets the old one
    assert list(view.early_keys["k1"]) == ["r2"]
