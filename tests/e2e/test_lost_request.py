"""A request a router took and then lost (it never answered): it may have run upstream, so the
client gets a status it does not retry by itself, with x-should-retry: false. That is 424 for
the SDKs, Claude Code and Gemini CLI; Codex retries a 424 (every status but 400, 401 and 429,
up to 5 times: bench/real_clients/codex.py lost-424), so it gets 400 with the same body."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from nats.js import api as js_api

from runtime import bus, names
from runtime.natsd import EmbeddedNats
from schemas.config import GatewaySettings
from schemas.events import RequestCompleted
from schemas.subjects import REQUEST_PREFIX
from tests.e2e.gateway import EdgeThread, _LoopThread, events

CODEX = {"originator": "codex_exec",
         "user-agent": "codex_exec/0.171.0 (Debian 12.0.0; x86_64) xterm (codex_exec; 0.171.0)"}
RESPONSES_BODY = {"model": "gpt-5.5", "input": "hi", "stream": True}


class SilentRouter:
    """Takes every request off the work queue (acks it, as a router does when it picks one up)
    and never answers: to the edge, a router that took the request and went silent."""

    def __init__(self, url: str) -> None:
        self.lt = _LoopThread("silent-router")
        self.taken: list[str] = []

        async def start() -> None:
            self.nc = await bus.connect(url, name="silent-router")
            await bus.wait_ready(self.nc)
            js = self.nc.jetstream()
            await bus.ensure_all(js)

            async def take(msg: Any) -> None:
                await msg.ack()
                self.taken.append(msg.subject)

            await js.subscribe(
                f"{REQUEST_PREFIX}.>", queue=names.ROUTER_DURABLE, durable=names.ROUTER_DURABLE,
                stream=names.REQUESTS_STREAM, cb=take, manual_ack=True,
                config=js_api.ConsumerConfig(ack_policy=js_api.AckPolicy.EXPLICIT,
                                             max_deliver=1,
                                             deliver_subject=names.ROUTER_DELIVER))

        self.lt.run(start())

    def stop(self) -> None:
        try:
            self.lt.run(self.nc.close())
        finally:
            self.lt.close()


@pytest.mark.parametrize(("path", "body", "headers", "status"), [
    ("/v1/responses", RESPONSES_BODY, CODEX, 400),
    ("/v1/responses", RESPONSES_BODY, {"user-agent": "OpenAI/Python 1.99.0"}, 424),
    ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": True,
                      "messages": [{"role": "user", "content": "hi"}]},
     {"user-agent": "claude-cli/2.1.197 (external, sdk-cli)", "anthropic-version": "2023-06-01"},
     424),
], ids=["codex", "openai-sdk", "claude-code"])
def test_a_lost_request_gets_a_status_the_client_does_not_retry(
        nats_server: EmbeddedNats, path: str, body: dict[str, Any], headers: dict[str, str],
        status: int) -> None:
    router = SilentRouter(nats_server.url)
    edge = EdgeThread(nats_server.url, GatewaySettings(pickup_timeout=1.0))
    try:
        with httpx.Client(base_url=edge.url, timeout=30) as c:
            r = c.post(path, json=body, headers=headers)
        assert router.taken, "the request never reached the work queue"
        assert r.status_code == status, r.text
        assert r.headers["x-should-retry"] == "false"
        err = r.json()["error"]
        assert "billed twice" in err["message"]
        if path == "/v1/responses":
            assert err["code"] == "router_lost"
        done = [e for _, _, e in events(nats_server.url, 1) if isinstance(e, RequestCompleted)]
        assert [(e.status, e.error_class, e.delivered) for e in done] == \
            [(status, "router_lost", False)]
    finally:
        edge.stop()
        router.stop()
