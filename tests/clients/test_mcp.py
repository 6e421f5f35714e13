"""MCP: the pure sync into both formats, the files on a real HOME, and the NATS KV store."""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path

import pytest

from codeswitch.clients.mcp import CLAUDE, CODEX, McpServer, sync_text
from codeswitch.clients.mcp_files import apply_sync, plan_sync
from codeswitch.clients.mcp_store import open_store
from codeswitch.clients.paths import ClientPaths
from runtime.natsd import EmbeddedNats
from tests.clients.conftest import CLAUDE_JSON, CODEX_CONFIG, snapshot

DOCS = McpServer(name="docs", command="npx", args=["-y", "docs-mcp"], env={"TOKEN": "t"})
API = McpServer(name="api", transport="http", url="https://mcp.example.com/mcp",
                headers={"Authorization": "Bearer x"})
LEGACY = McpServer(name="legacy", transport="sse", url="https://old.example.com/sse")


def test_claude_format_keeps_hand_added_servers() -> None:
    r = sync_text(CLAUDE, CLAUDE_JSON, Path("c.json"), [DOCS, API, LEGACY], {})
    data = json.loads(r.new or "")
    assert data["mcpServers"]["docs"] == {"type": "stdio", "command": "npx",
                                          "args": ["-y", "docs-mcp"], "env": {"TOKEN": "t"}}
    assert data["mcpServers"]["api"] == {"type": "http", "url": "https://mcp.example.com/mcp",
                                         "headers": {"Authorization": "Bearer x"}}
    assert data["mcpServers"]["legacy"] == {"type": "sse", "url": "https://old.example.com/sse"}
    assert set(r.hand_added) == {"github", "fs"}
    assert data["numStartups"] == 42 and data["projects"]
    # removing everything of ours gives the original file back, byte for byte
    back = sync_text(CLAUDE, r.new, Path("c.json"), [], r.owned)
    assert back.new == CLAUDE_JSON


def test_codex_format_keeps_hand_added_servers_and_skips_sse() -> None:
    disabled = McpServer(name="off", command="uvx", args=["off-mcp"], enabled=False)
    r = sync_text(CODEX, CODEX_CONFIG, Path("config.toml"), [DOCS, API, LEGACY, disabled], {})
    data = tomllib.loads(r.new or "")
    assert data["mcp_servers"]["docs"] == {"command": "npx", "args": ["-y", "docs-mcp"],
                                           "env": {"TOKEN": "t"}}
    assert data["mcp_servers"]["api"] == {"url": "https://mcp.example.com/mcp",
                                          "http_headers": {"Authorization": "Bearer x"}}
    assert "legacy" not in data["mcp_servers"]  # Codex has no SSE transport
    assert data["mcp_servers"]["off"]["enabled"] is False
    assert data["mcp_servers"]["context7"]["env"] == {"DEBUG": "1"}  # hand-added, kept
    assert list(r.hand_added) == ["context7"]
    assert "# servers I added myself" in (r.new or "")
    back = sync_text(CODEX, r.new, Path("config.toml"), [], r.owned)
    assert back.new == CODEX_CONFIG


def test_same_name_as_a_hand_added_server_is_not_written_over() -> None:
    mine = McpServer(name="github", command="my-github")
    r = sync_text(CLAUDE, CLAUDE_JSON, Path("c.json"), [mine], {})
    assert r.new == CLAUDE_JSON and r.owned == {}
    assert "already exists" in r.notes[0] and "left as is" in r.notes[0]


def test_an_entry_edited_by_hand_is_left_alone() -> None:
    r = sync_text(CLAUDE, CLAUDE_JSON, Path("c.json"), [DOCS], {})
    edited = (r.new or "").replace('"docs-mcp"', '"docs-mcp", "--verbose"')
    r2 = sync_text(CLAUDE, edited, Path("c.json"), [], r.owned)
    assert r2.new == edited
    assert "edited by hand" in r2.notes[0]


def test_invalid_servers_are_refused() -> None:
    from codeswitch.clients._errors import McpError

    with pytest.raises(McpError, match="needs a command"):
        McpServer(name="x").check()
    with pytest.raises(McpError, match="invalid server name"):
        McpServer(name="a b", command="x").check()
    with pytest.raises(McpError, match="http\\(s\\) url"):
        McpServer(name="x", transport="http", url="ftp://x").check()


def test_files_sync_on_a_real_home_and_back(home: Path, data_dir: Path) -> None:
    before = snapshot(home)
    paths = ClientPaths.discover()
    results = plan_sync([DOCS, API], data_dir, paths)
    apply_sync(results, data_dir)
    claude = json.loads((home / ".claude.json").read_text())
    assert {"github", "fs", "docs", "api"} <= set(claude["mcpServers"])
    codex = tomllib.loads((home / ".codex" / "config.toml").read_text())
    assert {"context7", "docs", "api"} == set(codex["mcp_servers"])
    assert len(list((data_dir / "backups").iterdir())) == 2
    apply_sync(plan_sync([], data_dir, paths), data_dir)
    assert snapshot(home) == before


def test_mcp_sync_and_connect_share_config_toml(home: Path, data_dir: Path, run) -> None:
    before = snapshot(home)
    paths = ClientPaths.discover()
    run("connect", "codex")
    apply_sync(plan_sync([DOCS], data_dir, paths), data_dir)
    run("disconnect", "codex")  # key by key: our provider goes, the MCP server stays
    codex = tomllib.loads((home / ".codex" / "config.toml").read_text())
    assert "model_provider" not in codex and "codeswitch" not in codex["model_providers"]
    assert "docs" in codex["mcp_servers"]
    apply_sync(plan_sync([], data_dir, paths), data_dir)
    assert snapshot(home) == before


