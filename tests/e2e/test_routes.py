"""Route rules through the real edge and router with fake upstreams: a Claude Code background
call goes to the cheap provider and says so (x-codeswitch-route, the facts), fallback on and
off when the rule's provider fails, a pinned provider beats a rule, a rule beats `use` and
affinity, the edge forwards the headers rules name; `codeswitch route add|list|test|remove`
against the running gateway (the next request uses a new rule, refusals with clear messages,
every change in `codeswitch audit`), and `codeswitch up` refusing a bad rule with file and
line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from codeswitch import admin, cli
from codeswitch.routes import put_routes
from runtime.natsd import EmbeddedNats
from schemas.config import ActiveProviders
from schemas.events import AttemptFinished, RequestCompleted
from schemas.routes import RouteMatch, RouteRule, RouteTable
from tests.e2e.conftest import CLIENT_KEY, provider_for
from tests.e2e.gateway import Gateway, events, run_nats
from tests.fakes.upstream import Behavior, FakeUpstream
from tests.users.conftest import caught_up, ledger  # noqa: F401  (the ledger fixture)

FX = Path(__file__).resolve().parents[1] / "fixtures" / "clients"
HAIKU = json.loads((FX / "claude_code_2.1.197_haiku_title.json").read_bytes())
MAIN = json.loads((FX / "claude_code_2.1.197_first_turn.json").read_bytes())
SUBAGENT = json.loads((FX / "claude_code_2.1.197_subagent.json").read_bytes())
CC_HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01",
              "user-agent": "claude-cli/2.1.197 (external, sdk-cli)"}
BACKGROUND = RouteRule(name="background", match=RouteMatch(model="*haiku*"), to=["cheap"],
                       model="gpt-4.1-mini")
World = tuple[Gateway, FakeUpstream, FakeUpstream]


@pytest.fixture
def world(nats_server: EmbeddedNats) -> Iterator[World]:
    """``main`` (Anthropic, claude-*) and ``cheap`` (OpenAI Chat, gpt-*: normal routing never
    sends a Claude model there)."""
    main, cheap = FakeUpstream("anthropic").start(), FakeUpstream("openai-chat").start()
    gw = Gateway(nats_server.url)
    try:
        gw.add_provider(provider_for(main, name="main"))
        gw.add_provider(provider_for(cheap, name="cheap", models=["gpt-*"]))
        yield gw, main, cheap
    finally:
        gw.stop()
        main.stop()
        cheap.stop()


def set_rules(gw: Gateway, *rules: RouteRule) -> None:
    run_nats(gw.nats_url, lambda nc: put_routes(nc, RouteTable(rules=list(rules))))
    want = list(rules)
    headers = tuple(sorted({h.lower() for r in rules for h in r.match.header or {}}))
    deadline = time.monotonic() + 5
    while [c.rule for c in gw.routers[0].router.settings.routes.rules] != want \
            or gw.edge.app.route_headers != headers:
        assert time.monotonic() < deadline, "the router or the edge did not see the rules"
        time.sleep(0.01)


def post(gw: Gateway, body: dict[str, Any], **headers: str) -> httpx.Response:
    with gw.client() as c:
        return c.post("/v1/messages?beta=true", json=body, headers={**CC_HEADERS, **headers})


def facts(gw: Gateway, n: int) -> tuple[list[AttemptFinished], list[RequestCompleted]]:
    got = [e for _, _, e in events(gw.nats_url, n)]
    return ([e for e in got if isinstance(e, AttemptFinished)],
            [e for e in got if isinstance(e, RequestCompleted)])


def test_background_call_goes_to_the_cheap_provider_and_says_so(world: World) -> None:
    gw, main, cheap = world
    set_rules(gw, BACKGROUND)
    r = post(gw, HAIKU)
    assert r.status_code == 200, r.text
    assert r.headers["x-codeswitch-route"] == "background"
    assert r.headers["x-codeswitch-provider"] == "cheap"
    assert "event: message_start" in r.text  # translated back to the client's dialect
    assert cheap.requests[-1].json["model"] == "gpt-4.1-mini"  # the rule's upstream model
    # the main turn matches no rule: normal routing, no route header
    r = post(gw, MAIN)
    assert r.status_code == 200 and r.headers["x-codeswitch-provider"] == "main"
    assert "x-codeswitch-route" not in r.headers
    assert len(main.requests) == 1 and len(cheap.requests) == 1
    attempts, done = facts(gw, 4)
    assert [(a.provider, a.route) for a in attempts] == [("cheap", "background"),
                                                         ("main", None)]
    assert [(d.provider, d.route) for d in done] == [("cheap", "background"), ("main", None)]
    # a token count goes where the request would: the same rules
    with gw.client() as c:
        r = c.post("/v1/messages/count_tokens?beta=true", headers=CC_HEADERS,
                   json={k: v for k, v in HAIKU.items() if k not in ("stream", "max_tokens")})
    assert r.status_code == 200 and r.json()["input_tokens"] > 0
    assert r.headers["x-codeswitch-route"] == "background"
    assert r.headers["x-codeswitch-provider"] == "cheap"


def test_fallback_on_and_off_when_the_rule_provider_fails(world: World) -> None:
    gw, main, cheap = world
    set_rules(gw, BACKGROUND)
    cheap.push(Behavior(status=503))
    r = post(gw, HAIKU)
    assert r.status_code == 200 and r.headers["x-codeswitch-provider"] == "main"
    assert r.headers["x-codeswitch-route"] == "background"
    assert main.requests[-1].json["model"] == "claude-haiku-4-5"  # normal routing's model
    attempts, done = facts(gw, 3)
    assert [(a.provider, a.outcome, a.route) for a in attempts] == [
        ("cheap", "fallback", "background"), ("main", "ok", None)]
    assert done[-1].route == "background" and done[-1].attempts == 2

    strict = RouteRule(name="background", match=RouteMatch(model="*haiku*"), to=["cheap"],
                       fallback=False)
    set_rules(gw, strict)
    assert not gw.routers[0].router.settings.routes.rules[0].rule.fallback
    cheap.push(Behavior(status=503))
    served = len(main.requests)
    r = post(gw, HAIKU)
    # every provider the rule allows failed: a final error naming it (Claude Code gets 424, a
    # status it does not retry, with x-should-retry: false; schemas.errors.final_error)
    assert r.status_code == 424 and r.headers["x-should-retry"] == "false"
    assert "provider cheap failed" in r.json()["error"]["message"]
    assert r.headers["x-codeswitch-route"] == "background"
    assert len(main.requests) == served  # no fallback
    # a rule whose providers are all gone, without fallback: a clear, final error
    gw.remove_provider("cheap")
    r = post(gw, HAIKU)
    assert r.status_code == 424 and r.headers["x-should-retry"] == "false"
    assert "route rule 'background': none of its providers (cheap)" in r.json()["error"][
        "message"]


def test_pinned_beats_rule_and_rule_beats_use_and_affinity(world: World) -> None:
    gw, _main, cheap = world
    session = {"x-codeswitch-session": "s-routes-1"}
    # affinity first: the session's haiku calls were served by main
    assert post(gw, HAIKU, **session).headers["x-codeswitch-provider"] == "main"
    router = gw.routers[0].router
    deadline = time.monotonic() + 5
    while router.affinities.sticky("s-routes-1", HAIKU["model"], 3600) != "main":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # ... and `use` says main too
    run_nats(gw.nats_url, lambda nc: admin.put_setting(
        nc, "active", ActiveProviders(by_app={"claude": "main"})))
    while router.settings.active.for_dialect("anthropic") != "main":
        time.sleep(0.01)
    set_rules(gw, BACKGROUND)
    r = post(gw, HAIKU, **session)
    assert r.headers["x-codeswitch-provider"] == "cheap"
    assert r.headers["x-codeswitch-route"] == "background"
    # a rule's pick teaches affinity nothing: the session still sticks to main
    assert router.affinities.sticky("s-routes-1", HAIKU["model"], 3600) == "main"
    # a pinned provider beats the rule, by header and by provider/model
    r = post(gw, HAIKU, **session, **{"x-codeswitch-provider": "main"})
    assert r.headers["x-codeswitch-provider"] == "main" and "x-codeswitch-route" not in r.headers
    r = post(gw, {**HAIKU, "model": "main/claude-haiku-4-5"})
    assert r.headers["x-codeswitch-provider"] == "main" and "x-codeswitch-route" not in r.headers
    assert len(cheap.requests) == 1


def test_body_and_header_keys_on_the_request_path(world: World) -> None:
    gw, _main, cheap = world
    set_rules(gw,
              RouteRule(name="project", match=RouteMatch(header={"X-Project": "billing-*"}),
                        to=["cheap"]),
              RouteRule(name="subagents", match=RouteMatch(subagent=True, client="claude-code"),
                        to=["cheap"], model="gpt-4.1-mini"))
    r = post(gw, SUBAGENT)
    assert r.headers["x-codeswitch-route"] == "subagents", r.text
    assert r.headers["x-codeswitch-provider"] == "cheap"
    r = post(gw, MAIN, **{"x-project": "billing-api"})
    assert r.headers["x-codeswitch-route"] == "project"
    r = post(gw, MAIN, **{"x-project": "web"})
    assert "x-codeswitch-route" not in r.headers
    # the edge forwards only the headers the rules name
    assert gw.edge.app.route_headers == ("x-project",)
    assert len(cheap.requests) == 2


# -- the CLI against the running gateway ------------------------------------------------------

runner = CliRunner()


def _app() -> Any:
    have = {g.name for g in cli.app.registered_groups}
    if "route" not in have or "audit" not in have:
        cli._register_plugins(["--help"])
    return cli.app


def test_route_cli_add_list_test_remove_and_audit(
        world: World, ledger: tuple[str, Path], tmp_path: Path) -> None:  # noqa: F811
    gw, _main, cheap = world
    url, home = ledger
    env = {"HOME": str(tmp_path / "userhome"), "CODESWITCH_HOME": str(home),
           "CODESWITCH_NATS_URL": url, "COLUMNS": "200"}

    def cs(*args: str, code: int = 0) -> Any:
        out = runner.invoke(_app(), list(args), env=env)
        assert out.exit_code == code, (args, out.output, out.exception)
        return out

    out = cs("route", "add", "background", "--to", "cheap", "--match", "model=*haiku*",
             "--model", "gpt-4.1-mini")
    assert "route background saved (#1 of 1; in effect on 1 router)" in out.output
    r = post(gw, HAIKU)  # the very next request, no restart
    assert r.headers["x-codeswitch-route"] == "background" and len(cheap.requests) == 1
    # refused, with the reason
    bad = cs("route", "add", "x", "--to", "nope", code=2)
    assert "route 'x': to: unknown provider 'nope' (configured: cheap, main)" in bad.output
    bad = cs("route", "add", "x", "--to", "cheap", "--match", "colour=red", code=2)
    assert "unknown key 'colour'" in bad.output
    bad = cs("route", "add", "x", "--to", "cheap", "--match", "client=codex",
             "--match", "dialect=gemini", code=2)
    assert "client codex never speaks dialect gemini" in bad.output
    cs("route", "add", "search", "--to", "main", "--match", "tools=web_search",
       "--no-fallback", "--first")
    listed = json.loads(cs("route", "list", "--json").stdout)
    assert [(r["name"], r.get("fallback", True)) for r in listed] == [
        ("search", False), ("background", True)]
    table = cs("route", "list").output
    assert "model=*haiku*" in table and "tools=web_search" in table
    tested = cs("route", "test", str(FX / "claude_code_2.1.197_haiku_title.json")).output
    assert "→ background: matched" in tested
    assert "search: no: no tool 'web_search' among its 0" in tested
    tested = cs("route", "test", str(FX / "claude_code_2.1.197_subagent.json")).output
    assert "client=claude-code" in tested and "subagent=true" in tested  # its headers file
    assert "no rule matches" in tested
    # a provider a rule names cannot be removed from under it
    refused = cs("provider", "remove", "cheap", code=1)
    assert "provider 'cheap' is named by route rule(s) background" in refused.output
    cs("route", "remove", "search")
    assert "no route rule named 'search'" in cs("route", "remove", "search", code=1).output
    asyncio.run(caught_up(url))
    audit = json.loads(cs("audit", "--json", "--action", "route.*").stdout)
    assert sorted((a["action"], a["target"]) for a in audit) == [
        ("route.added", "route:background"), ("route.added", "route:search"),
        ("route.removed", "route:search")]
    added = next(a for a in audit if a["target"] == "route:background")
    assert added["details"]["to"] == ["cheap"] and added["details"]["model"] == "gpt-4.1-mini"
    # the rule's name in `codeswitch log` (a column, and a filter)
    logged = json.loads(cs("log", "--json", "--route", "background").stdout)
    assert [(row["route"], row["provider"]) for row in logged] == [("background", "cheap")]
    assert "background" in cs("log").output


def test_up_refuses_a_bad_rule_with_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "routes.toml"
    config.write_text('[[providers]]\nname = "main"\ndialect = "anthropic"\n'
                      'base_url = "https://x"\n\n[[routes]]\nname = "bg"\n'
                      'match = { model = "*haiku*", subagent = true, client = "codex" }\n'
                      'to = ["main"]\n')
    cmd = [sys.executable, "-m", "codeswitch", "up", "--home", str(tmp_path / "h"),
           "--config", str(config)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    err = r.stderr.replace("\n", "")
    assert f"{config}:8" in err and "routes[0].match" in err
    assert "subagent requests come from claude-code only" in err


def test_up_refuses_a_rule_naming_an_unknown_provider(tmp_path: Path) -> None:
    """Providers are known only once the gateway's KV is there: `up` checks them before it
    applies anything, says which rule, file and line, and stops."""
    from runtime.process import free_port

    config = tmp_path / "routes.toml"
    config.write_text(f'[gateway]\nport = {free_port()}\n\n[[providers]]\nname = "main"\n'
                      'dialect = "anthropic"\nbase_url = "https://x"\n\n[[routes]]\n'
                      'name = "background"\nmatch = { model = "*haiku*" }\nto = ["cheap"]\n')
    cmd = [sys.executable, "-m", "codeswitch", "up", "--home", str(tmp_path / "h"),
           "--config", str(config)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert (f"{config}:12: routes[0].to: rule 'background': unknown provider 'cheap' "
            "(configured: main)") in r.stderr.replace("\n", "")


def _recorded(name: str) -> tuple[bytes, dict[str, str]]:
    headers = json.loads((FX / f"{name}.headers.json").read_text())
    keep = {k: v for k, v in headers.items()
            if k.lower() not in ("authorization", "x-goog-api-key", "accept-encoding",
                                 "content-length")}
    return (FX / f"{name}.json").read_bytes(), keep


def test_codex_and_gemini_cli_requests_are_routed_by_their_body(world: World) -> None:
    """The other dialects' recorded requests through the edge and the router: the body keys
    (session turn, tools, thinking) read from the router's one decode of the body."""
    gw, main, cheap = world
    set_rules(gw,
              RouteRule(name="codex-later", match=RouteMatch(
                  client="codex", session_turn="later", tools=["exec_command"]),
                  to=["cheap"], model="gpt-4.1-mini"),
              RouteRule(name="gemini-thinking", match=RouteMatch(
                  dialect="gemini", thinking=True, tools=["run_shell_command"]),
                  to=["main"], model="claude-opus-4-8"))
    body, headers = _recorded("codex_0.171.0_recorded")
    with gw.client() as c:
        r = c.post("/v1/responses", content=body,
                   headers={**headers, "authorization": f"Bearer {CLIENT_KEY}"})
    assert r.status_code == 200, r.text
    assert r.headers["x-codeswitch-route"] == "codex-later"
    assert r.headers["x-codeswitch-provider"] == "cheap"
    assert cheap.requests[-1].json["model"] == "gpt-4.1-mini"
    body, headers = _recorded("gemini_cli_0.61.0_recorded")
    with gw.client() as c:
        r = c.post("/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", content=body,
                   headers={**headers, "x-goog-api-key": CLIENT_KEY})
    assert r.status_code == 200, r.text
    assert r.headers["x-codeswitch-route"] == "gemini-thinking"
    assert r.headers["x-codeswitch-provider"] == "main"
    assert main.requests[-1].json["model"] == "claude-opus-4-8"
