"""Rate limits of users and keys with real nats-server, two edges, a router and fake
providers: RPM 5 across two edges refuses the 6th with retry-after in each dialect; TPM counts
the real usage from the facts; concurrency 2 refuses the third request in flight and admits
again after one finishes, after a client disconnect and after a router is killed; the models
list follows the key's allow-list; the extra requests admitted at the crossing when both
edges are hit at once (printed: a measurement)."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from codeswitch import admin as provider_admin
from codeswitch import users as u
from edge.ratelimit import SPAN_S
from runtime.natsd import EmbeddedNats
from schemas.users import Limits
from tests.e2e.conftest import provider_for
from tests.e2e.gateway import EdgeThread, Gateway, run_nats
from tests.e2e.test_crash import _spawn, _wait_router
from tests.fakes.upstream import Behavior, FakeUpstream
from tests.users.test_edge import DIALECTS, admin, call, error_kind, headers, request

RATE_TYPE = {"anthropic": "rate_limit_error",
             "openai-chat": "rate_limit_exceeded/rate_limit_exceeded",
             "openai-responses": "rate_limit_exceeded/rate_limit_exceeded",
             "gemini": "RESOURCE_EXHAUSTED"}


@pytest.fixture
def two_edges(nats_server: EmbeddedNats
              ) -> Iterator[tuple[Gateway, EdgeThread, dict[str, FakeUpstream]]]:
    fakes = {d: FakeUpstream(d).start() for d in DIALECTS}
    gw = Gateway(nats_server.url)
    second = EdgeThread(nats_server.url)
    try:
        for fake in fakes.values():
            gw.add_provider(provider_for(fake))
        yield gw, second, fakes
    finally:
        second.stop()
        gw.stop()
        for f in fakes.values():
            f.stop()


def _key(url: str, user: str, name: str, **limits: Any) -> tuple[str, str]:
    key, secret = admin(url, lambda nc, a: u.create_key(nc, a, user, name=name,
                                                        limits=Limits(**limits)))
    return key.id, secret


def _seen(edges: list[EdgeThread], ok: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not all(ok(e.app) for e in edges):
        assert time.monotonic() < deadline, "the edges did not see it"
        time.sleep(0.002)


def test_rpm_5_across_two_edges_refuses_the_6th_in_each_dialect(
        two_edges: tuple[Gateway, EdgeThread, dict[str, FakeUpstream]]) -> None:
    gw, second, fakes = two_edges
    url = gw.nats_url
    edges = [gw.edge, second]
    admin(url, lambda nc, a: u.add_user(nc, a, "alice"))
    for dialect in DIALECTS:
        kid, secret = _key(url, "alice", f"rpm-{dialect}", rpm=5)
        _seen(edges, lambda app, kid=kid: kid in app.directory.keys)
        for i in range(5):  # alternating edges
            r = call(edges[i % 2].url, dialect, secret)
            assert r.status_code == 200, (dialect, i, r.text)
            # both edges counted it (the other one from the note)
            _seen(edges, lambda app, kid=kid, n=i + 1:
                  app.ratelimits.core.rates.requests_in(f"k:{kid}", time.time()) >= n)
        fakes[dialect].clear()
        for edge in edges:  # the 6th, on either edge
            r = call(edge.url, dialect, secret)
            status, kind, message = error_kind(dialect, r)
            assert (status, kind) == (429, RATE_TYPE[dialect]), (dialect, r.text)
            retry = int(r.headers["retry-after"])
            assert 1 <= retry <= SPAN_S, retry
            assert f"'rpm-{dialect}'" in message and "allows 5 requests per minute" in message
            assert message.endswith(f"Please retry in {retry}s")
            assert r.headers["x-should-retry"] == "true"
        assert not fakes[dialect].requests  # nothing refused reached a provider


def test_user_rpm_applies_over_all_its_keys(
        two_edges: tuple[Gateway, EdgeThread, dict[str, FakeUpstream]]) -> None:
    gw, second, _ = two_edges
    url = gw.nats_url
    admin(url, lambda nc, a: u.add_user(nc, a, "carol", limits=Limits(rpm=3)))
    keys = [_key(url, "carol", f"k{i}")[1] for i in range(3)]
    kid, loose = _key(url, "carol", "loose", rpm=100)
    _seen([gw.edge, second], lambda app: kid in app.directory.keys)
    for i in range(3):
        assert call([gw.edge, second][i % 2].url, "anthropic", keys[i]).status_code == 200
    time.sleep(0.1)
    r = call(second.url, "anthropic", loose)
    assert r.status_code == 429 and "user carol allows 3 requests per minute" in r.text


def test_tpm_counts_the_real_usage_across_edges(
        two_edges: tuple[Gateway, EdgeThread, dict[str, FakeUpstream]]) -> None:
    gw, second, _ = two_edges
    url = gw.nats_url
    admin(url, lambda nc, a: u.add_user(nc, a, "bob"))
    # the fake Anthropic answer uses 25 + 7 + 11 + 15 = 58 tokens
    kid, secret = _key(url, "bob", "tpm", tpm=100)
    _seen([gw.edge, second], lambda app: kid in app.directory.keys)
    assert call(gw.edge.url, "anthropic", secret).status_code == 200
    # the other edge settles the estimate with the fact's usage
    _seen([gw.edge, second], lambda app: app.ratelimits.core.rates.tokens_in(
        f"k:{kid}", time.time()) == 58)
    assert call(second.url, "anthropic", secret).status_code == 200  # 58 + ~30 estimated
    _seen([gw.edge, second], lambda app: app.ratelimits.core.rates.tokens_in(
        f"k:{kid}", time.time()) == 116)
    for edge in (gw.edge, second):
        r = call(edge.url, "anthropic", secret)
        assert r.status_code == 429, r.text
        assert "allows 100 tokens per minute (116 used in the last minute" in r.text
        assert 1 <= int(r.headers["retry-after"]) <= SPAN_S


def _stream(url: str, secret: str, timeout: float = 30) -> httpx.Response:
    path, body = request("anthropic")
    return httpx.post(url + path, json=body, headers=headers("anthropic", secret),
                      timeout=timeout)


def test_concurrency_2_refuses_the_third_and_admits_after_one_ends_or_its_client_goes(
        two_edges: tuple[Gateway, EdgeThread, dict[str, FakeUpstream]]) -> None:
    gw, second, fakes = two_edges
    url = gw.nats_url
    admin(url, lambda nc, a: u.add_user(nc, a, "dave"))
    kid, secret = _key(url, "dave", "two", concurrency=2)
    _seen([gw.edge, second], lambda app: kid in app.directory.keys)
    fake = fakes["anthropic"]

    def inflight(app: Any) -> int:
        return int(app.ratelimits.core.inflight.total(f"k:{kid}"))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        # two slow requests, one per edge
        fake.push(Behavior(first_byte_delay=3.0), Behavior(first_byte_delay=60))
        first = pool.submit(_stream, gw.edge.url, secret)
        assert fake.wait_requests(1, 10)
        slow = pool.submit(_stream, second.url, secret, 8.0)  # its client gives up after 8 s
        assert fake.wait_requests(2, 10)
        _seen([gw.edge, second], lambda app: inflight(app) == 2)
        for edge in (gw.edge, second):
            r = call(edge.url, "anthropic", secret)
            assert r.status_code == 429, r.text
            assert "allows 2 requests in flight at once" in r.text
            assert r.headers["retry-after"] == "1"
        # the first one finishes: a third is admitted (on either edge)
        assert first.result(10).status_code == 200
        _seen([gw.edge, second], lambda app: inflight(app) == 1)
        assert call(gw.edge.url, "anthropic", secret).status_code == 200
        # the slow one's client disconnects: released, on both edges
        with pytest.raises(httpx.ReadTimeout):
            slow.result(15)
        _seen([gw.edge, second], lambda app: inflight(app) == 0)
        fake.push(Behavior(first_byte_delay=1.0), Behavior(first_byte_delay=1.0))
        both = [pool.submit(_stream, e.url, secret) for e in (gw.edge, second)]
        assert [f.result(10).status_code for f in both] == [200, 200]
    _seen([gw.edge, second], lambda app: inflight(app) == 0)
    assert gw.edge.app.ratelimits.core.inflight.local == {}
    assert second.app.ratelimits.core.inflight.local == {}


def test_models_list_follows_the_allow_list(
        two_edges: tuple[Gateway, EdgeThread, dict[str, FakeUpstream]]) -> None:
    gw, _, _ = two_edges
    url = gw.nats_url
    admin(url, lambda nc, a: u.add_user(nc, a, "erin"))
    _, every = _key(url, "erin", "any")
    key, claude = admin(url, lambda nc, a: u.create_key(nc, a, "erin", name="claude",
                                                        models=["claude-*"]))
    _seen([gw.edge], lambda app: key.id in app.directory.keys)
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        full = [m["id"] for m in c.get("/v1/models", headers={
            "authorization": f"Bearer {every}"}).json()["data"]]
        cut = [m["id"] for m in c.get("/v1/models", headers={
            "authorization": f"Bearer {claude}"}).json()["data"]]
        anthropic = c.get("/v1/models", headers={"x-api-key": claude,
                                                 "anthropic-version": "2023-06-01"}).json()
        gemini = c.get("/v1beta/models", headers={"x-goog-api-key": claude}).json()
        gemini_all = c.get("/v1beta/models", headers={"x-goog-api-key": every}).json()
    assert any(not m.startswith("claude-") for m in full), full
    assert cut and all(m.startswith("claude-") for m in cut)
    assert cut == [m for m in full if m.startswith("claude-")]
    assert [m["id"] for m in anthropic["data"]] == cut
    assert anthropic["first_id"] == cut[0]
    assert [m["name"] for m in gemini["models"]] == [f"models/{m}" for m in cut]
    assert len(gemini_all["models"]) == len(full)


def test_extra_requests_admitted_at_the_crossing(
        two_edges: tuple[Gateway, EdgeThread, dict[str, FakeUpstream]]) -> None:
    """Measured, with a bound: both edges hit at the same instant while the window is one
    short of the limit admit at most one extra (the other edge's); a burst of 16 at once,
    8 on each edge, from an empty window: how many pass a limit of 5."""
    gw, second, _ = two_edges
    url = gw.nats_url
    admin(url, lambda nc, a: u.add_user(nc, a, "frank"))
    extras: list[int] = []
    burst_extras: list[int] = []
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for round_ in range(3):
            kid, secret = _key(url, "frank", f"cross{round_}", rpm=5)
            _seen([gw.edge, second], lambda app, kid=kid: kid in app.directory.keys)
            for i in range(4):
                assert call([gw.edge, second][i % 2].url, "anthropic", secret) \
                    .status_code == 200
            _seen([gw.edge, second], lambda app, kid=kid: app.ratelimits.core.rates
                  .requests_in(f"k:{kid}", time.time()) == 4)
            got = list(pool.map(lambda e, s=secret: call(e.url, "anthropic", s).status_code,
                                [gw.edge, second]))
            extras.append(got.count(200) - 1)
            kid, secret = _key(url, "frank", f"burst{round_}", rpm=5)
            _seen([gw.edge, second], lambda app, kid=kid: kid in app.directory.keys)
            got = list(pool.map(lambda e, s=secret: call(e.url, "anthropic", s).status_code,
                                [gw.edge, second] * 8))
            burst_extras.append(got.count(200) - 5)
    print(f"\nextra admitted at the crossing (2 edges, one request each): {extras}; "
          f"burst of 16 over 2 edges at rpm 5: {burst_extras}")
    assert all(0 <= x <= 1 for x in extras), extras
    assert all(0 <= x <= 1 for x in burst_extras), burst_extras


def test_a_killed_router_releases_its_requests(nats_server: EmbeddedNats,
                                               tmp_path: Path) -> None:
    url = nats_server.url
    fake = FakeUpstream("anthropic").start()
    run_nats(url, lambda nc: provider_admin.put_provider(nc, provider_for(fake, name="main")))
    router = _spawn("worker", "router", "--nats-url", url, home=tmp_path / "home")
    edge = EdgeThread(url)
    try:
        _wait_router(url)
        admin(url, lambda nc, a: u.add_user(nc, a, "gina"))
        kid, secret = _key(url, "gina", "one", concurrency=1)
        _seen([edge], lambda app: kid in app.directory.keys)
        fake.push(Behavior(hang=True))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(_stream, edge.url, secret)
            assert fake.wait_requests(1, 10)
            assert call(edge.url, "anthropic", secret).status_code == 429
            router.send_signal(signal.SIGKILL)
            lost = held.result(15)
        assert lost.status_code == 424, lost.text  # the router was lost with the call
        assert edge.app.ratelimits.core.inflight.total(f"k:{kid}") == 0
        router.wait()
        router = _spawn("worker", "router", "--nats-url", url, home=tmp_path / "home")
        _wait_router(url)
        assert call(edge.url, "anthropic", secret).status_code == 200
    finally:
        edge.stop()
        router.kill()
        router.wait()
        fake.stop()
