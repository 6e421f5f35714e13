"""`codeswitch user|key|audit` and every other admin command against a real nats-server and a
real ledger: each admin action lands in `codeswitch audit` exactly once, with its actor."""

from __future__ import annotations

import asyncio
import getpass
import json
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from codeswitch import cli
from codeswitch.users import load
from runtime import bus, names
from tests.e2e.gateway import run_nats
from tests.users.conftest import caught_up

runner = CliRunner()


def _app() -> typer.Typer:
    """The real CLI with every command module registered."""
    have = {g.name for g in cli.app.registered_groups} | {
        c.name for c in cli.app.registered_commands}
    if "user" not in have or "alerts" not in have:
        cli._register_plugins(["--help"])
    return cli.app


class Cli:
    def __init__(self, url: str, home: Path, tmp: Path) -> None:
        self.url, self.home = url, home
        self.env = {"HOME": str(tmp / "userhome"), "CODESWITCH_HOME": str(home),
                    "CODESWITCH_NATS_URL": url, "COLUMNS": "200"}

    def __call__(self, *args: str, ok: bool = True) -> Result:
        out = runner.invoke(_app(), list(args), env=self.env)
        if ok:
            assert out.exit_code == 0, (args, out.output, out.exception)
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self(*args).stdout)


@pytest.fixture
def cs(ledger: tuple[str, Path], tmp_path: Path) -> Cli:
    url, home = ledger
    return Cli(url, home, tmp_path)


def test_users_and_keys(cs: Cli) -> None:
    out = cs("user", "add", "alice", "--admin", "--display-name", "Alice A.")
    assert "alice is the first user" in out.output
    cs("user", "add", "bob", "--budget", "5usd/day", "--rpm", "10")
    bad = cs("user", "add", "alice", ok=False)
    assert bad.exit_code == 1 and "a user named 'alice' exists" in bad.output
    assert cs("user", "add", "no way", ok=False).exit_code == 1
    assert "budget" in cs("user", "add", "carol", "--budget", "lots", ok=False).output
    users = {u["name"]: u for u in cs.json("user", "list", "--json")}
    assert users["alice"]["role"] == "admin" and users["alice"]["display_name"] == "Alice A."
    assert users["bob"]["limits"] == {"budget": {"amount": 5.0, "unit": "usd",
                                                 "period": "day"}, "rpm": 10}

    made = cs.json("key", "create", "--user", "alice", "--name", "laptop", "--models",
                   "claude-*", "--expires", "30d", "--json")
    secret = made["key"]
    assert secret.startswith("cs-") and made["prefix"] == secret[:7]
    assert made["models"] == ["claude-*"] and made["expires"] > time.time() + 29 * 86400
    plain = cs("key", "create", "--user", "bob")
    assert plain.stdout.strip().startswith("cs-")  # the secret alone on stdout
    assert "shown this once" in plain.stderr
    assert "no user named 'nobody'" in cs("key", "create", "--user", "nobody", ok=False).output
    dup = cs("key", "create", "--user", "alice", "--name", "laptop", ok=False)
    assert "has a key named 'laptop' already" in dup.output

    async def stored(nc: Any) -> Any:
        return await load(nc)

    d = run_nats(cs.url, stored)
    assert all(secret not in k.hash and secret[7:] not in str(k) for k in d.keys.values())
    keys = {f"{k['user']}/{k['name']}": k for k in cs.json("key", "list", "--json")}
    assert set(keys) == {"alice/laptop", "bob/key-1"}
    assert all(k["state"] == "active" for k in keys.values())
    assert secret not in cs("key", "list").output

    cs("key", "update", "alice/laptop", "--models", "claude-*,gpt-5*", "--expires", "never")
    cs("key", "update", keys["bob/key-1"]["id"], "--rpm", "20")
    cs("key", "revoke", "alice/laptop")
    assert "revoked already" in cs("key", "revoke", "alice/laptop", ok=False).output
    keys = {f"{k['user']}/{k['name']}": k for k in cs.json("key", "list", "--json")}
    assert keys["alice/laptop"]["state"] == "revoked"
    assert keys["alice/laptop"]["models"] == ["claude-*", "gpt-5*"]
    assert keys["alice/laptop"]["expires"] is None
    assert keys["bob/key-1"]["limits"] == {"rpm": 20}
    # a new key of the revoked one's name is fine
    cs("key", "create", "--user", "alice", "--name", "laptop")

    cs("user", "disable", "bob")
    assert "disabled already" in cs("user", "disable", "bob").output
    cs("user", "enable", "bob")
    cs("user", "promote", "bob")
    cs("user", "demote", "bob")
    cs("user", "update", "bob", "--display-name", "Bob B.", "--budget", "none")
    out = cs("user", "remove", "bob")
    assert "with 1 key(s)" in out.output
    assert {u["name"] for u in cs.json("user", "list", "--json")} == {"alice"}
    assert {k["user"] for k in cs.json("key", "list", "--json")} == {"alice"}
    assert "last user" in cs("user", "remove", "alice").output


