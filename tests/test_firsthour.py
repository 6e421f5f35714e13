"""The first hour, without servers: providers from the environment, `codeswitch init`'s file,
the demo provider's answers, final errors per client, tables at 80 columns."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import msgspec
import pytest
from rich.console import Console
from typer.testing import CliRunner

from codeswitch.config import load_config
from codeswitch.demo import reply, sse_events
from codeswitch.envproviders import detect, found_line
from codeswitch.init_config import render_config
from codeswitch.probe import resolve_key
from codeswitch.tables import log_table, metrics_table, provider_table
from schemas.config import ProviderConfig
from schemas.errors import final_error, final_status

# -- providers from the environment ----------------------------------------------------------


def test_well_known_keys_become_providers_by_reference() -> None:
    env = {"ANTHROPIC_API_KEY": "sk-ant-secret-1", "OPENAI_API_KEY": "sk-secret-2",
           "GOOGLE_API_KEY": "AIza-secret-3", "OPENROUTER_API_KEY": "sk-or-4",
           "DEEPSEEK_API_KEY": "sk-ds-5", "UNRELATED": "x"}
    found = {p.name: (p, var) for p, var in detect(env)}
    assert set(found) == {"anthropic", "openai", "gemini", "openrouter", "deepseek"}
    for p, var in found.values():
        assert p.api_key == f"env:{var}" and p.source == "env"
        stored = msgspec.json.encode(p).decode()  # what goes to KV
        assert not any(secret in stored for secret in env.values() if secret != "x")
    assert found["gemini"][1] == "GOOGLE_API_KEY"  # GEMINI_API_KEY unset: the other one
    assert found["anthropic"][0].serves("claude-sonnet-4-5")
    assert not found["anthropic"][0].serves("gpt-5")
    assert found["openai"][0].serves("gpt-5-codex") and found["openai"][0].dialect == \
        "openai-responses"
    assert found["openrouter"][0].serves("anthropic/claude-sonnet-4.5")
    assert found["openrouter"][0].priority > found["anthropic"][0].priority
    assert "anthropic (ANTHROPIC_API_KEY)" in found_line(detect(env))


def test_gemini_key_preferred_and_placeholders_ignored() -> None:
    both = detect({"GEMINI_API_KEY": "g1", "GOOGLE_API_KEY": "g2"})
    assert [(p.name, var) for p, var in both] == [("gemini", "GEMINI_API_KEY")]
    # what `codeswitch connect` writes, and this gateway's own keys, are not provider keys
    assert detect({"GEMINI_API_KEY": "codeswitch-local", "ANTHROPIC_API_KEY": "cs-abc",
                   "OPENAI_API_KEY": "  "}) == []
    assert "no provider key" in found_line([])


def test_resolve_key_reads_the_variable_never_stores_it() -> None:
    p = ProviderConfig(name="a", dialect="anthropic", base_url="https://x",
                       api_key="env:SOME_KEY")
    assert resolve_key(p, environ={"SOME_KEY": "v"}) == ("v", None)
    key, why = resolve_key(p, environ={})
    assert key is None and why is not None and "SOME_KEY" in why and "not set" in why


# -- codeswitch init --------------------------------------------------------------------------


def test_init_config_is_valid_and_commented(tmp_path: Path) -> None:
    text = render_config({"anthropic": "ANTHROPIC_API_KEY", "gemini": "GOOGLE_API_KEY"},
                         port=18555)
    path = tmp_path / "config.toml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.port == 18555
    assert [(p.name, p.api_key, p.source) for p in cfg.providers] == [
        ("anthropic", "env:ANTHROPIC_API_KEY", "config"), ("gemini", "env:GOOGLE_API_KEY",
                                                           "config")]
    assert "# [[providers]]" in text and '# name = "openai"' in text  # the others, commented
    empty = render_config({})
    assert tomllib.loads(empty)["gateway"]["port"] == 18100
    assert "codeswitch up --demo" in empty


def test_init_command_never_overwrites_without_asking(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import typer

    from codeswitch.cli_firsthour import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY",
                "OPENROUTER_API_KEY", "DEEPSEEK_API_KEY", "MISTRAL_API_KEY", "XAI_API_KEY",
                "GROQ_API_KEY", "MOONSHOT_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-value")
    target = tmp_path / "home" / "config.toml"
    out = runner.invoke(app, ["init", "--home", str(tmp_path / "home"), "--yes"])
    assert out.exit_code == 0, out.output
    text = target.read_text()
    assert 'api_key = "env:OPENAI_API_KEY"' in text and "sk-test-secret-value" not in text
    assert target.stat().st_mode & 0o777 == 0o600
    target.write_text("# mine\n")
    out = runner.invoke(app, ["init", "--home", str(tmp_path / "home"), "--yes"])
    assert out.exit_code == 1 and "kept as it is" in out.output
    assert target.read_text() == "# mine\n"
    # in a terminal: a question per provider found, then whether to overwrite; "no" keeps it
    import codeswitch.cli_firsthour as cf

    monkeypatch.setattr(cf, "_tty", lambda: True)
    out = runner.invoke(app, ["init", "--home", str(tmp_path / "home")], input="y\nn\n")
    assert "use openai (key from OPENAI_API_KEY)?" in out.output and "Overwrite" in out.output
    assert out.exit_code == 1 and target.read_text() == "# mine\n"
    out = runner.invoke(app, ["init", "--home", str(tmp_path / "home")], input="n\ny\n")
    assert out.exit_code == 0, out.output
    assert [p.name for p in load_config(target).providers] == []  # openai declined
    assert (tmp_path / "home" / "config.toml.bak").read_text() == "# mine\n"
    target.write_text("# mine\n")
    monkeypatch.setattr(cf, "_tty", lambda: False)
    out = runner.invoke(app, ["init", "--home", str(tmp_path / "home"), "--force",
                              "--provider", "anthropic"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "home" / "config.toml.bak").read_text() == "# mine\n"
    assert [p.name for p in load_config(target).providers] == ["anthropic"]
    out = runner.invoke(app, ["init", "--stdout", "--provider", "nope"])
    assert out.exit_code == 2 and "unknown provider" in out.output


# -- the demo provider ------------------------------------------------------------------------

BASH = {"name": "Bash", "input_schema": {"type": "object", "properties": {
    "command": {"type": "string"}, "timeout": {"type": "number"}}, "required": ["command"]}}


def test_demo_answers_text_with_usage() -> None:
    doc = {"model": "any-model-at-all", "messages": [{"role": "user", "content": "hi there"}]}
    m = reply(doc, 400)
    assert m["model"] == "any-model-at-all" and m["stop_reason"] == "end_turn"
    text = m["content"][0]["text"]
    assert text.startswith("[codeswitch demo]") and "hi there" in text
    assert m["usage"]["input_tokens"] == 100 and m["usage"]["output_tokens"] > 10


def test_demo_calls_a_tool_when_asked_and_reads_its_result() -> None:
    doc = {"model": "m", "tools": [{"name": "Read", "input_schema": {}}, BASH],
           "messages": [{"role": "user", "content": [{"type": "text",
                                                      "text": "Use a tool please"}]}]}
    m = reply(doc, 100)
    call = m["content"][-1]
    assert m["stop_reason"] == "tool_use" and call["type"] == "tool_use"
    assert call["name"] == "Bash" and call["input"] == {
        "command": "echo codeswitch demo tool call"}
    doc["messages"] += [{"role": "assistant", "content": m["content"]},
                        {"role": "user", "content": [{"type": "tool_result",
                                                      "tool_use_id": call["id"],
                                                      "content": "codeswitch demo tool call"}]}]
    again = reply(doc, 100)
    assert again["stop_reason"] == "end_turn"
    assert "The tool answered: 'codeswitch demo tool call'" in again["content"][0]["text"]
    # no tools offered, or not asked: text
    assert reply({"model": "m", "messages": [{"role": "user", "content": "a tool?"}]},
                 10)["stop_reason"] == "end_turn"


def test_demo_stream_events_follow_anthropics_grammar() -> None:
    doc = {"model": "m", "tools": [BASH],
           "messages": [{"role": "user", "content": "run a tool"}]}
    m = reply(doc, 100)
    events = [e.decode() for e in sse_events(m)]
    kinds = [e.split("\n")[0].removeprefix("event: ") for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    datas = [json.loads(e.split("data: ", 1)[1]) for e in events]
    text = "".join(d["delta"]["text"] for d in datas
                   if d["type"] == "content_block_delta" and d["delta"]["type"] == "text_delta")
    assert text == m["content"][0]["text"]
    args = "".join(d["delta"]["partial_json"] for d in datas
                   if d["type"] == "content_block_delta"
                   and d["delta"]["type"] == "input_json_delta")
    assert json.loads(args) == m["content"][1]["input"]
    assert datas[-2]["usage"]["output_tokens"] == m["usage"]["output_tokens"]
    assert datas[-2]["delta"]["stop_reason"] == "tool_use"


# -- final errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(("client", "status", "expected"), [
    ("claude-code", 503, 424), ("claude-code", 529, 424), ("claude-code", 404, 404),
    ("claude-code", 429, 424), ("anthropic-sdk", 529, 503),
    ("codex", 503, 400), ("codex", 404, 400), ("codex", 429, 400),
    ("gemini-cli", 503, 424), ("gemini-cli", 429, 424), ("gemini-cli", 404, 404),
    ("anthropic-sdk", 502, 502), (None, 503, 503),
])
def test_final_status_is_one_each_client_stops_at(client: str | None, status: int,
                                                  expected: int) -> None:
    assert final_status(status, client) == expected


def test_final_error_is_never_overloaded_for_claude_code() -> None:
    status, body, headers = final_error("anthropic", 503, "no provider", client="anthropic-sdk",
                                        code="no_provider", request_id="r1")
    doc = json.loads(body)
    assert status == 503 and headers == {"x-should-retry": "false"}
    assert doc["error"]["type"] == "api_error"  # overloaded_error: Claude Code retries it
    status, body, _ = final_error("anthropic", 503, "no provider", client="claude-code")
    assert status == 424 and json.loads(body)["error"]["type"] == "invalid_request_error"
    status, body, _ = final_error("openai-responses", 503, "no provider", client="codex",
                                  code="no_provider")
    assert status == 400 and json.loads(body)["error"]["code"] == "no_provider"
    status, body, _ = final_error("gemini", 503, "no provider", client="gemini-cli")
    assert status == 424 and json.loads(body)["error"]["code"] == 424


# -- 80 columns -------------------------------------------------------------------------------

NOW = time.mktime((2026, 12, 3, 18, 0, 0, 0, 0, -1))
LOG_ROWS = [
    {"ts": NOW - 3600 * i, "provider": p, "model": m, "upstream_model": m, "status": s,
     "ok": s < 400, "error_class": e, "input_tokens": 1234 * (i + 1), "cache_read_tokens":
     100_000, "cache_write_tokens": 0, "output_tokens": 456, "cost": 0.01234 * i,
     "ttfb_ms": 812.0, "duration_ms": 4567.0, "user": "alice", "user_id": None,
     "key_id": None, "request_id": f"01a23cccbc449af96a8054d{i}"}
    for i, (p, m, s, e) in enumerate([
        ("anthropic-main", "claude-sonnet-4-5-20250929", 200, None),
        ("openrouter", "anthropic/claude-3.7-sonnet:thinking", 502, "stream_error"),
        ("demo", "gpt-5-codex", 200, None)])]


def _render(table: object, width: int) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    console.print(table)
    return console.export_text().splitlines()


SNAPSHOTS = Path(__file__).parent / "fixtures" / "tables"


@pytest.mark.parametrize("width", [80, 120])
def test_log_snapshot(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole table, as a terminal of that width shows it (rows in the local time zone of
    NOW, which is built from a local time: the same text everywhere)."""
    text = "\n".join(_render(log_table(LOG_ROWS, {}, width, NOW), width)) + "\n"
    assert text == (SNAPSHOTS / f"log_{width}.txt").read_text()


