"""The admin API over real HTTP against a whole gateway (tests/console/conftest.py): open mode,
sign-in by key and by password, the cookie, CSRF and Origin checks, a non-admin's reach, bearer
keys for scripts, the OpenAPI document, and every write an admin fact with its actor."""

from __future__ import annotations

import getpass
import json
import re
import time
from typing import Any

import httpx
import typer
from typer.testing import CliRunner

from codeswitch import users as u
from codeswitch.audit import AdminLog
from console.web import ENDPOINTS
from edge.routes import match_route
from tests.console.conftest import World, wait_for
from tests.e2e.test_sessions import wait_requests

API = "/admin/api"


def _cli() -> typer.Typer:
    from codeswitch import cli

    have = {g.name for g in cli.app.registered_groups}
    if "user" not in have:
        cli._register_plugins(["--help"])
    return cli.app


def _csrf(c: httpx.Client) -> str:
    r = c.get(f"{API}/me")
    assert r.status_code == 200, r.text
    token = r.json()["csrf"]
    assert token
    return str(token)


def _audit(w: World, c: httpx.Client, action: str, n: int = 1) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]] | None:
        r = c.get(f"{API}/audit", params={"action": action})
        rows = r.json()["entries"] if r.status_code == 200 else []
        return rows if len(rows) >= n else None
    return wait_for(found, what=f"audit {action}")  # type: ignore[no-any-return]


def _key_for(w: World, name: str, role: str) -> tuple[str, str]:
    async def go(nc: Any) -> tuple[str, str]:
        audit = AdminLog(nc, actor="test")
        d = await u.load(nc)
        user = next((x for x in d.users.values() if x.name == name), None)
        if user is None:
            user = await u.add_user(nc, audit, name, role=role)
        _, secret = await u.create_key(nc, audit, user.id, name=f"k{time.monotonic_ns()}")
        return user.id, secret
    uid, secret = w.on_nats(go)
    # the edge's copy of the buckets has it within milliseconds
    wait_for(lambda: any(k.user == uid for k in w.app.directory.keys.values()), 5, "key")
    return uid, secret


def test_no_console_path_is_an_llm_route() -> None:
    """The edge hands a path to the console only when no LLM route matched it: every API path
    (with any parameter value) must therefore never be an LLM route."""
    for ep in ENDPOINTS:
        for value in ("messages", "responses", "chat", "x:generateContent", "models"):
            path = ep.path.replace("{name}", value).replace("{id}", value)
            route = match_route(ep.method, path)
            assert route is None or route.kind != "llm", (ep.method, path)


def test_pages_and_openapi(world: World) -> None:
    with world.client() as c:
        page = c.get("/console")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert c.get("/console/static/vendor/uplot/uPlot.iife.min.js").status_code == 200
        # the page links its files by version: cached for good, a new version a new URL
        link = re.search(r'src="(/console/static/app\.js\?v=[0-9a-f]{12})"', page.text)
        assert link, page.text
        js = c.get(link.group(1))
        assert js.status_code == 200 and "immutable" in js.headers["cache-control"]
        assert c.get(link.group(1), headers={"if-none-match": js.headers["etag"]}
                     ).status_code == 304
        assert c.get("/console/nope").status_code == 404
        doc = c.get(f"{API}/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert {"/admin/api/providers", "/admin/api/users/{id}/disable",
            "/admin/api/sessions/{id}"} <= set(doc["paths"])
    assert "ProviderIn" in doc["components"]["schemas"]
    assert doc["paths"]["/admin/api/providers"]["post"]["requestBody"]
    # the LLM route next to it is untouched
    assert world.llm().status_code == 200


