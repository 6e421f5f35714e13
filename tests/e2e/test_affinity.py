"""Session affinity end to end: under round-robin, a session's requests stay on the provider
that served its previous one, across two routers (the KV bucket cs_affinity); each model of a
session keeps its own; when the sticky provider fails the request falls back and the session
moves with it."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from codeswitch import admin
from runtime.natsd import EmbeddedNats
from schemas.config import RoutingSettings
from tests.e2e.conftest import CLIENT_KEY, provider_for
from tests.e2e.gateway import Gateway, run_nats
from tests.fakes.upstream import Behavior, FakeUpstream

MODEL = "claude-opus-4-8"


def _body(model: str = MODEL) -> dict[str, object]:
    return {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def trio(nats_server: EmbeddedNats) -> Iterator[tuple[Gateway, dict[str, FakeUpstream]]]:
    """Three Anthropic providers of one priority (round-robin), two routers."""
    fakes = {name: FakeUpstream("anthropic").start() for name in ("p1", "p2", "p3")}
    gw = Gateway(nats_server.url, routers=2)
    try:
        for name, fake in fakes.items():
            gw.add_provider(provider_for(fake, name=name))
        yield gw, fakes
    finally:
        gw.stop()
        for f in fakes.values():
            f.stop()


def _send(c: httpx.Client, session: str | None, model: str = MODEL) -> str:
    headers = {"x-api-key": CLIENT_KEY}
    if session:
        headers["x-codeswitch-session"] = session
    r = c.post("/v1/messages", json=_body(model), headers=headers)
    assert r.status_code == 200, r.text
    return r.headers["x-codeswitch-provider"]


def _wait_shared(gw: Gateway, n: int, timeout: float = 5) -> None:
    """Both routers' copies hold ``n`` affinities (the KV watch is asynchronous)."""
    deadline = time.monotonic() + timeout
    while any(len(r.router.affinities.table.entries) < n for r in gw.routers):
        assert time.monotonic() < deadline, "the routers did not share the affinity"
        time.sleep(0.01)


def test_affinity_holds_under_round_robin_and_falls_back(
        trio: tuple[Gateway, dict[str, FakeUpstream]]) -> None:
    gw, fakes = trio
    with gw.client() as c:
        # without a session: round-robin spreads the requests
        spread = Counter(_send(c, None) for _ in range(6))
        assert len(spread) == 3, spread

        first = _send(c, "sess-A")
        _wait_shared(gw, 1)
        assert [_send(c, "sess-A") for _ in range(8)] == [first] * 8

        # another model of the same session (Claude Code's background calls): its own route
        others = {_send(c, "sess-A", "claude-haiku-4-5") for _ in range(3)}
        assert len(others) == 1
        # another session is placed by the strategy, and sticks too
        second = _send(c, "sess-B")
        assert [_send(c, "sess-B") for _ in range(4)] == [second] * 4

        # the sticky provider fails: the request falls back, the session moves with it
        fakes[first].push(Behavior(status=503))
        moved = _send(c, "sess-A")
        assert moved != first
        assert fakes[first].requests[-1].status == 503
        _wait_shared(gw, 3)
        deadline = time.monotonic() + 5
        while any(r.router.affinities.sticky("sess-A", MODEL, 3600) != moved
                  for r in gw.routers):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert [_send(c, "sess-A") for _ in range(4)] == [moved] * 4

        # affinity off (at run time): the strategy again
        run_nats(gw.nats_url, lambda nc: admin.put_setting(
            nc, "routing", RoutingSettings(affinity=False)))
        deadline = time.monotonic() + 5
        while any(r.router.settings.routing.affinity for r in gw.routers):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert len({_send(c, "sess-A") for _ in range(6)}) == 3