def _skill_repo(tmp: Path) -> Path:
    repo = tmp / "skills-src"
    (repo / "skills" / "pdf").mkdir(parents=True)
    (repo / "skills" / "pdf" / "SKILL.md").write_text(
        "---\nname: pdf\ndescription: Read PDFs\n---\nUse pdftotext.\n")
    return repo


def test_every_admin_action_is_in_the_audit_once(cs: Cli, tmp_path: Path) -> None:
    """Each command below is one admin action (user remove is two: its key goes too)."""
    url = cs.url
    steps: list[tuple[tuple[str, ...], list[tuple[str, str]]]] = [
        (("user", "add", "alice", "--admin"), [("user.created", "user:alice")]),
        (("user", "add", "bob"), [("user.created", "user:bob")]),
        (("key", "create", "--user", "bob", "--name", "ci"), [("key.created", "key:bob/ci")]),
        (("key", "update", "bob/ci", "--models", "gpt-*"), [("key.updated", "key:bob/ci")]),
        (("key", "update", "bob/ci", "--tpm", "1000"), [("limit.changed", "key:bob/ci")]),
        (("user", "update", "bob", "--rpm", "5"), [("limit.changed", "user:bob")]),
        (("user", "update", "bob", "--display-name", "B"), [("user.updated", "user:bob")]),
        (("user", "disable", "bob"), [("user.disabled", "user:bob")]),
        (("user", "enable", "bob"), [("user.enabled", "user:bob")]),
        (("user", "promote", "bob"), [("user.promoted", "user:bob")]),
        (("user", "demote", "bob"), [("user.demoted", "user:bob")]),
        (("key", "create", "--user", "alice", "--name", "a"), [("key.created", "key:alice/a")]),
        (("key", "revoke", "alice/a"), [("key.revoked", "key:alice/a")]),
        (("user", "remove", "bob"), [("key.revoked", "key:bob/ci"),
                                     ("user.removed", "user:bob")]),
        (("provider", "add", "p1", "--dialect", "anthropic", "--base-url", "http://127.0.0.1:9",
          "--api-key", "sk-literal-SECRET-1"), [("provider.added", "provider:p1")]),
        (("provider", "add", "p1", "--dialect", "anthropic", "--base-url", "http://127.0.0.1:8",
          "--api-key", "env:P1_KEY"), [("provider.updated", "provider:p1")]),
        (("provider", "disable", "p1"), [("provider.disabled", "provider:p1")]),
        (("provider", "enable", "p1"), [("provider.enabled", "provider:p1")]),
        (("use", "p1", "--client", "claude"), [("active.changed", "setting:active")]),
        (("use", "--clear"), [("active.changed", "setting:active")]),
        (("unified", "on", "--url", "http://127.0.0.1:7", "--token", "tok-SECRET"),
         [("unified.changed", "setting:unified")]),
        (("unified", "off"), [("unified.changed", "setting:unified")]),
        (("alerts", "add", "errs", "--metric", "error_rate", "--threshold", "20%"),
         [("rule.added", "rule:errs")]),
        (("alerts", "add", "errs", "--metric", "error_rate", "--threshold", "30%",
          "--replace", "--channel", "https://hooks.example/T0KEN"),
         [("rule.updated", "rule:errs")]),
        (("alerts", "remove", "errs"), [("rule.removed", "rule:errs")]),
        (("mcp", "add", "docs", "--url", "https://mcp.example/x", "--header",
          "Authorization: Bearer HDR-SECRET", "--no-sync"), [("mcp.added", "mcp:docs")]),
        (("mcp", "disable", "docs", "--no-sync"), [("mcp.disabled", "mcp:docs")]),
        (("mcp", "enable", "docs", "--no-sync"), [("mcp.enabled", "mcp:docs")]),
        (("mcp", "remove", "docs", "--no-sync"), [("mcp.removed", "mcp:docs")]),
        (("skills", "repos", "add", "local", str(_skill_repo(tmp_path)), "--subdir", "skills"),
         [("skill_repo.added", "skill_repo:local")]),
        (("skills", "install", "pdf", "--repo", "local"), [("skill.installed", "skill:pdf")]),
        (("skills", "remove", "pdf"), [("skill.removed", "skill:pdf")]),
        (("skills", "repos", "remove", "local"), [("skill_repo.removed", "skill_repo:local")]),
        (("body-log", "on"), [("body_log.on", "setting:body_log")]),
        (("body-log", "off"), [("body_log.off", "setting:body_log")]),
        (("provider", "remove", "p1"), [("provider.removed", "provider:p1")]),
    ]
    t0 = time.time()
    for args, _ in steps:
        cs(*args)
    # read-only commands and refused ones are no admin actions
    cs("user", "list")
    cs("key", "list")
    cs("unified", "show")
    cs("user", "add", "alice", ok=False)
    cs("provider", "remove", "nope", ok=False)
    asyncio.run(caught_up(url))
    entries = cs.json("audit", "--json")
    want = [pair for _, pairs in steps for pair in pairs]
    assert [(e["action"], e["target"]) for e in entries] == want
    actor = f"local:{getpass.getuser()}"
    assert {e["actor"] for e in entries} == {actor}
    for e in entries:
        assert set(e) == {"time", "actor", "action", "target", "details"}
        assert t0 - 1 <= time.mktime(time.strptime(e["time"][:19], "%Y-%m-%dT%H:%M:%S")) \
            - time.timezone <= time.time() + 1
    text = json.dumps(entries)
    for secret in ("sk-literal-SECRET-1", "tok-SECRET", "T0KEN", "HDR-SECRET"):
        assert secret not in text
    by = {(e["action"], e["target"]): e["details"] for e in entries}
    assert by[("provider.added", "provider:p1")]["api_key"] == "literal"
    assert by[("provider.updated", "provider:p1")]["api_key"] == "env:P1_KEY"
    assert by[("key.updated", "key:bob/ci")] == {"id": by[("key.created", "key:bob/ci")]["id"],
                                                 "user": by[("user.created", "user:bob")]["id"],
                                                 "models": ["gpt-*"], "before": {"models": []}}
    assert by[("limit.changed", "user:bob")]["limits"] == {"rpm": 5}
    assert by[("user.removed", "user:bob")]["keys"] == 1

    # filters
    keys_only = cs.json("audit", "--json", "--action", "key.*")
    assert [e["action"] for e in keys_only] == ["key.created", "key.updated", "key.created",
                                                "key.revoked", "key.revoked"]
    assert cs.json("audit", "--json", "--actor", "local:*") == entries
    assert cs.json("audit", "--json", "--actor", "someone-else") == []
    assert cs.json("audit", "--json", "--since", str(time.time() + 60)) == []
    assert len(cs.json("audit", "--json", "--until", str(t0 - 1))) == 0
    table = cs("audit", "--since", "1h")
    assert "user.created" in table.output and actor in table.output

    # a replay of the event log gives the same audit
    cs("replay")
    assert cs.json("audit", "--json") == entries


