"""The body log: off by default (nothing kept), on at run time with `codeswitch body-log on`,
then each request's body and the response exactly as the client got it, streamed or not,
errors included, shown by `codeswitch body-log show` — and never a header or key."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from runtime import names
from tests.e2e.conftest import CLIENT_KEY, MODELS, PROVIDER_KEYS
from tests.e2e.gateway import Gateway, run_nats
from tests.fakes.upstream import Behavior, FakeUpstream

CLI = [sys.executable, "-m", "codeswitch"]
BODY = {"model": MODELS["anthropic"], "max_tokens": 16,
        "messages": [{"role": "user", "content": "remember me"}]}


def _kept(gw: Gateway, request_id: str, timeout: float = 5) -> dict[str, Any] | None:
    async def get(nc: Any) -> bytes | None:
        try:  # no bucket until the body log is first turned on
            obs = await nc.jetstream().object_store(names.BODY_LOG_BUCKET)
            return (await obs.get(request_id)).data
        except Exception:
            return None

    deadline = time.monotonic() + timeout
    while True:
        raw = run_nats(gw.nats_url, get)
        if raw is not None or time.monotonic() > deadline:
            return json.loads(raw) if raw is not None else None
        time.sleep(0.05)


def _cli(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "body-log", *args, "--nats-url", gw.nats_url],
                          capture_output=True, text=True, timeout=60)


def test_body_log_off_then_on(gateway: Gateway, fakes: dict[str, FakeUpstream]) -> None:
    with gateway.client() as c:
        r = c.post("/v1/messages", json=BODY, headers={"x-api-key": CLIENT_KEY})
        assert r.status_code == 200
        assert _kept(gateway, r.headers["x-codeswitch-request-id"], timeout=0.5) is None

        on = _cli(gateway, "on")
        assert on.returncode == 0 and "body log on" in on.stdout, on.stderr
        deadline = time.monotonic() + 5
        while not gateway.edge.app.settings.body_log:
            assert time.monotonic() < deadline, "the edge never saw the setting"
            time.sleep(0.01)

        r = c.post("/v1/messages", json={**BODY, "stream": True},
                   headers={"x-api-key": CLIENT_KEY})
        rid = r.headers["x-codeswitch-request-id"]
        entry = _kept(gateway, rid)
        assert entry is not None
        assert json.loads(entry["request"]) == {**BODY, "stream": True}
        assert entry["response"] == r.text and "event: message_stop" in r.text
        assert (entry["status"], entry["provider"], entry["dialect"]) == (
            200, "anthropic", "anthropic")

        fakes["anthropic"].push(Behavior(status=400))
        bad = c.post("/v1/messages", json=BODY, headers={"x-api-key": CLIENT_KEY})
        err = _kept(gateway, bad.headers["x-codeswitch-request-id"])
        assert err is not None and err["status"] == 400 and err["response"] == bad.text

    blob = json.dumps([entry, err])
    assert CLIENT_KEY not in blob and PROVIDER_KEYS["anthropic"] not in blob

    listed = _cli(gateway, "list", "--json")
    assert listed.returncode == 0
    assert {rid, bad.headers["x-codeswitch-request-id"]} <= {
        e["request_id"] for e in json.loads(listed.stdout)}
    shown = _cli(gateway, "show", rid)
    assert shown.returncode == 0 and "remember me" in shown.stdout
    assert "message_stop" in shown.stdout
    missing = _cli(gateway, "show", "no-such-id")
    assert missing.returncode == 1 and "no body kept" in missing.stderr

    assert _cli(gateway, "off").returncode == 0
    deadline = time.monotonic() + 5
    while gateway.edge.app.settings.body_log:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with gateway.client() as c:
        r = c.post("/v1/messages", json=BODY, headers={"x-api-key": CLIENT_KEY})
    assert _kept(gateway, r.headers["x-codeswitch-request-id"], timeout=0.5) is None
