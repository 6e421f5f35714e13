"""`codeswitch online`: users and devices with a request in the last 5 minutes (the ledger), and
the gateways alive (their heartbeats in KV cs_presence, gone when a part stops)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.natsd import EmbeddedNats
from runtime.presence import device_name
from tests.e2e.conftest import provider_for
from tests.e2e.gateway import Gateway
from tests.e2e.test_sessions import LedgerThread, cli, wait_requests
from tests.fakes.upstream import FakeUpstream


@pytest.fixture
def world(nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[Gateway]:
    fake = FakeUpstream("anthropic").start()
    gw = Gateway(nats_server.url, routers=2)
    led = LedgerThread(nats_server.url, tmp_path / "home")
    try:
        gw.add_provider(provider_for(fake))
        yield gw
    finally:
        led.stop()
        gw.stop()
        fake.stop()


def _online(url: str) -> dict[str, object]:
    out = cli(url, "online", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_online_users_devices_and_gateways(world: Gateway) -> None:
    gw = world
    body = {"model": "claude-opus-4-8", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}
    with gw.client() as c:
        for user, session in (("alice", "s1"), ("alice", "s2"), ("bob", "s3")):
            meta = json.dumps({"device_id": "d", "account_uuid": user, "session_id": session})
            r = c.post("/v1/messages", json={**body, "metadata": {"user_id": meta}},
                       headers={"x-api-key": "k"})
            assert r.status_code == 200
        assert c.post("/v1/messages", json=body, headers={"x-api-key": "k"}).status_code == 200
    wait_requests(gw.nats_url, 4)

    seen = _online(gw.nats_url)
    users = {u["user"]: u for u in seen["users"]}  # type: ignore[attr-defined]
    assert set(users) == {"alice", "bob"}
    assert users["alice"]["sessions"] == 2 and users["alice"]["requests"] == 2
    assert users["alice"]["devices"] == [device_name()]
    assert seen["anonymous_requests"] == 1
    (device,) = seen["devices"]  # type: ignore[misc]
    assert device["device"] == device_name() and device["users"] == 2
    (gateway,) = seen["gateways"]  # type: ignore[misc]
    assert gateway["device"] == device_name()
    assert sorted(p["part"] for p in gateway["parts"]) == ["edge", "router", "router"]

    # a router stops: its heartbeat goes with it (purged on the way out, not after 15 s)
    gw.routers[1].stop()
    deadline = time.monotonic() + 5
    while True:
        (gateway,) = _online(gw.nats_url)["gateways"]  # type: ignore[misc]
        if sorted(p["part"] for p in gateway["parts"]) == ["edge", "router"]:
            break
        assert time.monotonic() < deadline, gateway
        time.sleep(0.2)
    gw.routers.pop()

    table = cli(gw.nats_url, "online")
    assert table.returncode == 0 and "Gateways alive" in table.stdout
    assert "alice" in table.stdout and "1 edge, 1 router" in table.stdout
