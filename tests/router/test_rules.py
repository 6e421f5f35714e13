"""Route rules, pure: features over the recorded client requests (every dialect), every match
key, the checks that refuse a rule, the planner's order (pinned, rule, use, affinity,
strategy), ``route test``'s verdicts, and the cost of matching."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from codeswitch.cli_routes import guess_dialect, parse_match, verdict_lines
from schemas.config import ProviderConfig
from schemas.routes import RouteError, RouteMatch, RouteRule, check_rules
from workers import translator
from workers.router.plan import NoProviderError, RoundRobin, plan
from workers.router.rules import (
    IMAGE_TOKENS,
    Features,
    compile_rules,
    explain,
    features,
    match,
)

FX = Path(__file__).resolve().parents[1] / "fixtures" / "clients"

# name -> (file, dialect, client)
RECORDED = {
    "cc_main_first": ("claude_code_2.1.197_first_turn.json", "anthropic", "claude-code"),
    "cc_main_later": ("claude_code_2.1.197_recorded.json", "anthropic", "claude-code"),
    "cc_haiku_title": ("claude_code_2.1.197_haiku_title.json", "anthropic", "claude-code"),
    "cc_subagent": ("claude_code_2.1.197_subagent.json", "anthropic", "claude-code"),
    "cc_web_search": ("claude_code_2.1.197_web_search.json", "anthropic", "claude-code"),
    "cc_image": ("claude_code_2.1.197_image.json", "anthropic", "claude-code"),
    "codex": ("codex_0.171.0_recorded.json", "openai-responses", "codex"),
    "codex_hand": ("codex_request.json", "openai-responses", "codex"),
    "gemini": ("gemini_cli_0.61.0_recorded.json", "gemini", "gemini-cli"),
    "gemini_hand": ("gemini_cli_request.json", "gemini", "gemini-cli"),
}


def feats(name: str, **kw: Any) -> Features:
    file, dialect, client = RECORDED[name]
    raw = (FX / file).read_bytes()
    doc = translator.parse_request(raw)
    model = kw.pop("model", doc.get("model") or "gemini-2.5-pro")
    return features(model=model, dialect=dialect, client=client, doc=doc,
                    body_size=len(raw), **kw)


def rule(name: str = "r", to: list[str] | None = None, **match_: Any) -> RouteRule:
    return RouteRule(name=name, to=["cheap"] if to is None else to,
                     match=msgspec.convert(match_, RouteMatch))


def first(rules: list[RouteRule], f: Features) -> str | None:
    got = match(compile_rules(rules), f)
    return got.name if got else None


# -- features over the recorded requests ------------------------------------------------------

def test_claude_code_request_kinds_are_told_apart() -> None:
    main, later = feats("cc_main_first"), feats("cc_main_later")
    title, sub = feats("cc_haiku_title"), feats("cc_subagent")
    search, image = feats("cc_web_search"), feats("cc_image")
    # the main turn: adaptive thinking, its 25 tools with Agent, the first turn
    assert main.thinking and "Agent" in main.tools and len(main.tools) == 25
    assert main.first_turn and not main.subagent and not main.image
    assert not later.first_turn and later.thinking  # a tool round trip: later
    # the background title call with ANTHROPIC_DEFAULT_HAIKU_MODEL set: haiku, no tools,
    # thinking disabled
    assert title.model == "claude-haiku-4-5" and not title.thinking and not title.tools
    # a subagent: cc_is_subagent=true and the agent's system prompt; it has Agent too
    assert sub.subagent and "Agent" in sub.tools and not sub.thinking and sub.first_turn
    assert not any(f.subagent for f in (main, later, title, search, image))
    # WebSearch's own call: the server tool, by its name and its type
    assert {"web_search", "web_search_20250305"} <= search.tools and len(search.tools) == 2
    # the image came back inside a tool_result
    assert image.image and not main.image and not image.first_turn


def test_other_clients_features() -> None:
    codex, hand = feats("codex"), feats("codex_hand")
    assert codex.thinking and not codex.first_turn and "exec_command" in codex.tools
    assert "web_search" in hand.tools and "shell" in hand.tools  # a Responses server tool
    gem = feats("gemini")
    assert gem.thinking and not gem.first_turn and "run_shell_command" in gem.tools
    assert not gem.image and not gem.subagent


def test_input_token_estimate() -> None:
    main = feats("cc_main_first")
    size = len((FX / RECORDED["cc_main_first"][0]).read_bytes())
    assert main.input_tokens == size // 4
    # an image counts IMAGE_TOKENS, not its base64 bytes
    big = "A" * 400_000
    doc = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": big}},
        {"type": "text", "text": "what is it"}]}]}
    raw = json.dumps(doc).encode()
    f = features(model="m", dialect="anthropic", doc=doc, body_size=len(raw))
    assert f.image and f.input_tokens == (len(raw) - len(big)) // 4 + IMAGE_TOKENS


@pytest.mark.parametrize(("dialect", "doc", "thinking"), [
    ("anthropic", {"thinking": {"type": "enabled", "budget_tokens": 2048}}, True),
    ("anthropic", {"thinking": {"type": "disabled"}}, False),
    ("openai-chat", {"reasoning_effort": "high"}, True),
    ("openai-chat", {"reasoning_effort": "minimal"}, False),
    ("openai-chat", {}, False),
    ("openai-responses", {"reasoning": {"effort": "low"}}, True),
    ("openai-responses", {"reasoning": {"effort": "none"}}, False),
    ("gemini", {"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}, False),
    ("gemini", {"generationConfig": {"thinkingConfig": {"thinkingBudget": -1}}}, True),
    ("gemini", {"generationConfig": {"thinkingConfig": {"includeThoughts": True}}}, True),
])
def test_thinking_in_every_dialect(dialect: str, doc: dict[str, Any], thinking: bool) -> None:
    assert features(model="m", dialect=dialect, doc=doc).thinking is thinking


@pytest.mark.parametrize(("dialect", "doc"), [
    ("openai-chat", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}),
    ("openai-responses", {"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/a.png"}]}]}),
    ("gemini", {"contents": [{"role": "user", "parts": [
        {"inlineData": {"mimeType": "image/jpeg", "data": "AAAA"}}]}]}),
    ("gemini", {"contents": [{"role": "user", "parts": [
        {"fileData": {"mimeType": "image/png", "fileUri": "gs://x"}}]}]}),
])
def test_image_in_every_dialect(dialect: str, doc: dict[str, Any]) -> None:
    assert features(model="m", dialect=dialect, doc=doc).image
    no_image = {"messages": [{"role": "user", "content": "hi"}]}
    assert not features(model="m", dialect=dialect, doc=no_image).image


@pytest.mark.parametrize(("dialect", "doc", "names"), [
    ("openai-chat", {"tools": [{"type": "function", "function": {"name": "f"}}],
                     "web_search_options": {}}, {"f", "web_search"}),
    ("openai-responses", {"tools": [{"type": "web_search_preview"}]},
     {"web_search", "web_search_preview"}),
    ("gemini", {"tools": [{"googleSearch": {}}, {"functionDeclarations": [{"name": "g"}]}]},
     {"g", "google_search", "web_search"}),
])
def test_server_tools_in_every_dialect(dialect: str, doc: dict[str, Any],
                                       names: set[str]) -> None:
    assert features(model="m", dialect=dialect, doc=doc).tools == names


@pytest.mark.parametrize(("dialect", "first", "later"), [
    ("openai-chat", {"messages": [{"role": "system", "content": "s"},
                                  {"role": "user", "content": "u"}]},
     {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"},
                   {"role": "user", "content": "u"}]}),
    ("openai-responses", {"input": [{"role": "user", "content": "u"}]},
     {"input": [{"role": "user", "content": "u"},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]}),
    ("gemini", {"contents": [{"role": "user", "parts": [{"text": "u"}]}]},
     {"contents": [{"role": "user", "parts": [{"text": "u"}]},
                   {"role": "model", "parts": [{"text": "a"}]}]}),
])
def test_session_turn_in_every_dialect(dialect: str, first: dict[str, Any],
                                       later: dict[str, Any]) -> None:
    assert features(model="m", dialect=dialect, doc=first).first_turn
    assert not features(model="m", dialect=dialect, doc=later).first_turn


# -- every match key --------------------------------------------------------------------------

def test_each_match_key() -> None:
    main, title, sub = feats("cc_main_first"), feats("cc_haiku_title"), feats("cc_subagent")
    search, image, codex = feats("cc_web_search"), feats("cc_image"), feats("codex")
    gem = feats("gemini", model="gemini-2.5-pro")
    cases: list[tuple[dict[str, Any], list[Features], list[Features]]] = [
        ({"model": "*haiku*"}, [title], [main, sub, codex]),
        ({"model": ["gpt-5*", "gemini-*"]}, [codex, gem], [main, title]),
        ({"client": "claude-code"}, [main, title, sub], [codex, gem]),
        ({"client": "codex"}, [codex], [main, gem]),
        ({"client": "gemini-cli"}, [gem], [main, codex]),
        ({"dialect": "openai-*"}, [codex], [main, gem]),
        ({"thinking": True}, [main, image, codex, gem], [title, sub, search]),
        ({"thinking": False}, [title, sub, search], [main, codex]),
        ({"min_input_tokens": 15_000}, [main, image], [title, sub, search, codex]),
        ({"image": True}, [image], [main, title, sub, search, codex, gem]),
        # Codex 0.171 sends its web_search server tool on every request
        ({"tools": ["web_search"]}, [search, codex], [main, title, sub, gem]),
        ({"tools": ["Bash", "Agent"]}, [main, sub, image], [title, search, codex]),
        ({"tools": ["mcp__*"]}, [], [main, codex]),
        ({"subagent": True}, [sub], [main, title, search, image, codex, gem]),
        ({"subagent": False}, [main, title, codex], [sub]),
        ({"session_turn": "first"}, [main, title, sub, search], [image, codex, gem]),
        ({"session_turn": "later"}, [image, codex, gem], [main, title, sub]),
        ({"model": "*haiku*", "thinking": True}, [], [title, main]),  # AND
    ]
    for m, yes, no in cases:
        rules = [rule(**m)]
        for f in yes:
            assert first(rules, f) == "r", (m, f.model, f.dialect)
        for f in no:
            assert first(rules, f) is None, (m, f.model, f.dialect)


def test_user_key_and_header_keys() -> None:
    f = Features(model="m", dialect="anthropic", user="alice", key="alice/laptop",
                 headers={"x-project": "billing-api", "x-claude-code-agent-id": "a6ac"})
    assert first([rule(user="ali*")], f) == "r"
    assert first([rule(user="bob")], f) is None
    assert first([rule(key="alice/laptop")], f) == "r"
    assert first([rule(key="laptop")], f) == "r"  # the key's own name
    assert first([rule(key="bob/*")], f) is None
    assert first([rule(key="*")], Features(model="m")) is None  # no gateway key: no match
    assert first([rule(header={"X-Project": "billing-*"})], f) == "r"  # names: any case
    assert first([rule(header={"x-project": "web-*"})], f) is None
    assert first([rule(header={"x-claude-code-agent-id": "*"})], f) == "r"
    assert first([rule(header={"x-absent": "*"})], f) is None


def test_first_matching_rule_wins() -> None:
    title = feats("cc_haiku_title")
    rules = [rule("long", min_input_tokens=100_000), rule("bg", model="*haiku*"),
             rule("cc", client="claude-code")]
    assert first(rules, title) == "bg"
    assert first(rules, feats("cc_main_first")) == "cc"
    assert first(rules, feats("codex")) is None
    verdicts = dict(explain(compile_rules(rules), title))
    assert verdicts["bg"] == "matched"
    assert verdicts["long"].startswith("no: input ~") and "< 100000" in verdicts["long"]
    assert verdicts["cc"] == "would match, but an earlier rule matched first"


# -- checks -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("rules", "message"), [
    ([rule(to=["nope"])], "to: unknown provider 'nope' (configured: cheap, main)"),
    ([rule(to=[])], "names no provider"),
    ([rule(to=["main", "main"])], "names a provider twice"),
    ([rule("a"), rule("a", model="x")], "duplicate rule name"),
    ([rule("has space")], "must be 1-64 letters"),
    ([rule(client="codex", dialect="gemini")], "client codex never speaks dialect gemini"),
    ([rule(subagent=True, client="codex")], "subagent requests come from claude-code only"),
    ([rule(subagent=True, dialect="openai-chat")], "subagent requests are anthropic"),
    ([rule(dialect="klingon")], "'klingon' matches no dialect"),
    ([rule(model="")], "match.model: needs a non-empty glob"),
    ([rule(tools=[])], "match.tools: needs a list of tool names"),
    ([rule(min_input_tokens=-1)], "must be 0 or more"),
    ([rule(header={"Authorization": "Bearer *"})], "carries the client's key"),
    ([rule(header={"bad header": "x"})], "is not a header name"),
    ([rule("all"), rule("later", model="x")], "can never match: rule 'all' before it"),
])
def test_rules_that_cannot_be_used_are_refused(rules: list[RouteRule], message: str) -> None:
    with pytest.raises(RouteError) as exc:
        check_rules(rules, {"cheap", "main"})
    assert message in str(exc.value)


def test_malformed_match_is_refused_by_the_struct() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field `colour`"):
        msgspec.convert({"name": "r", "to": ["a"], "match": {"colour": "red"}}, RouteRule)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"name": "r", "to": ["a"], "match": {"session_turn": "third"}},
                        RouteRule)
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        parse_match(["colour=red"])
    assert parse_match(["model=*haiku*,*mini*", "thinking=true", "min_input_tokens=60_000",
                        "tools=web_search", "header:x-project=billing-*"]) == RouteMatch(
        model=["*haiku*", "*mini*"], thinking=True, min_input_tokens=60000,
        tools=["web_search"], header={"x-project": "billing-*"})


# -- the planner: pinned, rule, use, affinity, strategy ---------------------------------------

def _p(name: str, dialect: str = "anthropic", **kw: Any) -> ProviderConfig:
    return ProviderConfig(name=name, dialect=dialect,  # type: ignore[arg-type]
                          base_url=f"https://{name}.example", **kw)


PROVIDERS = [_p("main"), _p("backup", priority=2), _p("cheap", "openai-chat"),
             _p("off", enabled=False)]


def order(**kw: Any) -> list[tuple[str, str, str | None]]:
    args: dict[str, Any] = {"dialect": "anthropic", "model": "claude-haiku-4-5",
                            "pinned": None, "can_translate": lambda a, b: True}
    args.update(kw)
    return [(c.provider.name, c.upstream_model, c.rule) for c in plan(PROVIDERS, **args)]


def test_rule_order_and_fallback() -> None:
    bg = RouteRule(name="bg", to=["cheap"], model="gpt-4.1-mini")
    assert order(rule=bg) == [("cheap", "gpt-4.1-mini", "bg"),
                              ("main", "claude-haiku-4-5", None),
                              ("backup", "claude-haiku-4-5", None)]
    strict = RouteRule(name="bg", to=["cheap", "backup"], fallback=False)
    assert order(rule=strict) == [("cheap", "claude-haiku-4-5", "bg"),
                                  ("backup", "claude-haiku-4-5", "bg")]
    # none of the rule's providers usable: with fallback normal routing, without a 503
    gone = RouteRule(name="gone", to=["off", "missing"])
    assert [n for n, _, _ in order(rule=gone)] == ["main", "cheap", "backup"]
    with pytest.raises(NoProviderError) as exc:
        order(rule=RouteRule(name="gone", to=["off"], fallback=False))
    assert exc.value.status == 503 and "route rule 'gone'" in exc.value.message


def test_order_of_choice_pinned_rule_use_affinity_strategy() -> None:
    bg = RouteRule(name="bg", to=["cheap"])
    # pinned beats the rule (and everything else)
    assert order(rule=bg, pinned="backup") == [("backup", "claude-haiku-4-5", None)]
    assert order(rule=bg, model="main/claude-haiku-4-5")[0][0] == "main"
    # the rule beats `use` and affinity
    assert order(rule=bg, active="backup", sticky="main")[0] == ("cheap", "claude-haiku-4-5",
                                                                  "bg")
    # ... which still order what comes after the rule's providers
    assert [n for n, _, _ in order(rule=bg, active="backup")] == ["cheap", "backup", "main"]
    assert [n for n, _, _ in order(rule=bg, sticky="cheap")] == ["cheap", "main", "backup"]
    # without a rule: use beats affinity beats the strategy
    assert [n for n, _, _ in order(active="backup", sticky="main")][:2] == ["backup", "main"]
    rr = RoundRobin()
    spread = {order(rr=rr)[0][0] for _ in range(4)}
    assert spread == {"main"}  # priority 1 alone in its level (cheap is 1 but translated)


def test_open_circuit_of_a_rule_provider_goes_last() -> None:
    rule_ = RouteRule(name="two", to=["cheap", "main"])
    got = order(rule=rule_, blocked=lambda p, m: p.name == "cheap")
    assert [n for n, _, _ in got] == ["main", "backup", "cheap"]


# -- route test -------------------------------------------------------------------------------

def test_route_test_lines_say_which_rule_and_why_not_the_others() -> None:
    rules = [rule("long", min_input_tokens=100_000), rule("bg", model="*haiku*"),
             rule("search", tools=["web_search"], to=["main"])]
    raw = (FX / RECORDED["cc_haiku_title"][0]).read_bytes()
    lines = verdict_lines(rules, raw, headers={"user-agent": "claude-cli/2.1.197 (external)"})
    assert lines[0].startswith("request: dialect=anthropic model=claude-haiku-4-5 "
                               "client=claude-code thinking=false")
    assert lines[1].startswith("    long: no: input ~") and lines[2] == "  → bg: matched"
    assert lines[3] == "    search: no: no tool 'web_search' among its 0"
    assert lines[-1] == "route bg: to cheap; then normal routing"
    gemini_raw = (FX / RECORDED["gemini"][0]).read_bytes()
    assert verdict_lines(rules, gemini_raw)[-1].startswith("no rule matches")
    codex_raw = (FX / RECORDED["codex"][0]).read_bytes()
    assert guess_dialect(json.loads(codex_raw), {}) == "openai-responses"


# -- cost -------------------------------------------------------------------------------------

def test_matching_20_rules_costs_microseconds() -> None:
    """20 rules, the last one matching (every rule's keys are tried): a generous bound here
    (the machine is shared); bench/bench_routes.py measures it."""
    rules = [rule(f"r{i}", model=f"*model-{i}*", thinking=True) for i in range(19)]
    rules.append(rule("hit", client="claude-code", tools=["web_search"]))
    compiled = compile_rules(rules)
    f = feats("cc_web_search")
    assert match(compiled, f) is not None and match(compiled, f).name == "hit"  # type: ignore[union-attr]
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        match(compiled, f)
    per = (time.perf_counter() - t0) / n
    assert per < 100e-6, f"{per * 1e6:.1f} µs per request"


def test_tail_names_the_rule() -> None:
    from codeswitch.tail import render_line
    from schemas.events import AttemptFinished, RequestCompleted

    done = RequestCompleted(id="e1", ts=0.0, request_id="r1", dialect="anthropic",
                            model="claude-haiku-4-5", provider="cheap", status=200,
                            route="background")
    assert "→ cheap        route background " in render_line(done)
    att = AttemptFinished(id="e2", ts=0.0, request_id="r1", attempt=1, dialect="anthropic",
                          provider="cheap", provider_dialect="openai-chat", model="m",
                          upstream_model="m", stream=False, outcome="ok", route="background")
    assert "attempt 1 cheap (route background) ok" in render_line(att)
    # facts from before route rules decode without one
    old = msgspec.json.encode(msgspec.structs.replace(done, route=None))
    assert b"route" not in old or b'"route":null' in old
    assert msgspec.json.decode(old.replace(b',"route":null', b""), type=RequestCompleted
                               ).route is None


def test_generated_matcher_agrees_with_the_explanation() -> None:
    """The generated function (fast path globs, one function for the list) and the closures
    ``route test`` explains with give the same verdict on every recorded request."""
    matches: list[dict[str, Any]] = [
        {"model": "*haiku*"}, {"model": "claude-*"}, {"model": "*-4-8"}, {"model": "gpt-5.5"},
        {"model": "*"}, {"model": "claude-[oh]*"}, {"model": "gpt-?.?"},
        {"client": ["codex", "gemini-*"]}, {"dialect": "openai-*"}, {"thinking": True},
        {"thinking": False}, {"image": True}, {"subagent": True},
        {"session_turn": "later"}, {"min_input_tokens": 12_000},
        {"tools": ["web_search"]}, {"tools": ["Agent", "*_command"]}, {"tools": ["mcp__*"]},
        {"header": {"X-Project": "b*"}}, {"user": "ali?e"}, {"key": "laptop"},
        {"key": "alice/*"}, {"model": "claude-*", "thinking": False, "session_turn": "first"},
    ]
    corpus = [feats(name) for name in RECORDED]
    corpus += [Features(model="m", user="alice", key="alice/laptop",
                        headers={"x-project": "billing"})]
    for m in matches:
        compiled = compile_rules([rule(**m)])
        for f in corpus:
            fast = match(compiled, f) is not None
            slow = explain(compiled, f)[0][1] == "matched"
            assert fast is slow, (m, f.model, f.dialect, fast, slow)


def test_the_edge_names_the_user_and_key_for_rules() -> None:
    from edge.app import _names
    from edge.auth import Directory, Principal
    from schemas.users import Key, User

    d = Directory()
    d.apply_user("u_1", msgspec.json.encode(User(id="u_1", name="alice")))
    d.apply_key("k_1", msgspec.json.encode(Key(id="k_1", name="laptop", user="u_1",
                                                hash="ab" * 32)))
    assert _names(Principal("h", "u_1", "k_1"), d) == {"user_name": "alice",
                                                      "key_name": "alice/laptop"}
    assert _names(Principal("h"), d) == {}  # no users: nothing (rules see the client's id)
