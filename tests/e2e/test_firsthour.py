"""The first hour through the real parts: the demo provider answering every dialect through
the edge, the router, the translator and the ledger; final errors per dialect and client;
providers from the environment in KV; `provider test` against fake upstreams; `connect`
pointing at the running gateway with the key it needs."""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from codeswitch import admin
from codeswitch.demo import DEMO_NAME, demo_provider, serve
from codeswitch.envproviders import sync_env_providers
from codeswitch.firstrun import first_run
from codeswitch.probe import check
from runtime.natsd import EmbeddedNats
from schemas.config import GatewaySettings, ProviderConfig
from tests.e2e.conftest import PROVIDER_KEYS, provider_for
from tests.e2e.gateway import Gateway, run_nats
from tests.e2e.test_sessions import LedgerThread, ask, wait_requests
from tests.fakes.upstream import Behavior, FakeUpstream

BASH_ANTHROPIC = {"name": "Bash", "description": "run", "input_schema": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}
SHELL_FN = {"name": "shell", "description": "run", "parameters": {
    "type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
    "required": ["command"]}}


@pytest.fixture
def demo_world(nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[tuple[Gateway, Any]]:
    """A gateway whose only provider is the demo upstream (as `up --demo` registers it), and
    a ledger."""
    server = serve("127.0.0.1", 0)
    gw = Gateway(nats_server.url)
    ledger = LedgerThread(nats_server.url, tmp_path / "ledger")
    try:
        gw.add_provider(demo_provider(server.server_address[1]))
        yield gw, ledger
    finally:
        gw.stop()
        ledger.stop()
        server.shutdown()


def _sse(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_demo_answers_every_dialect_and_the_ledger_counts_it(
        demo_world: tuple[Gateway, Any]) -> None:
    gw, _ = demo_world
    hello = [{"role": "user", "content": "hello gateway"}]
    with gw.client() as c:
        # Anthropic (no translation): whole, stream, tool call
        r = c.post("/v1/messages", json={"model": "claude-x", "max_tokens": 50,
                                         "messages": hello})
        assert r.status_code == 200 and r.headers["x-codeswitch-provider"] == DEMO_NAME
        assert r.json()["content"][0]["text"].startswith("[codeswitch demo]")
        assert r.json()["usage"]["output_tokens"] > 0
        r = c.post("/v1/messages", json={"model": "claude-x", "max_tokens": 50, "stream": True,
                                         "messages": hello})
        events = _sse(r.text)
        assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
        r = c.post("/v1/messages", json={
            "model": "claude-x", "max_tokens": 50, "tools": [BASH_ANTHROPIC],
            "messages": [{"role": "user", "content": "use a tool"}]})
        assert r.json()["stop_reason"] == "tool_use"
        assert r.json()["content"][-1]["input"] == {"command": "echo codeswitch demo tool call"}
        # OpenAI Chat (translated to Anthropic and back)
        r = c.post("/v1/chat/completions", json={"model": "gpt-x", "messages": hello})
        assert "[codeswitch demo]" in r.json()["choices"][0]["message"]["content"]
        assert r.json()["usage"]["completion_tokens"] > 0
        r = c.post("/v1/chat/completions", json={
            "model": "gpt-x", "stream": True, "stream_options": {"include_usage": True},
            "tools": [{"type": "function", "function": SHELL_FN}],
            "messages": [{"role": "user", "content": "a tool, please"}]})
        chunks = _sse(r.text)
        calls = [tc for ch in chunks for choice in ch.get("choices", [])
                 for tc in choice["delta"].get("tool_calls", [])]
        args = "".join(tc["function"].get("arguments", "") for tc in calls)
        assert calls[0]["function"]["name"] == "shell"
        assert json.loads(args) == {"command": ["bash", "-lc", "echo codeswitch demo tool call"]}
        assert chunks[-1]["usage"]["completion_tokens"] > 0
        # OpenAI Responses (Codex's)
        r = c.post("/v1/responses", json={"model": "gpt-5-codex", "input": "hello gateway"})
        assert r.json()["status"] == "completed"
        assert "[codeswitch demo]" in r.json()["output"][0]["content"][0]["text"]
        r = c.post("/v1/responses", json={
            "model": "gpt-5-codex", "stream": True, "input": "run the tool",
            "tools": [{"type": "function", **SHELL_FN}]})
        kinds = [e["type"] for e in _sse(r.text)]
        assert "response.function_call_arguments.done" in kinds or \
            "response.output_item.done" in kinds
        assert kinds[-1] == "response.completed"
        # Gemini
        r = c.post("/v1beta/models/gemini-x:generateContent", json={
            "contents": [{"role": "user", "parts": [{"text": "hello gateway"}]}]})
        assert "[codeswitch demo]" in r.json()["candidates"][0]["content"]["parts"][0]["text"]
        r = c.post("/v1beta/models/gemini-x:streamGenerateContent?alt=sse", json={
            "contents": [{"role": "user", "parts": [{"text": "use a tool"}]}],
            "tools": [{"functionDeclarations": [{"name": "run_shell_command",
                                                 "parameters": {
                                                     "type": "object",
                                                     "properties": {"command": {
                                                         "type": "string"}},
                                                     "required": ["command"]}}]}]})
        parts = [p for ch in _sse(r.text) for cand in ch.get("candidates", [])
                 for p in cand.get("content", {}).get("parts", [])]
        call = next(p["functionCall"] for p in parts if "functionCall" in p)
        assert call == {"name": "run_shell_command",
                        "args": {"command": "echo codeswitch demo tool call"}} or \
            call["args"] == {"command": "echo codeswitch demo tool call"}
    wait_requests(gw.nats_url, 9)
    rows = ask(gw.nats_url, "breakdown", {"by": "dialect"})
    by = {r["key"]: r for r in rows}
    assert set(by) == {"anthropic", "openai-chat", "openai-responses", "gemini"}
    assert all(r["errors"] == 0 and r["output_tokens"] > 0 and r["input_tokens"] > 0
               for r in rows)
    assert [r["key"] for r in ask(gw.nats_url, "breakdown", {"by": "provider"})] == [DEMO_NAME]


def test_demo_is_registered_only_with_demo(nats_server: EmbeddedNats) -> None:
    async def go(nc: Any) -> list[tuple[str, str]]:
        seen = []
        lines = await first_run(nc, {}, audit=None, config_file=False, demo_port=40001)
        seen.append(("with", ",".join(p.name for p in await admin.list_providers(nc))))
        assert any("DEMO provider on" in line for line in lines)
        lines = await first_run(nc, {}, audit=None, config_file=False, demo_port=None)
        seen.append(("without", ",".join(p.name for p in await admin.list_providers(nc))))
        assert any("NO PROVIDER" in line for line in lines)
        return seen

    assert run_nats(nats_server.url, go) == [("with", "demo"), ("without", "")]


def test_environment_keys_become_providers_until_the_user_manages_them(
        nats_server: EmbeddedNats) -> None:
    env = {"ANTHROPIC_API_KEY": "sk-ant-SECRET", "GEMINI_API_KEY": "AIza-SECRET"}

    async def go(nc: Any) -> None:
        lines = await sync_env_providers(nc, env)
        assert lines == ["providers from the environment: anthropic (ANTHROPIC_API_KEY), "
                         "gemini (GEMINI_API_KEY)"]
        stored = {p.name: p for p in await admin.list_providers(nc)}
        assert {n: (p.api_key, p.source) for n, p in stored.items()} == {
            "anthropic": ("env:ANTHROPIC_API_KEY", "env"), "gemini": ("env:GEMINI_API_KEY", "env")}
        kv = await nc.jetstream().key_value("cs_providers")
        raw = b"".join([(await kv.get(n)).value or b"" for n in stored])
        assert b"SECRET" not in raw  # the reference, never the value
        # the variable gone: its provider goes
        await sync_env_providers(nc, {"ANTHROPIC_API_KEY": "sk-ant-SECRET"})
        assert [p.name for p in await admin.list_providers(nc)] == ["anthropic"]
        # a config file: nothing happens
        assert await sync_env_providers(nc, env, config_file=True) == []
        # a provider of the user's: nothing happens either
        await admin.put_provider(nc, ProviderConfig(name="mine", dialect="openai-chat",
                                                    base_url="http://127.0.0.1:9/v1"))
        assert await sync_env_providers(nc, env) == []
        assert {p.name for p in await admin.list_providers(nc)} == {"anthropic", "mine"}

    run_nats(nats_server.url, go)


# -- final errors -----------------------------------------------------------------------------

CLIENTS = {  # the headers each CLI sends that tell it apart (edge/identity.py)
    "claude-code": {"user-agent": "claude-cli/2.1.197 (external, cli)", "x-app": "cli"},
    "codex": {"originator": "codex_exec", "user-agent": "codex_exec/0.171.0"},
    "gemini-cli": {"user-agent": "GeminiCLI/0.61.0/gemini-2.5-pro (linux; x64)"},
    "sdk": {"user-agent": "OpenAI/Python 2.8.0"},
}
REQUESTS = {
    "anthropic": ("/v1/messages", {"model": "m", "max_tokens": 5,
                                   "messages": [{"role": "user", "content": "hi"}]}),
    "openai-chat": ("/v1/chat/completions", {"model": "m", "messages": [
        {"role": "user", "content": "hi"}]}),
    "openai-responses": ("/v1/responses", {"model": "m", "input": "hi"}),
    "gemini": ("/v1beta/models/m:generateContent", {"contents": [
        {"role": "user", "parts": [{"text": "hi"}]}]}),
}


def _message(dialect: str, doc: dict[str, Any]) -> str:
    return str(doc["error"]["message"])


@pytest.mark.parametrize(("client", "dialect", "status"), [
    ("claude-code", "anthropic", 424), ("codex", "openai-responses", 400),
    ("gemini-cli", "gemini", 424), ("sdk", "openai-chat", 503), ("sdk", "anthropic", 503)])
def test_no_provider_at_all_is_final_and_says_what_to_do(
        nats_server: EmbeddedNats, client: str, dialect: str, status: int) -> None:
    gw = Gateway(nats_server.url)
    try:
        path, body = REQUESTS[dialect]
        with gw.client(headers=CLIENTS[client]) as c:
            r = c.post(path, json=body)
        assert r.status_code == status, r.text
        assert r.headers["x-should-retry"] == "false"
        doc = r.json()
        message = _message(dialect, doc)
        assert "no provider is configured" in message and "codeswitch up --demo" in message
        if dialect == "anthropic":  # never overloaded_error: Claude Code retries that
            assert doc["error"]["type"] in ("api_error", "invalid_request_error")
        if dialect == "gemini":
            assert doc["error"]["code"] == 424 and doc["error"]["status"]
    finally:
        gw.stop()


def test_no_provider_for_the_model_names_what_is_served(nats_server: EmbeddedNats) -> None:
    gw = Gateway(nats_server.url)
    try:
        gw.add_provider(ProviderConfig(name="anthropic", dialect="anthropic",
                                       base_url="http://127.0.0.1:9", models=["claude-*"]))
        path, body = REQUESTS["openai-responses"]
        with gw.client(headers=CLIENTS["codex"]) as c:
            r = c.post(path, json={**body, "model": "gpt-5-codex"})
        assert r.status_code == 400 and r.headers["x-should-retry"] == "false"
        message = r.json()["error"]["message"]
        assert "no provider serves model 'gpt-5-codex'" in message
        assert "anthropic (claude-*)" in message
        with gw.client(headers=CLIENTS["gemini-cli"]) as c:
            r = c.post("/v1beta/models/gemini-2.5-pro:generateContent",
                       json=REQUESTS["gemini"][1])
        assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
    finally:
        gw.stop()


@pytest.mark.parametrize(("client", "dialect", "status"), [
    ("claude-code", "anthropic", 424), ("codex", "openai-responses", 400),
    ("gemini-cli", "gemini", 424), ("sdk", "anthropic", 429)])
def test_every_provider_failed_is_final_and_names_them(
        nats_server: EmbeddedNats, client: str, dialect: str, status: int) -> None:
    a, b = FakeUpstream("anthropic").start(), FakeUpstream("openai-chat").start()
    gw = Gateway(nats_server.url)
    try:
        a.default = Behavior(status=503)
        b.default = Behavior(status=429, headers={"retry-after": "7"})
        gw.add_provider(provider_for(a, "one", models=[]))
        gw.add_provider(provider_for(b, "two", models=[], priority=2))
        path, body = REQUESTS[dialect]
        with gw.client(headers=CLIENTS[client]) as c:
            r = c.post(path, json=body)
        assert r.status_code == status, r.text
        assert r.headers["x-should-retry"] == "false" and r.headers["retry-after"] == "7"
        message = _message(dialect, r.json())
        assert "every provider failed" in message and "not retried automatically" in message
        assert "one: 503 Service unavailable (fake upstream)" in message  # their own words
        assert "two: 429 Rate limit exceeded (fake upstream)" in message
        assert len(a.requests) == 1 and len(b.requests) == 1
    finally:
        gw.stop()
        a.stop()
        b.stop()


# -- provider test ----------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("dialect", ["anthropic", "openai-chat", "gemini"])
def test_provider_check_names_what_is_wrong(dialect: str) -> None:
    fake = FakeUpstream(dialect).start()
    try:
        good = provider_for(fake, "p", models=[])
        key = PROVIDER_KEYS[dialect]
        fake.require_key = key
        ok = check(good, key)
        assert ok.ok and ok.kind == "ok" and "models listed" in ok.message
        bad = check(good, "wrong-key")
        assert (bad.ok, bad.kind) == (False, "bad_key") and "401" in bad.message
        url = check(ProviderConfig(name="p", dialect=good.dialect,
                                   base_url=fake.root_url + "/nope"), key)
        assert (url.ok, url.kind) == (False, "bad_base_url"), url
        down = check(ProviderConfig(name="p", dialect=good.dialect,
                                    base_url=f"http://127.0.0.1:{_closed_port()}"), key)
        assert (down.ok, down.kind) == (False, "unreachable")
        assert "connection refused" in down.message
        gone = check(good, key, model="no-such-model")
        assert (gone.ok, gone.kind) == (False, "model_not_found")
        assert "no-such-model" in gone.message
        assert not check(good, None, why_no_key="its key is the variable X").ok
        assert all(key not in f.message for f in (ok, bad, url, down, gone))
    finally:
        fake.stop()


def test_provider_test_command(nats_server: EmbeddedNats, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    from codeswitch.cli import app

    fake = FakeUpstream("anthropic").start()
    fake.require_key = "the-right-key"
    monkeypatch.setenv("FH_GOOD_KEY", "the-right-key")
    monkeypatch.setenv("FH_BAD_KEY", "a-wrong-key")
    try:
        async def add(nc: Any) -> None:
            for name, var in (("good", "FH_GOOD_KEY"), ("bad", "FH_BAD_KEY")):
                await admin.put_provider(nc, ProviderConfig(
                    name=name, dialect="anthropic", base_url=fake.base_url,
                    api_key=f"env:{var}"))

        run_nats(nats_server.url, add)
        runner = CliRunner()
        common = ["--home", str(tmp_path), "--nats-url", nats_server.url]
        out = runner.invoke(app, ["provider", "test", "good", *common])
        assert out.exit_code == 0 and "✓ good" in out.output, out.output
        out = runner.invoke(app, ["provider", "test", "bad", *common])
        assert out.exit_code == 1 and "bad key" in out.output
        assert "a-wrong-key" not in out.output
        out = runner.invoke(app, ["provider", "test", "nope", *common])
        assert out.exit_code == 1 and "no provider named" in out.output
        # provider add checks what it saved
        out = runner.invoke(app, ["provider", "add", "third", "--dialect", "anthropic",
                                  "--base-url", f"http://127.0.0.1:{_closed_port()}",
                                  *common])
        assert out.exit_code == 0 and "saved" in out.output and "unreachable" in out.output
    finally:
        fake.stop()


# -- connect ----------------------------------------------------------------------------------

@pytest.fixture
def running_home(nats_server: EmbeddedNats, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory whose run.json says the gateway listens on port 19876 (as `up`
    writes it), and a HOME with Claude Code's directory."""
    home = tmp_path / "data"
    home.mkdir()
    (home / "run.json").write_text(json.dumps({
        "edge_url": "http://127.0.0.1:19876", "nats_url": nats_server.url, "pid": 1,
        "home": str(home), "embedded_nats": False}))
    user = tmp_path / "user"
    (user / ".claude").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(user))
    for var in ("CLAUDE_CONFIG_DIR", "CODEX_HOME", "GEMINI_CLI_HOME", "CODESWITCH_NATS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    return home


def _claude_env(home: Path) -> dict[str, str]:
    settings = Path(str(home.parent / "user" / ".claude" / "settings.json"))
    return dict(json.loads(settings.read_text())["env"])


def _connect(home: Path) -> Any:
    import typer

    from codeswitch.cli_clients import register

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """test app"""

    register(app)
    return CliRunner().invoke(app, ["connect", "claude", "--home", str(home)])


def test_connect_uses_the_running_gateways_port(running_home: Path) -> None:
    out = _connect(running_home)
    assert out.exit_code == 0, out.output
    assert _claude_env(running_home) == {"ANTHROPIC_BASE_URL": "http://127.0.0.1:19876",
                                         "ANTHROPIC_AUTH_TOKEN": "codeswitch-local"}


def test_connect_creates_the_persons_own_key_when_the_gateway_has_users(
        running_home: Path, nats_server: EmbeddedNats) -> None:
    from codeswitch import users as u
    from codeswitch.audit import AdminLog

    run_nats(nats_server.url, lambda nc: u.add_user(nc, AdminLog(nc), "someone-else"))
    out = _connect(running_home)
    assert out.exit_code == 2 and "no user named" in out.output and "--key" in out.output
    assert not (running_home.parent / "user" / ".claude" / "settings.json").exists()
    run_nats(nats_server.url, lambda nc: u.add_user(nc, AdminLog(nc), getpass.getuser()))
    out = _connect(running_home)
    assert out.exit_code == 0, out.output
    token = _claude_env(running_home)["ANTHROPIC_AUTH_TOKEN"]
    assert token.startswith("cs-") and "created key" in out.output

    async def keys(nc: Any) -> list[str]:
        d = await u.load(nc)
        return [k.hash for k in d.keys.values()]

    assert u.hash_secret(token) in run_nats(nats_server.url, keys)


def test_connect_refuses_when_the_gateway_wants_one_of_its_api_keys(
        running_home: Path, nats_server: EmbeddedNats) -> None:
    run_nats(nats_server.url, lambda nc: admin.put_settings(
        nc, GatewaySettings(key_hashes=["0" * 64])))
    out = _connect(running_home)
    assert out.exit_code == 2 and "api_keys" in out.output and "--key" in out.output

