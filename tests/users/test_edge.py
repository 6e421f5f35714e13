"""Users and keys at the edge, with real nats-server, edges, a router and a ledger: no users is
today's behaviour; once one exists every request needs a user's key (401 in each dialect
without one); revoked, expired, disabled and model-not-allowed are 403s that say why, on every
edge within 100 ms of the change; the facts and the ledger carry the user and key ids."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from codeswitch import users as u
from codeswitch.audit import AdminLog
from runtime.natsd import EmbeddedNats
from schemas.events import RequestCompleted
from tests.e2e.conftest import MODELS, PROVIDER_KEYS, provider_for
from tests.e2e.gateway import EdgeThread, Gateway, events, run_nats
from tests.fakes.upstream import FakeUpstream
from tests.users.conftest import caught_up
from tests.users.test_cli import Cli

DIALECTS = ("anthropic", "openai-chat", "openai-responses", "gemini")


def request(dialect: str, model: str | None = None) -> tuple[str, dict[str, Any]]:
    model = model or MODELS[dialect]
    if dialect == "anthropic":
        return "/v1/messages", {"model": model, "max_tokens": 16,
                                "messages": [{"role": "user", "content": "hi"}]}
    if dialect == "openai-chat":
        return "/v1/chat/completions", {"model": model,
                                        "messages": [{"role": "user", "content": "hi"}]}
    if dialect == "openai-responses":
        return "/v1/responses", {"model": model, "input": "hi"}
    return f"/v1beta/models/{model}:generateContent", {"contents": [{"parts": [{"text": "hi"}]}]}


def headers(dialect: str, key: str | None) -> dict[str, str]:
    if key is None:
        return {}
    if dialect == "anthropic":
        return {"x-api-key": key, "anthropic-version": "2023-06-01"}
    if dialect == "gemini":
        return {"x-goog-api-key": key}
    return {"authorization": f"Bearer {key}"}


def call(url: str, dialect: str, key: str | None, model: str | None = None) -> httpx.Response:
    path, body = request(dialect, model)
    return httpx.post(url + path, json=body, headers=headers(dialect, key), timeout=30)


def error_kind(dialect: str, r: httpx.Response) -> tuple[int, str, str]:
    """(status, the dialect's error type/status, the message)."""
    err = r.json()["error"]
    if dialect == "anthropic":
        assert r.json()["type"] == "error"
        return r.status_code, err["type"], err["message"]
    if dialect == "gemini":
        assert err["code"] == r.status_code
        return r.status_code, err["status"], err["message"]
    return r.status_code, f"{err['type']}/{err['code']}", err["message"]


@pytest.fixture
def world(nats_server: EmbeddedNats) -> Iterator[tuple[Gateway, dict[str, FakeUpstream]]]:
    fakes = {d: FakeUpstream(d).start() for d in DIALECTS}
    gw = Gateway(nats_server.url)
    try:
        for fake in fakes.values():
            gw.add_provider(provider_for(fake))
        yield gw, fakes
    finally:
        gw.stop()
        for f in fakes.values():
            f.stop()


def admin(url: str, fn: Any) -> Any:
    return run_nats(url, lambda nc: fn(nc, AdminLog(nc)))


def responses(url: str, n: int, timeout: float = 10) -> list[tuple[bytes, RequestCompleted]]:
    """The RequestCompleted facts on the event log, once there are at least ``n``."""
    deadline = time.monotonic() + timeout
    while True:
        found = [(raw, e) for _, raw, e in events(url, 1, subject="llm.response")
                 if isinstance(e, RequestCompleted)]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def wait_edges(edges: list[EdgeThread], ok: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not all(ok(e.app.directory) for e in edges):
        assert time.monotonic() < deadline, "edges did not see the change"
        time.sleep(0.002)


def test_no_users_is_todays_behaviour(world: tuple[Gateway, dict[str, FakeUpstream]]) -> None:
    gw, _ = world
    for dialect in DIALECTS:
        for key in (None, "whatever-key"):
            assert call(gw.url, dialect, key).status_code == 200
    facts = [e for _, e in responses(gw.nats_url, 8)]
    assert len(facts) == 8 and all(f.user_id is None and f.key_id is None for f in facts)


def test_unknown_key_401_and_refusals_403_in_each_dialect(
        world: tuple[Gateway, dict[str, FakeUpstream]]) -> None:
    gw, fakes = world
    url = gw.nats_url
    admin(url, lambda nc, a: u.add_user(nc, a, "alice"))
    admin(url, lambda nc, a: u.add_user(nc, a, "bob"))
    key, secret = admin(url, lambda nc, a: u.create_key(nc, a, "alice", name="laptop"))
    _, claude_only = admin(url, lambda nc, a: u.create_key(nc, a, "alice", name="claude",
                                                           models=["claude-*"]))
    bob_key, bob_secret = admin(url, lambda nc, a: u.create_key(nc, a, "bob"))
    old, old_secret = admin(url, lambda nc, a: u.create_key(nc, a, "bob", name="old"))
    soon, soon_secret = admin(url, lambda nc, a: u.create_key(
        nc, a, "bob", name="soon", expires=time.time() + 0.5))
    wait_edges([gw.edge], lambda d: len(d.keys) == 5)

    want_401 = {"anthropic": "authentication_error",
                "openai-chat": "invalid_request_error/authentication",
                "openai-responses": "invalid_request_error/authentication",
                "gemini": "UNAUTHENTICATED"}
    want_403 = {"anthropic": "permission_error", "openai-chat": "permission_denied/{code}",
                "openai-responses": "permission_denied/{code}", "gemini": "PERMISSION_DENIED"}
    for dialect in DIALECTS:
        fakes[dialect].clear()
        for bad in (None, "cs-unknown-key", PROVIDER_KEYS[dialect]):
            r = call(gw.url, dialect, bad)
            status, kind, message = error_kind(dialect, r)
            assert (status, kind) == (401, want_401[dialect]), (dialect, bad, r.text)
        assert "missing API key" in error_kind(dialect, call(gw.url, dialect, None))[2]
        ok = call(gw.url, dialect, secret)
        assert ok.status_code == 200, ok.text
        assert fakes[dialect].requests[-1].headers.get(
            "x-api-key" if dialect == "anthropic" else "x-goog-api-key" if dialect == "gemini"
            else "authorization", "").endswith(PROVIDER_KEYS[dialect])
        assert secret not in json.dumps(fakes[dialect].requests[-1].headers)
        # the model allow-list
        if dialect == "anthropic":
            assert call(gw.url, dialect, claude_only).status_code == 200
        else:
            r = call(gw.url, dialect, claude_only)
            status, kind, message = error_kind(dialect, r)
            assert (status, kind) == (403, want_403[dialect].format(code="model_not_allowed"))
            assert f"may not use model {MODELS[dialect]!r} (allowed: claude-*)" in message
            assert r.headers["x-should-retry"] == "false"
    # revoked, expired, disabled user: 403 with the reason, and nothing reaches a provider
    admin(url, lambda nc, a: u.revoke_key(nc, a, old.id))
    time.sleep(max(0.0, soon.expires - time.time()) + 0.01)
    admin(url, lambda nc, a: u.set_enabled(nc, a, "bob", False))
    wait_edges([gw.edge], lambda d: not d.users[bob_key.user].enabled
               and d.keys[old.id].revoked is not None)
    for f in fakes.values():
        f.clear()
    for dialect in DIALECTS:
        for secret_, code, words in (
                (old_secret, "key_revoked", "'old' (cs-"),
                (soon_secret, "key_expired", "expired at"),
                (bob_secret, "user_disabled", "user bob is disabled")):
            r = call(gw.url, dialect, secret_)
            status, kind, message = error_kind(dialect, r)
            assert (status, kind) == (403, want_403[dialect].format(code=code)), r.text
            assert words in message, message
            if code == "key_revoked":
                assert "was revoked at" in message
    assert not any(f.requests for f in fakes.values())
    # the model list needs a user's key too
    with httpx.Client(base_url=gw.url) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"authorization": f"Bearer {secret}"}) \
            .status_code == 200
        assert c.get("/v1/models", headers={"authorization": f"Bearer {old_secret}"}) \
            .status_code == 403
    assert key.id  # used above through its secret


