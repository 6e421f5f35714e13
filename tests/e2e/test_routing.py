"""Routing under fault injection: the exact attempt order, what the client received and the
facts written; balancing ratios; breakers and run-time switches shared by two routers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from codeswitch import admin
from runtime.natsd import EmbeddedNats
from schemas.config import (
    ActiveProviders,
    BreakerPolicy,
    RoutingSettings,
    Timeouts,
    UnifiedUpstream,
)
from schemas.events import AttemptFinished, CircuitChanged, RequestCompleted
from tests.e2e.conftest import CLIENT_KEY, provider_for
from tests.e2e.gateway import EdgeThread, Gateway, events, run_nats
from tests.fakes.upstream import Behavior, FakeUpstream

MODEL = "claude-opus-4-8"
BODY = {"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def trio(nats_server: EmbeddedNats) -> Iterator[tuple[Gateway, list[FakeUpstream]]]:
    """A gateway with three Anthropic providers a (priority 1), b (2), c (3)."""
    fakes = [FakeUpstream("anthropic").start() for _ in range(3)]
    gw = Gateway(nats_server.url)
    try:
        fast = Timeouts(connect=2, first_byte=1.0, idle=0.5, total=10)
        for name, fake, prio in zip("abc", fakes, (1, 2, 3), strict=True):
            gw.add_provider(provider_for(fake, name=name, priority=prio, timeouts=fast))
        yield gw, fakes
    finally:
        gw.stop()
        for f in fakes:
            f.stop()


def _attempts(gw: Gateway, n: int) -> list[tuple[str, str, int, str | None]]:
    got = events(gw.nats_url, n)
    return [(e.provider, e.outcome, e.status, e.error_class) for _, _, e in got
            if isinstance(e, AttemptFinished)]


def _final(gw: Gateway, n: int) -> RequestCompleted:
    got = [e for _, _, e in events(gw.nats_url, n) if isinstance(e, RequestCompleted)]
    return got[-1]


def _post(gw: Gateway, body: dict = BODY, **headers: str) -> httpx.Response:  # type: ignore[type-arg]
    with gw.client() as c:
        return c.post("/v1/messages", json=body, headers={"x-api-key": CLIENT_KEY, **headers})


def test_503_then_429_then_ok(trio: tuple[Gateway, list[FakeUpstream]]) -> None:
    gw, (a, b, _c) = trio
    a.push(Behavior(status=503))
    b.push(Behavior(status=429, headers={"retry-after": "30"}))
    r = _post(gw)
    assert r.status_code == 200 and r.headers["x-codeswitch-provider"] == "c"
    assert r.json()["content"][0]["text"]
    assert _attempts(gw, 4) == [("a", "fallback", 503, "http_503"),
                                ("b", "fallback", 429, "http_429"), ("c", "ok", 200, None)]
    done = _final(gw, 4)
    assert (done.provider, done.attempts, done.status) == ("c", 3, 200)
    # Retry-After is honoured: b goes last while it cools down
    a.push(Behavior(status=503))
    r = _post(gw)
    assert r.headers["x-codeswitch-provider"] == "c"
    assert len(b.requests) == 1


def test_hang_times_out_and_falls_back(trio: tuple[Gateway, list[FakeUpstream]]) -> None:
    gw, (a, _b, _) = trio
    a.push(Behavior(hang=True))
    t0 = time.monotonic()
    r = _post(gw)
    assert r.status_code == 200 and r.headers["x-codeswitch-provider"] == "b"
    assert 0.9 < time.monotonic() - t0 < 5
    assert _attempts(gw, 3)[0] == ("a", "fallback", 0, "timeout")
    assert a.wait_disconnect(0, timeout=5) is not None  # we hung up on the hanging provider


def test_stall_and_cut_before_content_fall_back(trio: tuple[Gateway, list[FakeUpstream]]) -> None:
    gw, (a, b, _c) = trio
    a.push(Behavior(cut_after=1))  # message_start only, then the connection drops
    b.push(Behavior(stream_error_after=1))  # message_start, then event: error (overloaded)
    with gw.client() as cl:
        r = cl.post("/v1/messages", json={**BODY, "stream": True},
                    headers={"x-api-key": CLIENT_KEY})
    assert r.status_code == 200 and r.headers["x-codeswitch-provider"] == "c"
    assert r.text.count("event: message_start") == 1  # nothing of a or b leaked through
    assert "event: error" not in r.text and "event: message_stop" in r.text
    assert [x[:2] for x in _attempts(gw, 4)] == [("a", "fallback"), ("b", "fallback"),
                                                 ("c", "ok")]


def test_stall_after_content_ends_with_in_stream_error(
        trio: tuple[Gateway, list[FakeUpstream]]) -> None:
    gw, (a, b, _) = trio
    a.push(Behavior(stall_after=4))  # content flowed, then silence; idle timeout is 0.5 s
    with gw.client() as cl:
        r = cl.post("/v1/messages", json={**BODY, "stream": True},
                    headers={"x-api-key": CLIENT_KEY})
    assert r.status_code == 200 and r.headers["x-codeswitch-provider"] == "a"
    last = r.text.strip().split("\n\n")[-1]
    assert last.startswith("event: error") and '"type":"error"' in last
    assert len(b.requests) == 0  # content had reached the client: no fallback
    assert _attempts(gw, 2) == [("a", "failed", 200, "timeout")]


def test_client_errors_do_not_fail_over_unless_configured(
        trio: tuple[Gateway, list[FakeUpstream]]) -> None:
    gw, (a, b, _) = trio
    a.push(Behavior(status=404))
    assert _post(gw).status_code == 404
    assert len(b.requests) == 0
    run_nats(gw.nats_url, lambda nc: admin.put_setting(
        nc, "routing", RoutingSettings(failover_statuses=[404, 503])))
    deadline = time.monotonic() + 5
    while 404 not in gw.routers[0].router.settings.routing.failover_statuses:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    a.push(Behavior(status=404))
    r = _post(gw)
    assert r.status_code == 200 and r.headers["x-codeswitch-provider"] == "b"


def test_all_fail_client_gets_a_final_error_in_its_dialect(
        trio: tuple[Gateway, list[FakeUpstream]]) -> None:
    """Every provider failed: the client's dialect, told not to retry (x-should-retry: false,
    never Anthropic's overloaded_error, which Claude Code retries regardless), naming each
    provider tried."""
    gw, fakes = trio
    for f in fakes:
        f.push(Behavior(status=529))
    r = _post(gw)
    # no client family: the honest status (the SDKs read x-should-retry)
    assert r.status_code == 503 and r.json()["error"]["type"] == "api_error"
    assert r.headers["x-should-retry"] == "false"
    message = r.json()["error"]["message"]
    assert "every provider failed" in message and "not retried" in message
    assert all(f"{name}: 529" in message for name in ("a", "b", "c"))
    assert [x[1] for x in _attempts(gw, 4)] == ["fallback", "fallback", "failed"]


def _spread(gw: Gateway, n: int) -> Counter[str]:
    async def go() -> Counter[str]:
        sem = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
            async def one() -> str:
                async with sem:
                    r = await c.post("/v1/messages", json=BODY)
                    assert r.status_code == 200
                    return r.headers["x-codeswitch-provider"]
            return Counter(await asyncio.gather(*[one() for _ in range(n)]))
    return asyncio.run(go())


def test_round_robin_and_weights_spread_1000_requests(nats_server: EmbeddedNats) -> None:
    fakes = [FakeUpstream("anthropic").start() for _ in range(3)]
    gw = Gateway(nats_server.url)
    try:
        for name, fake in zip("xyz", fakes, strict=True):
            gw.add_provider(provider_for(fake, name=name))
        counts = _spread(gw, 1000)
        assert all(abs(counts[n] - 1000 / 3) <= 0.05 * 1000 / 3 for n in "xyz"), counts
        for name, fake, weight in zip("xyz", fakes, (1, 2, 5), strict=True):
            gw.add_provider(provider_for(fake, name=name, weight=weight))
        run_nats(gw.nats_url, lambda nc: admin.put_setting(
            nc, "routing", RoutingSettings(strategy="weighted")))
        while gw.routers[0].router.settings.routing.strategy != "weighted":
            time.sleep(0.01)
        counts = _spread(gw, 1000)
        for name, weight in zip("xyz", (1, 2, 5), strict=True):
            expected = 1000 * weight / 8
            assert abs(counts[name] - expected) <= 0.05 * expected, counts
    finally:
        gw.stop()
        for f in fakes:
            f.stop()


def test_unified_upstream_first_local_list_as_fallback(
        trio: tuple[Gateway, list[FakeUpstream]]) -> None:
    gw, (_a, _b, _c) = trio
    hub = FakeUpstream("anthropic").start()  # a NEW-API style gateway speaking every dialect
    try:
        run_nats(gw.nats_url, lambda nc: admin.put_setting(nc, "unified", UnifiedUpstream(
            enabled=True, url=hub.base_url, token="hub-token-SECRET")))
        while not gw.routers[0].router.settings.unified.enabled:
            time.sleep(0.01)
        r = _post(gw)
        assert r.headers["x-codeswitch-provider"] == "unified"
        assert hub.requests[-1].headers["x-api-key"] == "hub-token-SECRET"
        hub.push(Behavior(status=502))
        r = _post(gw)
        assert r.status_code == 200 and r.headers["x-codeswitch-provider"] == "a"
    finally:
        hub.stop()


# -- two router processes -------------------------------------------------------------------
def _router_process(url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "codeswitch", "worker", "router",
                             "--nats-url", url], env={**os.environ},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_two_router_processes_share_breakers_and_switches(nats_server: EmbeddedNats) -> None:
    bad, good, other = (FakeUpstream("anthropic").start() for _ in range(3))
    bad.default = Behavior(status=503)
    procs = [_router_process(nats_server.url) for _ in range(2)]
    edge = EdgeThread(nats_server.url)
    try:
        policy = BreakerPolicy(failures=4, window_s=60, cooldown_s=600)

        async def setup(nc: object) -> None:
            await admin.put_setting(nc, "routing", RoutingSettings(breaker=policy))  # type: ignore[arg-type]
            for name, fake, prio in (("bad", bad, 1), ("good", good, 2), ("other", other, 3)):
                await admin.put_provider(nc, provider_for(fake, name=name, priority=prio))  # type: ignore[arg-type]

        run_nats(nats_server.url, setup)
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=edge.url, timeout=30) as c:
            while c.get("/readiness").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            # readiness needs one router; this test needs both to share the queue
            while len(run_nats(nats_server.url, admin.roll_call)) < 2:
                assert time.monotonic() < deadline, "the second router never took work"
            routers_seen: set[str] = set()
            for _ in range(12):
                r = c.post("/v1/messages", json=BODY)
                assert r.status_code == 200 and r.headers["x-codeswitch-provider"] == "good"
            # the breaker opened after 4 failures, whichever router saw them
            got = events(nats_server.url, 30)
            opened = [e for _, _, e in got if isinstance(e, CircuitChanged)]
            assert [(e.provider, e.state, e.previous) for e in opened] == [
                ("bad", "open", "closed")], opened
            assert len(bad.requests) == 4
            for e in (x for _, _, x in got if isinstance(x, RequestCompleted)):
                routers_seen.add(e.router or "")
            assert len(routers_seen) == 2, "both router processes took requests"
            # a run-time switch is seen by both routers on their next request
            async def switch(nc: object) -> tuple[int, int]:
                await admin.put_setting(nc, "active",  # type: ignore[arg-type]
                                        ActiveProviders(by_app={"claude": "other"}))
                return await admin.wait_applied(nc)  # type: ignore[arg-type]

            assert run_nats(nats_server.url, switch) == (2, 2)
            served = {c.post("/v1/messages", json=BODY).headers["x-codeswitch-provider"]
                      for _ in range(20)}
            assert served == {"other"}
            done: list[RequestCompleted] = []
            while len(done) < 20:
                assert time.monotonic() < deadline + 30, len(done)
                done = [e for _, _, e in events(nats_server.url, 0)
                        if isinstance(e, RequestCompleted) and e.provider == "other"]
            assert len({e.router for e in done}) == 2
    finally:
        edge.stop()
        for p in procs:
            p.terminate()
            p.wait(20)
        for f in (bad, good, other):
            f.stop()
    assert json.dumps(policy.failures) == "4"
