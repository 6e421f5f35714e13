"""Routers that start at the same moment share the work queue. Each used to create the
durable consumer with its own inbox as deliver subject; JetStream took the later create as an
update, so only the last router to start ever received work while both answered the roll
call (seen in CI as "both router processes took requests: 1 == 2")."""

from __future__ import annotations

import concurrent.futures
import time

from codeswitch import admin
from runtime import names
from runtime.natsd import EmbeddedNats
from schemas.events import RequestCompleted
from tests.e2e.conftest import CLIENT_KEY, provider_for
from tests.e2e.gateway import EdgeThread, RouterThread, events, run_nats
from tests.fakes.upstream import FakeUpstream

BODY = {"model": "claude-opus-4-8", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]}


def test_routers_started_together_both_take_work(nats_server: EmbeddedNats) -> None:
    fake = FakeUpstream("anthropic").start()
    run_nats(nats_server.url, lambda nc: admin.put_provider(nc, provider_for(fake)))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        routers = list(pool.map(lambda _: RouterThread(nats_server.url), range(2)))
    edge = EdgeThread(nats_server.url)
    try:
        deadline = time.monotonic() + 15
        while len(run_nats(nats_server.url, admin.roll_call)) < 2:
            assert time.monotonic() < deadline

        async def deliver_subject(nc: object) -> str:
            info = await nc.jetstream().consumer_info(  # type: ignore[attr-defined]
                names.REQUESTS_STREAM, names.ROUTER_DURABLE)
            return str(info.config.deliver_subject)

        assert run_nats(nats_server.url, deliver_subject) == names.ROUTER_DELIVER
        import httpx

        def post(_: int) -> int:
            with httpx.Client(base_url=edge.url, timeout=30) as c:
                return c.post("/v1/messages", json=BODY,
                              headers={"x-api-key": CLIENT_KEY}).status_code

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            assert set(pool.map(post, range(40))) == {200}
        done: list[RequestCompleted] = []
        while len(done) < 40:
            assert time.monotonic() < deadline + 30
            done = [e for _, _, e in events(nats_server.url, 0)
                    if isinstance(e, RequestCompleted)]
        ids = {r.router.router_id for r in routers}
        served = {e.router for e in done}
        assert served == ids, (served, ids)
    finally:
        edge.stop()
        for r in routers:
            r.stop()
        fake.stop()
