"""edge/quota.py alone: the check a request passes at the edge, from the records as the KV
watch hands them over (no servers)."""

from __future__ import annotations

import msgspec
import pytest

from edge.auth import Directory, Principal
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