def test_log_at_80_columns_keeps_every_column_readable() -> None:
    lines = _render(log_table(LOG_ROWS, {}, 80, NOW), 80)
    assert max(len(line) for line in lines) <= 80
    header = lines[0].split()
    assert header == ["time", "provider", "model", "status", "tok", "in/out", "cost", "took"]
    body = "\n".join(lines[2:])
    assert "16:00:00" in body and "2026-" not in body  # today: the time of day
    assert "claude-sonnet-4-5 " in body  # the date suffix dropped, not "claude-son…"
    assert "openrouter" in body and "demo" in body and "gpt-5-codex" in body
    assert "$0.0247" in body and "4.6s" in body and "101.2k/456" in body
    assert all("…" not in cell for cell in header)
    wide = "\n".join(_render(log_table(LOG_ROWS, {}, 200, NOW), 200))
    assert "01a23cccbc449af96a8054d1" in wide and "812ms" in wide and "alice" in wide
    assert "claude-sonnet-4-5-20250929" in wide and "2026-12-03 16:00:00" in wide


def test_stats_by_at_80_columns() -> None:
    rows = [{"key": "anthropic-main-with-a-long-name", "requests": 1234, "errors": 12,
             "error_rate": 0.0097, "input_tokens": 1_234_567, "cache_read_tokens": 99_999,
             "cache_write_tokens": 1234, "output_tokens": 45_678, "cost": 12.345,
             "unpriced_requests": 1, "p50_latency_ms": 2345, "p95_latency_ms": 12_345,
             "p50_ttfb_ms": 800}]
    lines = _render(metrics_table("By provider", "provider", rows, 80, NOW), 80)
    assert max(len(line) for line in lines) <= 80
    assert lines[1].split() == ["provider", "reqs", "errors", "tok", "in", "out", "cost", "p50"]
    assert "anthropic-main-with-a-long-name" in lines[3] and "$12.35 *" in lines[3]
    assert "1.2M" in lines[3] and "2.3s" in lines[3] and "12 (1%)" in lines[3]
    wide = _render(metrics_table("By provider", "provider", rows, 160, NOW), 160)
    assert "p95" in wide[1] and "ttfb p50" in wide[1] and "12.3s" in wide[3]