def test_sign_in_csrf_roles_and_audit(world: World) -> None:
    w = world
    local = f"local:{getpass.getuser()}"
    with w.client() as c:
        # open mode: no users, a loopback client
        token = _csrf(c)
        assert "cs_console" in c.cookies
        r = c.post(f"{API}/users", json={"name": "eve", "role": "user"})
        assert r.status_code == 403 and r.json()["code"] == "csrf"
        r = c.post(f"{API}/users", json={"name": "eve"},
                   headers={"x-csrf-token": token, "origin": "http://evil.example"})
        assert r.status_code == 403 and r.json()["code"] == "origin"
        r = c.post(f"{API}/users", json={"name": "bad name!"}, headers={"x-csrf-token": token})
        assert r.status_code == 400 and "user name" in r.json()["error"]
        r = c.post(f"{API}/users", json={"name": "root", "role": "admin"},
                   headers={"x-csrf-token": token, "origin": w.url})
        assert r.status_code == 200, r.text
        root_id = r.json()["id"]
        # a user exists now: open mode is over, and so is its session
        wait_for(lambda: w.app.directory.users, 5, "users")
        assert c.get(f"{API}/me").status_code == 401
        assert c.get(f"{API}/users").status_code == 401

    _, root_key = _key_for(w, "root", "admin")
    bob_id, bob_key = _key_for(w, "bob", "user")
    assert w.llm(bob_key, session="bob-s1").status_code == 200
    with w.client() as c:
        assert c.post(f"{API}/signin", json={"key": "cs-wrong"}).status_code == 401
        r = c.post(f"{API}/signin", json={"key": root_key})
        assert r.status_code == 200 and r.json()["role"] == "admin"
        assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in \
            r.headers["set-cookie"]
        token = r.json()["csrf"]
        assert c.get(f"{API}/users").status_code == 200
        # a forged cookie: same payload, another signature
        good = c.cookies["cs_console"]
        payload, _, mac = good.partition(".")
        with w.client() as forged:
            forged.cookies.set("cs_console", payload + "." + mac[::-1])
            assert forged.get(f"{API}/users").status_code == 401
            assert forged.post(f"{API}/users/{bob_id}/disable",
                               headers={"x-csrf-token": token}).status_code == 401
        # a write with the token: in the audit log with the admin's id as the actor
        r = c.post(f"{API}/users/{bob_id}/disable", headers={"x-csrf-token": token})
        assert r.status_code == 200 and r.json()["enabled"] is False
        wait_for(lambda: not w.app.directory.users[bob_id].enabled, 5, "disabled")
        assert w.llm(bob_key).status_code == 403
        assert c.post(f"{API}/users/{bob_id}/enable",
                      headers={"x-csrf-token": token}).status_code == 200
        (fact,) = _audit(w, c, "user.disabled")
        assert fact["actor"] == root_id and fact["target"] == "user:bob"
        created = {f["target"]: f for f in _audit(w, c, "user.created", 2)}
        assert created["user:root"]["actor"] == local
        assert created["user:bob"]["actor"] == "test"

        # a password, then sign-in with it; wrong ones refused the same way
        # `codeswitch user passwd` (asked twice); too short refused
        env = {"CODESWITCH_NATS_URL": w.nats_url, "CODESWITCH_HOME": str(w.home),
               "COLUMNS": "200"}
        short = CliRunner().invoke(_cli(), ["user", "passwd", "root"], env=env,
                                   input="short\nshort\n")
        assert short.exit_code == 1 and "at least 10 characters" in short.output
        out = CliRunner().invoke(_cli(), ["user", "passwd", "root"], env=env,
                                 input="correct horse 42\ncorrect horse 42\n")
        assert out.exit_code == 0, out.output
        listed = CliRunner().invoke(_cli(), ["user", "list", "--json"], env=env)
        root = next(x for x in json.loads(listed.stdout) if x["name"] == "root")
        assert root["password"] is True  # whether one is set; never the hash
        wait_for(lambda: w.app.directory.users[root_id].password, 5, "password")
        with w.client() as p:
            bad = p.post(f"{API}/signin", json={"name": "root", "password": "wrong horse 42"})
            assert bad.status_code == 401
            nobody = p.post(f"{API}/signin", json={"name": "ghost", "password": "x" * 12})
            assert nobody.json()["error"] == bad.json()["error"]
            ok = p.post(f"{API}/signin", json={"name": "root", "password": "correct horse 42"})
            assert ok.status_code == 200 and ok.json()["mode"] == "password"
            assert p.get(f"{API}/users").status_code == 200
            # signing out ends it
            assert p.post(f"{API}/signout", headers={"x-csrf-token": ok.json()["csrf"]}
                          ).status_code == 200
            p.cookies.clear()
            assert p.get(f"{API}/users").status_code == 401

    # a non-admin: their own usage, sessions and keys; nothing of the admin's
    wait_requests(w.nats_url, 2)
    with w.client() as c:
        r = c.post(f"{API}/signin", json={"key": bob_key})
        assert r.status_code == 200 and r.json()["role"] == "user"
        for path in ("/users", "/providers", "/audit", "/alerts"):
            got = c.get(API + path)
            assert got.status_code == 403 and got.json()["code"] == "admin_only", path
        assert c.post(f"{API}/users", json={"name": "mallory"},
                      headers={"x-csrf-token": r.json()["csrf"]}).status_code == 403
        keys = c.get(f"{API}/keys").json()["keys"]
        assert keys and {k["user"] for k in keys} == {bob_id}
        sessions = wait_for(lambda: c.get(f"{API}/sessions").json()["sessions"], 10, "sessions")
        assert {s["user"] for s in sessions} == {bob_id}
        log = c.get(f"{API}/log").json()["requests"]
        assert log and {x["user_id"] for x in log} == {bob_id}
        dash = c.get(f"{API}/dashboard").json()
        assert "gateways" not in dash and dash["today"]["requests"] >= 1

    # scripts: an admin key as a bearer token, no cookie and no CSRF token needed
    with w.client(headers={"authorization": f"Bearer {root_key}"}) as s:
        assert s.get(f"{API}/users").status_code == 200
        assert s.post(f"{API}/users/{bob_id}/promote").status_code == 200
        assert s.post(f"{API}/users/{bob_id}/demote").status_code == 200
    with w.client(headers={"authorization": f"Bearer {bob_key}"}) as s:
        assert s.get(f"{API}/users").status_code == 403