def test_a_fact_that_cannot_be_published_waits_in_the_outbox(cs: Cli, tmp_path: Path) -> None:
    from codeswitch.audit import AdminLog
    from runtime.facts import FactPublisher

    async def offline() -> None:
        await AdminLog(None, home=cs.home).record("user.created", "user:zed", id="u_zed")

    asyncio.run(offline())
    assert list((cs.home / "outbox").glob("cli*.wal"))

    async def adopt(nc: Any) -> None:  # what any part starting on this directory does
        pub = FactPublisher(nc, wal=cs.home / "outbox", name="edge")
        pub.start()
        await pub.aclose()
        assert pub.recovered == 1

    run_nats(cs.url, adopt)
    asyncio.run(caught_up(cs.url))
    assert [(e["action"], e["target"]) for e in cs.json("audit", "--json")] == [
        ("user.created", "user:zed")]
    assert not list((cs.home / "outbox").glob("cli*.wal"))


def test_the_buckets_exist(cs: Cli) -> None:
    async def buckets(nc: Any) -> list[str]:
        js = nc.jetstream()
        for name in (names.USERS_BUCKET, names.KEYS_BUCKET):
            await js.key_value(name)
        return [names.USERS_BUCKET, names.KEYS_BUCKET]

    assert run_nats(cs.url, buckets) == ["cs_users", "cs_keys"]
    assert bus  # imported for the fixtures' side