def test_provider_list_at_80_columns_shows_env_references() -> None:
    providers = [p for p, _ in detect({"ANTHROPIC_API_KEY": "k", "OPENROUTER_API_KEY": "k"})]
    providers.append(ProviderConfig(name="demo", dialect="anthropic",
                                    base_url="http://127.0.0.1:45783", source="demo",
                                    priority=1000))
    providers.append(ProviderConfig(name="mine", dialect="openai-chat", enabled=False,
                                    base_url="https://llm.example.com/v1", api_key="lit"))
    keys = {p.name: p.masked().api_key for p in providers}
    lines = _render(provider_table(providers, keys, 80), 80)
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    assert "env:ANTHROPIC_API_KEY" in text and "env:OPENROUTER_API_KEY" in text
    assert "api.anthropic.com" in text and "mine (off)" in text and "demo" in text


def test_demo_answers_what_the_person_typed_not_claude_codes_reminders() -> None:
    """Claude Code puts <system-reminder> blocks (which talk about tools) before the prompt."""
    doc = {"model": "m", "tools": [BASH], "messages": [{"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>use the Bash tool when</system-reminder>"},
        {"type": "text", "text": "Say hello"}]},
        # Claude Code 2.1 ends with a system message (the agent types: "Tools: *")
        {"role": "system", "content": "Available agent types for the Agent tool: ..."}]}
    m = reply(doc, 10)
    assert m["stop_reason"] == "end_turn" and "'Say hello'" in m["content"][0]["text"]
    assert "system-reminder" not in m["content"][0]["text"]


