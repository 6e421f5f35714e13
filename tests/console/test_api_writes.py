"""The admin API's alert-rule, MCP and skills writes over real HTTP against a whole gateway
(tests/console/conftest.py), in open mode (a cookie and its CSRF token): each does what the
CLI's command does, through the same functions, refuses bad input with the field at fault,
and is an admin fact. Webhooks go to a local receiver; skills come from a local directory and
archive (there is no network here, and an install from the network says so)."""

from __future__ import annotations

import contextlib
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from codeswitch.clients.mcp_store import McpStore
from runtime import names
from tests.alerts.conftest import Receiver, serve_receiver
from tests.console.conftest import World, wait_for
from tests.console.test_api import _key_for

API = "/admin/api"


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    yield from serve_receiver()


@contextlib.contextmanager
def _client(w: World) -> Iterator[httpx.Client]:
    """The local person's console session (open mode): its cookie and CSRF token."""
    with w.client() as c:
        me = c.get(f"{API}/me")
        assert me.status_code == 200, me.text
        c.headers["x-csrf-token"] = me.json()["csrf"]
        yield c


def _audited(c: httpx.Client, action: str, target: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        rows = c.get(f"{API}/audit", params={"action": action}).json()["entries"]
        return next((r for r in rows if r["target"] == target), None)
    return wait_for(found, what=f"audit {action} {target}")  # type: ignore[no-any-return]


def skill_dir(root: Path) -> Path:
    src = root / "skills-src"
    (src / "skills" / "pdf").mkdir(parents=True)
    (src / "skills" / "pdf" / "SKILL.md").write_text(
        "---\nname: pdf\ndescription: Read PDFs\n---\nUse pdftotext.\n")
    (src / "skills" / "pdf" / "notes.txt").write_text("page by page\n")
    return src


def test_alert_rules(world: World, hooks: Receiver) -> None:
    with _client(world) as c:
        rule = {"name": "errs", "metric": "error_rate", "threshold": "20%", "window": "10m",
                "channels": [hooks.url(), f"slack={hooks.url('/slack')}"]}
        r = c.post(f"{API}/alerts/rules", json=rule)
        assert r.status_code == 200, r.text
        assert r.json()["rule"]["threshold"] == 20.0
        assert r.json()["rule"]["window_s"] == 600.0
        port = hooks.server.server_address[1]
        assert r.json()["rule"]["channels"] == [f"json:127.0.0.1:{port}",
                                                f"slack:127.0.0.1:{port}"]
        # what `alerts add` refuses, with the field at fault
        for bad, field, words in (
                ({"threshold": "0.2"}, "threshold", "did you mean 20%"),
                ({"threshold": "lots"}, "threshold", "'lots' is not a number"),
                ({"metric": "tokens", "threshold": "10%"}, "threshold", "not a percentage"),
                ({"window": "soon"}, "window", "not a duration"),
                ({"scope": "region:eu"}, "scope", "scope 'region:eu'"),
                ({"channels": ["ftp://x"]}, "channels", "must be http(s)://"),
                ({"name": "no spaces"}, "name", "rule name")):
            r = c.post(f"{API}/alerts/rules", json={**rule, "name": "other", **bad})
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["field"] == field and words in r.json()["error"], r.json()
        assert c.post(f"{API}/alerts/rules", json=rule).status_code == 409
        # an edit without channels keeps them (their URLs are never sent back)
        r = c.put(f"{API}/alerts/rules/errs", json={**rule, "threshold": "30%",
                                                     "channels": None})
        assert r.status_code == 200, r.text
        listed = c.get(f"{API}/alerts").json()
        [got] = [x for x in listed["rules"] if x["name"] == "errs"]
        assert got["threshold"] == 30.0 and len(got["channels"]) == 2
        assert hooks.url() not in str(listed)
        assert "error_rate" in listed["choices"]["percent"]
        # test: each channel's answer, as `alerts test` prints them
        r = c.post(f"{API}/alerts/rules/errs/test")
        assert r.status_code == 200, r.text
        assert r.json()["ok"] is True and [x["sent"] for x in r.json()["channels"]] == [True,
                                                                                        True]
        assert hooks.bodies()[0]["kind"] == "test"
        hooks.status["/slack"] = 404
        r = c.post(f"{API}/alerts/rules/errs/test").json()
        assert r["ok"] is False and "HTTP 404" in r["channels"][1]["detail"]
        assert c.post(f"{API}/alerts/rules/nope/test").status_code == 404
        assert c.delete(f"{API}/alerts/rules/errs").status_code == 200
        assert c.delete(f"{API}/alerts/rules/errs").status_code == 404
        for action in ("rule.added", "rule.updated", "rule.tested", "rule.removed"):
            entry = _audited(c, action, "rule:errs")
            assert entry["actor"].startswith("local:")
        assert hooks.url() not in str(c.get(f"{API}/audit").json())


def test_mcp_servers(world: World) -> None:
    with _client(world) as c:
        r = c.post(f"{API}/mcp/servers", json={
            "name": "fs", "command": "npx -y '@mcp/server-fs' /srv", "env": ["TOKEN=ENV-SECRET"]})
        assert r.status_code == 200, r.text
        r = c.post(f"{API}/mcp/servers", json={
            "name": "api", "transport": "http", "url": "https://mcp.example/x",
            "headers": ["Authorization: Bearer HDR-SECRET"]})
        assert r.status_code == 200, r.text

        async def stored(nc: Any) -> Any:
            store = McpStore(await nc.jetstream().key_value(names.MCP_BUCKET), nc)
            return {m.name: m for m in await store.list()}
        kv = world.on_nats(stored)
        assert kv["fs"].command == "npx" and kv["fs"].args == ["-y", "@mcp/server-fs", "/srv"]
        assert kv["fs"].env == {"TOKEN": "ENV-SECRET"}
        assert kv["api"].headers == {"Authorization": "Bearer HDR-SECRET"}
        for bad, status, field in (({"name": "fs", "command": "x"}, 409, "name"),
                                   ({"name": "h", "transport": "http", "url": "ftp://x"}, 400,
                                    "url"),
                                   ({"name": "s"}, 400, "command"),
                                   ({"name": "e", "command": "x", "env": ["NOEQUALS"]}, 400,
                                    "env")):
            r = c.post(f"{API}/mcp/servers", json=bad)
            assert (r.status_code, r.json().get("field")) == (status, field), (bad, r.text)
        assert c.post(f"{API}/mcp/servers/api/disable").json()["server"]["enabled"] is False
        assert world.on_nats(stored)["api"].enabled is False
        assert c.post(f"{API}/mcp/servers/api/enable").status_code == 200
        assert c.delete(f"{API}/mcp/servers/fs").status_code == 200
        assert c.delete(f"{API}/mcp/servers/fs").status_code == 404
        assert "fs" not in world.on_nats(stored)
        text = str(c.get(f"{API}/mcp").json())
        assert "HDR-SECRET" not in text and "ENV-SECRET" not in text
        for action, target in (("mcp.added", "mcp:fs"), ("mcp.disabled", "mcp:api"),
                               ("mcp.enabled", "mcp:api"), ("mcp.removed", "mcp:fs")):
            _audited(c, action, target)
        assert "SECRET" not in str(c.get(f"{API}/audit").json())


def test_skills(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    claude = tmp_path / "claude"
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(claude))
    src = skill_dir(tmp_path)
    archive = tmp_path / "more.tar.gz"
    (tmp_path / "more" / "tidy").mkdir(parents=True)
    (tmp_path / "more" / "tidy" / "SKILL.md").write_text(
        "---\nname: tidy\ndescription: Tidy up\n---\nTidy.\n")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "more", arcname="more")
    with _client(world) as c:
        d = c.get(f"{API}/skills").json()
        assert {r["name"] for r in d["repos"] if r["builtin"]} == {"anthropics", "superpowers"}
        assert d["installed"] == [] and d["skills_dir"] == str(claude / "skills")
        # from a directory, added as a repository on the way
        r = c.post(f"{API}/skills", json={"name": "pdf", "source": str(src),
                                          "subdir": "skills", "repo": "local"})
        assert r.status_code == 200, r.text
        assert (claude / "skills" / "pdf" / "notes.txt").read_text() == "page by page\n"
        # from an archive added as a repository first
        r = c.post(f"{API}/skills/repos", json={"name": "more", "source": str(archive)})
        assert r.status_code == 200, r.text
        offered = c.get(f"{API}/skills/repos/more").json()["skills"]
        assert [(s["name"], s["installed"]) for s in offered] == [("tidy", False)]
        assert c.post(f"{API}/skills", json={"name": "tidy", "repo": "more"}).status_code == 200
        d = c.get(f"{API}/skills").json()
        assert [(s["name"], s["repo"], s["present"]) for s in d["installed"]] == [
            ("pdf", "local", True), ("tidy", "more", True)]
        assert d["installed"][0]["source"] == str(src)
        # refused: twice, no such skill (the source is not kept), no network
        assert c.post(f"{API}/skills", json={"name": "pdf", "repo": "local"}).status_code == 409
        r = c.post(f"{API}/skills", json={"name": "nope", "source": str(src), "repo": "x"})
        assert r.status_code == 404 and "no skill named 'nope'" in r.json()["error"]
        assert "x" not in {r["name"] for r in c.get(f"{API}/skills").json()["repos"]}
        r = c.post(f"{API}/skills", json={"name": "pdf", "repo": "anthropics"})
        assert r.status_code == 502, r.text
        assert "offline" in r.json()["error"] and "local directory" in r.json()["error"]
        r = c.get(f"{API}/skills/repos/superpowers")
        assert r.status_code == 502 and "cannot connect" in r.json()["error"]
        assert c.delete(f"{API}/skills/pdf").status_code == 200
        assert not (claude / "skills" / "pdf").exists()
        assert c.delete(f"{API}/skills/pdf").status_code == 400  # not installed by us any more
        assert c.delete(f"{API}/skills/repos/more").status_code == 200
        assert c.delete(f"{API}/skills/repos/anthropics").status_code == 400
        for action, target in (("skill_repo.added", "skill_repo:local"),
                               ("skill.installed", "skill:pdf"),
                               ("skill_repo.added", "skill_repo:more"),
                               ("skill.installed", "skill:tidy"),
                               ("skill.removed", "skill:pdf"),
                               ("skill_repo.removed", "skill_repo:more")):
            _audited(c, action, target)
        rows = c.get(f"{API}/audit", params={"action": "skill_repo.added"}).json()["entries"]
        assert "skill_repo:x" not in {r["target"] for r in rows}