def test_revoke_and_disable_reach_two_edges_within_100ms(
        world: tuple[Gateway, dict[str, FakeUpstream]]) -> None:
    gw, _ = world
    url = gw.nats_url
    second = EdgeThread(url)
    edges = [gw.edge, second]
    try:
        admin(url, lambda nc, a: u.add_user(nc, a, "alice"))
        timings: dict[str, list[float]] = {"revoke": [], "disable": []}
        applied: dict[str, list[float]] = {"revoke": [], "disable": []}
        for _ in range(3):
            key, secret = admin(url, lambda nc, a: u.create_key(nc, a, "alice"))
            wait_edges(edges, lambda d, k=key: k.id in d.keys)
            for e in edges:
                assert call(e.url, "anthropic", secret).status_code == 200
            for what in ("revoke", "disable"):
                if what == "disable":
                    key, secret = admin(url, lambda nc, a: u.create_key(nc, a, "alice"))
                    wait_edges(edges, lambda d, k=key: k.id in d.keys)
                    assert all(call(e.url, "openai-chat", secret).status_code == 200
                               for e in edges)

                written: dict[str, float] = {}

                async def change(nc: Any, what: str = what, kid: str = key.id,
                                 written: dict[str, float] = written) -> None:
                    a = AdminLog(nc)
                    d = await u.load(nc)
                    await asyncio.sleep(0.05)  # the requests below are under way meanwhile
                    written["start"] = time.perf_counter()  # the KV write, then the fact
                    if what == "revoke":
                        await u.revoke_key(nc, a, kid, d=d)
                    else:
                        await u.set_enabled(nc, a, "alice", False, d=d)
                    written["done"] = time.perf_counter()

                seen: dict[int, float] = {}

                def watch(kid: str = key.id, what: str = what,
                          seen: dict[int, float] = seen) -> None:
                    """When each edge's local copy has the change (polled every 0.5 ms)."""
                    end = time.monotonic() + 5
                    while len(seen) < 2 and time.monotonic() < end:
                        for i, e in enumerate(edges):
                            d = e.app.directory
                            k = d.keys.get(kid)
                            user = d.users.get(k.user) if k else None
                            if i not in seen and k is not None and user is not None and (
                                    k.revoked is not None if what == "revoke"
                                    else not user.enabled):
                                seen[i] = time.perf_counter()
                        time.sleep(0.0005)

                watcher = threading.Thread(target=watch)
                watcher.start()
                writer = threading.Thread(target=run_nats, args=(url, change))
                writer.start()
                # requests to both edges, one after the other, until both refuse; the latest
                # start of a request still let through bounds when the change took effect
                # (requests take long on a loaded machine: their start is what counts)
                refused: dict[int, float] = {}
                let_through = [float("-inf")] * 2
                deadline = time.monotonic() + 5
                while len(refused) < 2:
                    for i, e in enumerate(edges):
                        if i in refused:
                            continue
                        started = time.perf_counter()
                        status = call(e.url, "openai-chat", secret).status_code
                        if status == 403:
                            refused[i] = started
                        else:
                            assert status == 200
                            let_through[i] = started
                    assert time.monotonic() < deadline
                writer.join()
                watcher.join()
                # 0: no request that started after the write was let through
                timings[what].append(max(0.0, max(let_through) - written["start"]))
                applied[what].append(max(seen.values()) - written["start"])
                if what == "disable":
                    admin(url, lambda nc, a: u.set_enabled(nc, a, "alice", True))
                    wait_edges(edges, lambda d: all(x.enabled for x in d.users.values()))
        def ms(values: list[float]) -> str:
            return ", ".join(f"{v * 1000:.1f}" for v in values)

        print(f"\nfrom the KV write to both edges' copies changed: revoke {ms(applied['revoke'])}"
              f" ms, disable {ms(applied['disable'])} ms; the last request let through started "
              f"at: revoke {ms(timings['revoke'])} ms, disable {ms(timings['disable'])} ms")
        assert max(applied["revoke"] + applied["disable"]) < 0.1, applied
        assert max(timings["revoke"] + timings["disable"]) < 0.1, timings
    finally:
        second.stop()


