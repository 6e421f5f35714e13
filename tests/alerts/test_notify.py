"""Webhook payload shapes and delivery (timeouts, retry with backoff) against a real local
HTTP receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse

import msgspec
import pytest

from schemas.events import AlertFired, AlertResolved
from workers.alerts.notify import (
    Notifier,
    dingtalk_url,
    feishu_sign,
    notification_of,
    probe_notification,
    render,
)
from workers.alerts.rules import Channel, Rule

from .conftest import Receiver

RULE = Rule(name="err", metric="error_rate", threshold=5, window_s=300, severity="critical",
            description="5xx from the upstreams")
FIRED = AlertFired(id="a" * 24, ts=1735689600.0, rule="err", metric="error_rate", value=12.5,
                   threshold=5, comparison=">", window_s=300, severity="critical",
                   message="err: error_rate 12.50% > 5.00% over 300s")
NOTE = notification_of(FIRED, RULE)


def test_generic_json_payload() -> None:
    body = render("json", NOTE)
    assert body == {
        "version": 1, "kind": "fired", "alert_id": "a" * 24, "rule": "err",
        "metric": "error_rate", "scope": "all", "value": 12.5, "severity": "critical",
        "message": "err: error_rate 12.50% > 5.00% over 300s", "ts": 1735689600.0,
        "time": "2025-01-01T00:00:00Z", "threshold": 5.0, "comparison": ">", "window_s": 300.0,
        "fired_id": "a" * 24, "description": "5xx from the upstreams",
    }


def test_resolved_and_reminder_kinds() -> None:
    resolved = AlertResolved(id="b" * 24, ts=1735689700.0, rule="err", metric="error_rate",
                             value=1.0, fired_id="a" * 24, message="back")
    note = notification_of(resolved, RULE)
    assert (note.kind, note.fired_id, note.severity) == ("resolved", "a" * 24, "critical")
    carried = msgspec.structs.replace(resolved, severity="warning")  # the fact's own wins
    assert notification_of(carried, RULE).severity == "warning"
    assert notification_of(carried, None).severity == "warning"
    assert notification_of(resolved, None).severity == "info"
    reminder = AlertFired(**{**{f: getattr(FIRED, f) for f in FIRED.__struct_fields__},
                             "id": "c" * 24, "repeat_of": "a" * 24})
    assert notification_of(reminder, RULE).kind == "reminder"
    assert render("slack", note)["attachments"][0]["color"] == "#2eb886"


def test_slack_payload() -> None:
    body = render("slack", NOTE)
    assert body["text"] == "[FIRING] err (critical): err: error_rate 12.50% > 5.00% over 300s"
    att = body["attachments"][0]
    assert att["color"] == "#d00000" and att["ts"] == 1735689600
    fields = {f["title"]: f["value"] for f in att["fields"]}
    assert fields["Value"] == "12.50%" and fields["Threshold"] == "> 5.00%"


def test_feishu_payload_and_signature() -> None:
    assert render("feishu", NOTE)["msg_type"] == "text"
    assert "[FIRING] err (critical)" in render("feishu", NOTE)["content"]["text"]
    body = render("feishu", NOTE, secret="s3cret", now=1700000000)
    assert body["timestamp"] == "1700000000"
    want = base64.b64encode(
        hmac.new(b"1700000000\ns3cret", b"", hashlib.sha256).digest()).decode()
    assert body["sign"] == want == feishu_sign("s3cret", "1700000000")


def test_dingtalk_payload_and_signed_url() -> None:
    body = render("dingtalk", NOTE)
    assert body["msgtype"] == "markdown"
    assert body["markdown"]["title"] == "[FIRING] err (critical)"
    assert "- **Value**: 12.50%" in body["markdown"]["text"]
    url = dingtalk_url("https://oapi.dingtalk.com/robot/send?access_token=t", "sec", 1700000000000)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    sign = base64.b64encode(
        hmac.new(b"sec", b"1700000000000\nsec", hashlib.sha256).digest()).decode()
    assert query == {"access_token": ["t"], "timestamp": ["1700000000000"], "sign": [sign]}


def test_test_notification_says_so() -> None:
    note = probe_notification(RULE, now=1700000000.0)
    assert note.kind == "test" and note.alert_id.startswith("test-")
    assert render("json", note)["kind"] == "test"


async def test_retry_after_the_receiver_fails_twice(receiver: Receiver) -> None:
    receiver.fail["/hook"] = 2
    notifier = Notifier(backoff_base=0.05)
    started = time.monotonic()
    result = await notifier.deliver(Channel(url=receiver.url(), retries=3), NOTE)
    elapsed = time.monotonic() - started
    await notifier.aclose()
    assert (result.ok, result.attempts, result.status) == (True, 3, 200)
    bodies = receiver.bodies()
    assert len(bodies) == 3 and all(b["alert_id"] == "a" * 24 for b in bodies)
    assert elapsed >= 0.05 + 0.1  # exponential backoff: 0.05 s, then 0.1 s
    ids = {r["headers"]["X-Codeswitch-Alert-Id"] for r in receiver.requests}
    assert ids == {"a" * 24}


async def test_gives_up_after_retries(receiver: Receiver) -> None:
    receiver.status["/hook"] = 503
    notifier = Notifier(backoff_base=0.01)
    result = await notifier.deliver(Channel(url=receiver.url(), retries=2), NOTE)
    await notifier.aclose()
    assert (result.ok, result.attempts, result.error) == (False, 3, "HTTP 503")
    assert len(receiver.bodies()) == 3


async def test_client_errors_are_not_retried(receiver: Receiver) -> None:
    receiver.status["/hook"] = 404
    notifier = Notifier(backoff_base=0.01)
    result = await notifier.deliver(Channel(url=receiver.url(), retries=3), NOTE)
    await notifier.aclose()
    assert (result.ok, result.attempts) == (False, 1)


async def test_timeout_then_success(receiver: Receiver) -> None:
    receiver.delay["/slow"] = 0.5
    notifier = Notifier(backoff_base=0.01)
    result = await notifier.deliver(
        Channel(url=receiver.url("/slow"), timeout_s=0.1, retries=1), NOTE)
    assert (result.ok, result.attempts) == (False, 2)
    assert result.error == "timeout after 0.1s"
    receiver.delay["/slow"] = 0.0
    result = await notifier.deliver(Channel(url=receiver.url("/slow"), timeout_s=2), NOTE)
    await notifier.aclose()
    assert result.ok


@pytest.mark.parametrize(("fmt", "reply"), [
    ("feishu", b'{"code":19021,"msg":"sign match fail or timestamp is not within one hour"}'),
    ("dingtalk", b'{"errcode":310000,"errmsg":"sign not match"}'),
])
async def test_im_bots_report_errors_in_a_200_body(receiver: Receiver, fmt: str,
                                                    reply: bytes) -> None:
    receiver.reply["/bot"] = reply
    notifier = Notifier(backoff_base=0.01)
    result = await notifier.deliver(
        Channel(url=receiver.url("/bot"), format=fmt, retries=1, secret="x"), NOTE)
    await notifier.aclose()
    assert not result.ok and result.attempts == 2 and result.error.startswith(f"{fmt} error")
    if fmt == "dingtalk":
        assert "timestamp=" in receiver.requests[0]["path"]
    else:
        assert "sign" in receiver.bodies("/bot")[0]


async def test_url_from_environment(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CS_TEST_HOOK", receiver.url("/env"))
    notifier = Notifier()
    channel = Channel(url="env:CS_TEST_HOOK", format="slack")
    assert channel.label == "slack:env:CS_TEST_HOOK"
    assert (await notifier.deliver(channel, NOTE)).ok
    monkeypatch.delenv("CS_TEST_HOOK")
    missing = await notifier.deliver(channel, NOTE)
    await notifier.aclose()
    assert not missing.ok and missing.attempts == 0
    assert receiver.bodies("/env")[0]["text"].startswith("[FIRING]")