def test_writes_are_admin_only_and_need_csrf(world: World) -> None:
    # many rounds on one keep-alive connection: a refusal answered before its body was read
    # made the server close the connection, and the next request on it got no answer now
    # and then (2 rounds in 40 before the console read write bodies first)
    with world.client() as c:
        assert c.get(f"{API}/me").status_code == 200
        for _ in range(25):
            for method, path in (("POST", "/alerts/rules"), ("DELETE", "/alerts/rules/x"),
                                 ("POST", "/alerts/rules/x/test"), ("POST", "/mcp/servers"),
                                 ("POST", "/mcp/servers/x/enable"), ("POST", "/skills"),
                                 ("DELETE", "/skills/x"), ("POST", "/skills/repos")):
                r = c.request(method, f"{API}{path}", json={})
                assert r.status_code == 403 and r.json()["code"] == "csrf", (path, r.text)
    doc = world.client().get(f"{API}/openapi.json").json()
    for path in ("/admin/api/alerts/rules", "/admin/api/alerts/rules/{name}/test",
                 "/admin/api/mcp/servers", "/admin/api/mcp/servers/{name}/disable",
                 "/admin/api/skills", "/admin/api/skills/repos/{name}"):
        assert path in doc["paths"], path
    assert {"RuleIn", "McpIn", "SkillInstallIn", "SkillRepoIn"} <= set(
        doc["components"]["schemas"])
    assert doc["paths"]["/admin/api/alerts/rules"]["post"]["x-access"] == "admin"
    # a non-admin's key reaches none of them (this ends open mode: the module's last test)
    _, secret = _key_for(world, "bob", "user")
    with world.client(headers={"authorization": f"Bearer {secret}"}) as c:
        for method, path in (("GET", "/alerts"), ("POST", "/alerts/rules"),
                             ("PUT", "/alerts/rules/x"), ("POST", "/alerts/rules/x/test"),
                             ("GET", "/mcp"), ("POST", "/mcp/servers"),
                             ("DELETE", "/mcp/servers/x"), ("GET", "/skills"),
                             ("POST", "/skills"), ("DELETE", "/skills/repos/x")):
            r = c.request(method, f"{API}{path}", json={})
            assert r.status_code == 403 and r.json()["code"] == "admin_only", (path, r.text)