def test_quota_bars_data_for_admins_and_for_each_user(world: World) -> None:
    """``GET /admin/api/quota``: what the Users page draws its budget bars from (the rows of
    `codeswitch quota show`); an admin sees every user and key, a user only their own."""
    from schemas.users import Limits, parse_budget

    async def setup(nc: Any) -> tuple[str, str]:
        audit = AdminLog(nc, actor="test")
        user = await u.add_user(nc, audit, f"budgeted{time.monotonic_ns() % 10**6}",
                                limits=Limits(budget=parse_budget("1000tokens/day"),
                                              soft_pct=80))
        _, secret = await u.create_key(nc, audit, user.id, name="bars")
        return user.id, secret

    uid, secret = world.on_nats(setup)
    _, admin_key = _key_for(world, "quota-admin", "admin")
    with httpx.Client(base_url=world.url, timeout=10) as c:
        def rows_for(key: str) -> list[dict[str, Any]]:
            r = c.get(f"{API}/quota", headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            return list(r.json()["quota"])

        every = wait_for(lambda: rows_for(admin_key) if any(
            x["user_id"] == uid for x in rows_for(admin_key)) else None, what="quota rows")
        mine = next(x for x in every if x["user_id"] == uid and x["scope"] == "user")
        assert (mine["budget"], mine["limit"], mine["period"], mine["unit"]) == (
            "1000tokens/day", 1000, "day", "tokens")
        assert mine["spent"] == 0 and mine["used_pct"] == 0 and mine["resets_at"] > time.time()
        assert mine["soft_pct"] == 80 and not mine["exhausted"]
        assert {x["user_id"] for x in every} > {uid}  # the admin sees the others too
        own = rows_for(secret)
        assert own and {x["user_id"] for x in own} == {uid}  # a user: their own only