def test_facts_and_ledger_carry_user_and_key(
        world: tuple[Gateway, dict[str, FakeUpstream]], ledger: tuple[str, Path],
        tmp_path: Path) -> None:
    gw, _ = world
    url = gw.nats_url
    alice = admin(url, lambda nc, a: u.add_user(nc, a, "alice"))
    bob = admin(url, lambda nc, a: u.add_user(nc, a, "bob"))
    ka, sa = admin(url, lambda nc, a: u.create_key(nc, a, "alice", name="laptop"))
    kb, sb = admin(url, lambda nc, a: u.create_key(nc, a, "bob", name="ci",
                                                   models=["gpt-*"]))
    wait_edges([gw.edge], lambda d: len(d.keys) == 2)
    for dialect in DIALECTS:
        assert call(gw.url, dialect, sa).status_code == 200
    assert call(gw.url, "openai-chat", sb).status_code == 200
    assert call(gw.url, "anthropic", sb).status_code == 403  # model not allowed
    assert call(gw.url, "anthropic", "cs-nobody").status_code == 401
    facts = responses(url, 7)
    done = [e for _, e in facts]
    assert len(done) == 7
    assert sorted((e.user_id or "", e.key_id or "", e.status) for e in done) == sorted(
        [(alice.id, ka.id, 200)] * 4 + [(bob.id, kb.id, 200), (bob.id, kb.id, 403),
                                        ("", "", 401)])
    assert all(e.source == ("router" if e.status == 200 else "edge") for e in done)
    for raw, _ in facts:
        assert sa.encode() not in raw and sb.encode() not in raw

    asyncio.run(caught_up(url))
    cs = Cli(url, ledger[1], tmp_path)
    by_user = {r["key"]: r for r in cs.json("stats", "--json", "--by", "user")["breakdown"]}
    assert {k: r["requests"] for k, r in by_user.items()} == {alice.id: 4, bob.id: 2, None: 1}
    assert by_user[alice.id]["name"] == "alice"
    by_key = {r["key"]: r for r in cs.json("stats", "--json", "--by", "key")["breakdown"]}
    assert {k: r["requests"] for k, r in by_key.items()} == {ka.id: 4, kb.id: 2, None: 1}
    assert by_key[kb.id]["name"] == "bob/ci"
    table = cs("stats", "--by", "key").output
    assert "alice/laptop" in table and "bob/ci" in table
    logged = cs.json("log", "--json", "--user", "bob")
    assert [(r["user_id"], r["key_id"], r["status"]) for r in logged] == [
        (bob.id, kb.id, 403), (bob.id, kb.id, 200)]
    assert "bob/ci" in cs("log", "--user", "bob").output
    assert len(cs.json("log", "--json", "--key", "alice/laptop")) == 4