def test_malformed_claude_json_stops_the_whole_sync(home: Path, data_dir: Path) -> None:
    (home / ".claude.json").write_text('{"mcpServers": {"x": }}')
    before = snapshot(home)
    from codeswitch.clients._errors import MalformedConfigError

    with pytest.raises(MalformedConfigError, match="left untouched"):
        plan_sync([DOCS], data_dir, ClientPaths.discover())
    assert snapshot(home) == before


def test_a_client_writing_its_file_meanwhile_is_never_overwritten(
        home: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Claude Code rewrites ~/.claude.json while it runs. A write between our read and our
    rename must not be lost: the stale plan is refused (FileChangedError, nothing written),
    and the sync done again from the new text keeps both."""
    from codeswitch import cli_clients
    from codeswitch.clients._errors import FileChangedError

    paths = ClientPaths.discover()
    claude_json = home / ".claude.json"
    stale = plan_sync([DOCS], data_dir, paths)
    doc = json.loads(claude_json.read_text())
    doc["numStartups"] = 99  # Claude Code, meanwhile
    claude_json.write_text(json.dumps(doc, indent=2))
    theirs = claude_json.read_text()
    with pytest.raises(FileChangedError, match="left as the other program wrote it"):
        apply_sync(stale, data_dir)
    assert claude_json.read_text() == theirs
    assert not list(claude_json.parent.glob(".claude.json.*.tmp"))

    # through the CLI's sync: the first plan goes stale, the second one lands
    real_plan = cli_clients.plan_sync
    calls = []

    def racing_plan(*args, **kwargs):  # type: ignore[no-untyped-def]
        results = real_plan(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            d = json.loads(claude_json.read_text())
            d["numStartups"] = 100
            claude_json.write_text(json.dumps(d, indent=2))
        return results

    monkeypatch.setattr(cli_clients, "plan_sync", racing_plan)
    cli_clients._sync([DOCS], data_dir)
    final = json.loads(claude_json.read_text())
    assert len(calls) == 2
    assert final["numStartups"] == 100 and "docs" in final["mcpServers"]


async def test_store_round_trip_over_real_nats(nats_server: EmbeddedNats) -> None:
    async with open_store(nats_server.url) as store:
        assert await store.list() == []
        await store.put(DOCS)
        await store.put(API)
        assert [s.name for s in await store.list()] == ["api", "docs"]
        assert await store.get("docs") == DOCS
        assert await store.delete("docs") is True
        assert await store.delete("docs") is False
        assert [s.name for s in await store.list()] == ["api"]


def test_cli_add_list_disable_remove(home: Path, data_dir: Path, run,
                                     nats_server: EmbeddedNats) -> None:
    before = snapshot(home)
    url = nats_server.url
    result = run("mcp", "add", "docs", "--nats-url", url, "-e", "TOKEN=t", "--",
                 "npx", "-y", "docs-mcp")
    assert result.exit_code == 0, result.output
    result = run("mcp", "add", "api", "--nats-url", url, "--url", "https://mcp.example.com/mcp",
                 "-H", "Authorization: Bearer x")
    assert result.exit_code == 0, result.output
    claude = json.loads((home / ".claude.json").read_text())["mcpServers"]
    assert claude["docs"]["args"] == ["-y", "docs-mcp"] and claude["api"]["type"] == "http"
    listing = run("mcp", "list", "--nats-url", url).output
    for name in ("docs", "api", "github", "fs", "context7"):
        assert name in listing
    assert listing.count("hand") == 3  # github, fs (Claude Code) and context7 (Codex)
    assert run("mcp", "add", "docs", "--nats-url", url, "--", "x").exit_code == 1
    run("mcp", "disable", "docs", "--nats-url", url)
    assert "docs" not in json.loads((home / ".claude.json").read_text())["mcpServers"]
    codex = tomllib.loads((home / ".codex" / "config.toml").read_text())
    assert codex["mcp_servers"]["docs"]["enabled"] is False
    removed = run("mcp", "remove", "github", "--nats-url", url)
    assert removed.exit_code == 1 and "left to you" in removed.output
    run("mcp", "remove", "docs", "--nats-url", url)
    run("mcp", "remove", "api", "--nats-url", url)
    assert snapshot(home) == before


def test_cli_without_a_running_gateway_fails_cleanly(home: Path, run) -> None:
    before = snapshot(home)
    result = run("mcp", "add", "docs", "--nats-url", "nats://127.0.0.1:1", "--", "npx", "d")
    assert result.exit_code == 1
    assert "gateway not running: start it with `codeswitch up` or pass --nats-url" in \
        result.output
    assert "Traceback" not in result.output
    assert snapshot(home) == before


def test_dry_run_sync_prints_diff(home: Path, data_dir: Path, run,
                                  nats_server: EmbeddedNats) -> None:
    async def seed() -> None:
        async with open_store(nats_server.url) as store:
            await store.put(DOCS)

    asyncio.run(seed())
    before = snapshot(home)
    result = run("mcp", "sync", "--dry-run", "--nats-url", nats_server.url)
    assert '+[mcp_servers.docs]' in result.output and '+    "docs": {' in result.output
    assert snapshot(home) == before
