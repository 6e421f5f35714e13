from __future__ import annotations

from collections import Counter

import pytest

from schemas.config import ProviderConfig
from workers.router.plan import NoProviderError, RoundRobin, plan, should_fail_over


def p(name: str, dialect: str = "anthropic", **kw: object) -> ProviderConfig:
    return ProviderConfig(name=name, dialect=dialect, base_url="http://x", **kw)  # type: ignore[arg-type]


def names(cands: list) -> list[str]:  # type: ignore[type-arg]
    return [c.provider.name for c in cands]


def always(_a: str, _b: str) -> bool:
    return True


def never(_a: str, _b: str) -> bool:
    return False


def test_priority_levels_in_order_and_same_dialect_first() -> None:
    providers = [p("late", priority=2), p("gem", "gemini", priority=1), p("ant", priority=1)]
    got = plan(providers, dialect="anthropic", model="m", pinned=None, can_translate=always)
    assert names(got) == ["ant", "gem", "late"]
    assert [c.translated for c in got] == [False, True, False]


def test_untranslatable_and_disabled_and_non_serving_are_skipped() -> None:
    providers = [p("gem", "gemini"), p("off", enabled=False), p("other", models=["gpt-*"]),
                 p("ok", models=["claude-*"])]
    got = plan(providers, dialect="anthropic", model="claude-x", pinned=None,
               can_translate=never)
    assert names(got) == ["ok"]


def test_round_robin_spreads_evenly() -> None:
    providers = [p("a"), p("b"), p("c")]
    rr = RoundRobin()
    first = Counter(names(plan(providers, dialect="anthropic", model="m", pinned=None,
                               can_translate=always, rr=rr))[0] for _ in range(3000))
    assert first == {"a": 1000, "b": 1000, "c": 1000}


def test_pinning_by_header_and_by_model_prefix() -> None:
    providers = [p("a", model_map={"big": "big-v2"}), p("b")]
    got = plan(providers, dialect="anthropic", model="big", pinned="a", can_translate=always)
    assert names(got) == ["a"] and got[0].upstream_model == "big-v2"
    got = plan(providers, dialect="anthropic", model="b/claude-x", pinned=None,
               can_translate=always)
    assert names(got) == ["b"] and got[0].upstream_model == "claude-x"
    with pytest.raises(NoProviderError) as info:
        plan(providers, dialect="anthropic", model="m", pinned="zzz", can_translate=always)
    assert "zzz" in info.value.message


def test_no_provider_errors_are_specific() -> None:
    with pytest.raises(NoProviderError) as info:
        plan([], dialect="anthropic", model="m", pinned=None, can_translate=always)
    assert info.value.status == 503
    with pytest.raises(NoProviderError) as info:
        plan([p("a", models=["x*"])], dialect="anthropic", model="m", pinned=None,
             can_translate=always)
    assert info.value.status == 404
    with pytest.raises(NoProviderError) as info:
        plan([p("a", enabled=False)], dialect="anthropic", model="m", pinned=None,
             can_translate=always)
    assert info.value.status == 503 and "disabled" in info.value.message
    with pytest.raises(NoProviderError) as info:
        plan([p("g", "gemini")], dialect="anthropic", model="m", pinned=None,
             can_translate=never)
    assert info.value.status == 400


@pytest.mark.parametrize(("status", "expected"), [
    (429, True), (500, True), (502, True), (503, True), (529, True), (408, True), (409, True),
    (400, False), (401, False), (403, False), (404, False), (413, False), (422, False)])
def test_fail_over_statuses(status: int, expected: bool) -> None:
    assert should_fail_over(status, has_next=True) is expected
    assert should_fail_over(status, has_next=False) is False


def test_least_loaded_prefers_the_idlest_and_rotates_ties() -> None:
    providers = [p("a"), p("b"), p("c")]
    rr = RoundRobin()
    load = {"a": 3, "b": 0, "c": 1}
    got = plan(providers, dialect="anthropic", model="m", pinned=None, can_translate=always,
               rr=rr, strategy="least-loaded", load=load)
    assert names(got) == ["b", "c", "a"]
    even = Counter(names(plan(providers, dialect="anthropic", model="m", pinned=None,
                              can_translate=always, rr=rr, strategy="least-loaded",
                              load={}))[0] for _ in range(300))
    assert even == {"a": 100, "b": 100, "c": 100}


def test_weighted_is_exact_and_interleaved() -> None:
    providers = [p("a", weight=1), p("b", weight=3)]
    rr = RoundRobin()
    seq = [names(plan(providers, dialect="anthropic", model="m", pinned=None,
                      can_translate=always, rr=rr, strategy="weighted"))[0]
           for _ in range(8)]
    assert Counter(seq) == {"a": 2, "b": 6}
    assert "bbbb" not in "".join(seq)  # smooth: never four in a row at 1:3


def test_active_first_and_open_circuits_last() -> None:
    providers = [p("a"), p("b", priority=2), p("c", priority=3)]
    got = plan(providers, dialect="anthropic", model="m", pinned=None, can_translate=always,
               active="c", blocked=lambda prov, _m: prov.name == "a")
    assert names(got) == ["c", "b", "a"]


def test_chat_max_tokens_field_by_provider() -> None:
    import json

    from workers.translator import prepare

    # an Anthropic client's request, translated for Chat providers (renamed in the document,
    # before it is encoded: the translated bytes are not decoded again)
    body = b'{"model":"m","max_tokens":512,"messages":[{"role":"user","content":"hi"}]}'
    openai = ProviderConfig(name="o", dialect="openai-chat", base_url="https://api.openai.com/v1")
    deepseek = ProviderConfig(name="d", dialect="openai-chat",
                              base_url="https://api.deepseek.com/v1")
    forced = ProviderConfig(name="f", dialect="openai-chat", base_url="https://x/v1",
                            chat_max_tokens="max_completion_tokens")

    def limits(provider: ProviderConfig, to: str = "openai-chat") -> dict[str, int]:
        out = json.loads(prepare("anthropic", to, body, model="m", stream=False,
                                 chat_max_tokens=provider.max_tokens_field()).body)
        return {k: v for k, v in out.items() if k in ("max_tokens", "max_completion_tokens")}

    assert limits(openai) == limits(forced) == {"max_completion_tokens": 512}
    assert limits(deepseek) == {"max_tokens": 512}
    assert list(json.loads(prepare("anthropic", "openai-chat", body, model="m", stream=False,
                                   chat_max_tokens="max_tokens").body))[-1] == "max_tokens"
    # only Chat providers: the others keep their own field
    assert limits(deepseek, "openai-responses") == {}