# -- start at login ---------------------------------------------------------------------------


def test_service_install_status_uninstall_with_systemd(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A systemctl that records its calls stands in for systemd (the unit is the real one)."""
    import os
    import sys

    from codeswitch import service

    if sys.platform == "darwin":
        pytest.skip("the systemd unit; macOS writes a launchd agent")
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "systemctl"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho active\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    home = tmp_path / "home"
    lines = service.install(home, 18200, None)
    unit = tmp_path / "cfg" / "systemd" / "user" / "codeswitch.service"
    text = unit.read_text()
    assert f"--home {home} --port 18200" in text and "KillSignal=SIGINT" in text
    assert f"EnvironmentFile=-{home / 'service.env'}" in text
    assert "WantedBy=default.target" in text and "journalctl --user" in lines[-1]
    assert calls.read_text().splitlines() == ["--user daemon-reload",
                                              "--user enable --now codeswitch.service"]
    assert service.status()[0] is True
    assert "removed" in service.uninstall()[0] and not unit.exists()
    assert "--user disable --now codeswitch.service" in calls.read_text()
    assert service.status()[0] is False


def test_app_json_auto_start_is_honoured_once(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import sys

    from codeswitch import service

    if sys.platform == "darwin":
        pytest.skip("the systemd unit")
    fake = tmp_path / "bin" / "systemctl"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    home = tmp_path / "home"
    home.mkdir()
    assert service.auto_start_once(home, None, None) is None  # no app.json
    (home / "app.json").write_text('{"auto_start": true}')
    line = service.auto_start_once(home, None, None)
    assert line is not None and "starts at login" in line and service.service_file().exists()
    service.uninstall()
    assert service.auto_start_once(home, None, None) is None  # once: uninstall sticks
    assert not service.service_file().exists()


def test_shell_completion_knows_every_command() -> None:
    """`codeswitch --install-completion` installs a script that calls the program back like
    this; the plugin commands (doctor, init, service, …) complete too."""
    import os
    import subprocess
    import sys

    def complete(words: str) -> list[str]:
        env = {**os.environ, "_CODESWITCH_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - 1)}
        script = Path(sys.executable).parent / "codeswitch"  # the installed command
        out = subprocess.run([str(script)], env=env, text=True, capture_output=True,
                             timeout=60)
        return out.stdout.split()

    assert complete("codeswitch do") == ["doctor"]
    assert complete("codeswitch pro") == ["provider"]
    assert "test" in complete("codeswitch provider te")


def test_log_shows_the_route_column_only_when_a_rule_chose() -> None:
    routed = [{**row, "route": "background" if i == 0 else None}
              for i, row in enumerate(LOG_ROWS)]
    for width in (80, 120):
        lines = _render(log_table(routed, {}, width, NOW), width)
        assert max(len(line) for line in lines) <= width
        assert lines[0].split()[:3] == ["time", "provider", "route"]
        assert "background" in "\n".join(lines)
    assert "route" not in _render(log_table(LOG_ROWS, {}, 120, NOW), 120)[0]
