"""`codeswitch alerts ...` through a throwaway Typer app, against a real NATS."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import msgspec
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from codeswitch import cli_alerts
from codeswitch.cli_alerts import parse_duration, parse_threshold, parse_time, register
from runtime import bus, names
from runtime.natsd import EmbeddedNats
from schemas.events import AlertFired, AlertNotificationFailed, AlertResolved, encode_event
from workers.alerts.service import alert_subject

from .conftest import Receiver

app = typer.Typer()
register(app)
runner = CliRunner()


def cli(server: EmbeddedNats, *args: str) -> tuple[int, str]:
    cli_alerts.console = Console(width=200)  # rich would wrap table cells at 80 columns
    result = runner.invoke(app, ["alerts", *args, "--nats-url", server.url])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def rules_json(server: EmbeddedNats) -> list[dict]:
    code, out = cli(server, "list", "--json")
    assert code == 0, out
    return json.loads(out)


def test_add_list_replace_remove(nats_server: EmbeddedNats, receiver: Receiver) -> None:
    code, out = cli(nats_server, "add", "slow", "--metric", "latency_p99", "--threshold", "30000",
                    "--scope", "model:claude-*", "--window", "10m", "--severity", "critical",
                    "--cooldown", "1h", "--no-remind", "--min-samples", "20",
                    "--channel", receiver.url(),
                    "--channel", f"slack={receiver.url('/slack')}",
                    "--channel", '{"url": "env:DT_HOOK", "format": "dingtalk", "secret": "env:DT"}',
                    "--description", "p99 too high")
    assert code == 0, out
    assert "latency_p99 > 30000 / 600s" in out
    [rule] = rules_json(nats_server)
    assert rule["scope"] == "model:claude-*" and rule["window_s"] == 600.0
    assert rule["cooldown_s"] == 3600.0 and rule["remind"] is False
    assert rule["min_samples"] == 20 and rule["severity"] == "critical"
    assert [c["format"] for c in rule["channels"]] == ["json", "slack", "dingtalk"]
    assert rule["channels"][2]["secret"] == "env:DT"
    assert rule["state"] is None

    code, out = cli(nats_server, "add", "slow", "--metric", "cost", "--threshold", "5")
    assert code == 1 and "exists" in out
    code, out = cli(nats_server, "add", "slow", "--metric", "cost", "--threshold", "5",
                    "--disabled", "--replace")
    assert code == 0
    [rule] = rules_json(nats_server)
    assert (rule["metric"], rule["enabled"]) == ("cost", False)

    code, out = cli(nats_server, "add", "quiet", "--metric", "no_traffic", "--minutes", "15")
    assert code == 0
    code, out = cli(nats_server, "list")
    assert code == 0 and "no request for 15 min" in out and "slow" in out

    assert cli(nats_server, "remove", "slow")[0] == 0
    assert [r["name"] for r in rules_json(nats_server)] == ["quiet"]
    code, out = cli(nats_server, "remove", "slow")
    assert code == 1 and "no rule named slow" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--metric", "p99"], "metric 'p99' not in"),
    (["--metric", "cost", "--scope", "team:x"], "scope 'team:x'"),
    (["--metric", "cost", "--window", "soon"], "not a duration"),
    (["--metric", "cost", "--channel", "teams=http://x"], "must be http(s)://"),
])
def test_add_rejects_bad_rules(nats_server: EmbeddedNats, args: list[str], message: str) -> None:
    code, out = cli(nats_server, "add", "x", *args)
    assert code == 2
    assert message in " ".join(out.replace("│", " ").split())


def test_percent_thresholds(nats_server: EmbeddedNats) -> None:
    """error_rate / quota_used_pct take 20% (or 20 %, or a bare 20) as 20 %; a bare 0.2 is
    refused with a hint instead of silently meaning 0.2 %; other metrics refuse a %."""

    def stored(name: str) -> float:
        return next(r["threshold"] for r in rules_json(nats_server) if r["name"] == name)

    code, out = cli(nats_server, "add", "errors", "--metric", "error_rate", "--threshold", "20%")
    assert code == 0, out
    assert "error_rate > 20% / 300s" in out
    assert stored("errors") == 20.0
    for text, value in (("20 %", 20.0), ("0.2%", 0.2), ("35", 35.0), ("0", 0.0)):
        code, out = cli(nats_server, "add", "errors", "--metric", "error_rate", "--threshold",
                        text, "--replace")
        assert code == 0, out
        assert stored("errors") == value, text

    code, out = cli(nats_server, "add", "errors", "--metric", "error_rate", "--threshold", "0.2",
                    "--replace")
    message = " ".join(out.split())
    assert code == 2, out
    assert ("error_rate is a percentage: did you mean 20%? Write --threshold 20% "
            "(or --threshold 0.2% for 0.2 %)") in message
    assert stored("errors") == 0.0  # the rule was left as it was

    code, out = cli(nats_server, "add", "quota", "--metric", "quota_used_pct", "--threshold", "1")
    assert code == 2 and "did you mean 100%?" in " ".join(out.split())
    code, out = cli(nats_server, "add", "quota", "--metric", "quota_used_pct",
                    "--threshold", "80 %")
    assert code == 0, out
    assert stored("quota") == 80.0

    code, out = cli(nats_server, "add", "spend", "--metric", "cost", "--threshold", "5%")
    assert code == 2 and "cost is not a percentage" in " ".join(out.split())
    code, out = cli(nats_server, "add", "spend", "--metric", "cost", "--threshold", "0.5")
    assert code == 0, out
    assert stored("spend") == 0.5
    code, out = cli(nats_server, "add", "x", "--metric", "error_rate", "--threshold", "lots")
    assert code == 2 and "'lots' is not a number" in out
    assert sorted(r["name"] for r in rules_json(nats_server)) == ["errors", "quota", "spend"]


def test_parse_threshold() -> None:
    assert parse_threshold("error_rate", "20%") == 20.0
    assert parse_threshold("error_rate", " 20 % ") == 20.0
    assert parse_threshold("error_rate", "1.5") == 1.5
    assert parse_threshold("quota_used_pct", "120%") == 120.0
    assert parse_threshold("latency_p99", "0.5") == 0.5
    for metric, text in (("error_rate", "0.2"), ("error_rate", "1"), ("error_rate", "-5%"),
                         ("quota_used_pct", "0.9"), ("tokens", "10%"), ("cost", "nan")):
        with pytest.raises(typer.BadParameter):
            parse_threshold(metric, text)


def test_test_sends_through_every_channel(nats_server: EmbeddedNats, receiver: Receiver) -> None:
    cli(nats_server, "add", "err", "--metric", "error_rate", "--threshold", "5",
        "--channel", receiver.url(), "--channel", f"feishu={receiver.url('/feishu')}")
    code, out = cli(nats_server, "test", "err")
    assert code == 0, out
    assert out.count("sent") == 2
    assert receiver.bodies()[0]["kind"] == "test"
    assert receiver.bodies("/feishu")[0]["msg_type"] == "text"
    receiver.status["/feishu"] = 404
    code, out = cli(nats_server, "test", "err")
    assert code == 1 and "failed feishu:127.0.0.1" in out and "HTTP 404" in out
    assert cli(nats_server, "test", "nope")[0] == 1

    async def last_tested() -> dict[str, object]:
        nc = await bus.connect(nats_server.url, name="t")
        try:
            msg = await nc.jetstream().get_last_msg(names.EVENTS_STREAM, "admin.rule.tested")
            fact: dict[str, object] = json.loads(msg.data or b"{}")
            return fact
        finally:
            await nc.close()
    # a test sends to the outside: an admin fact, with how many channels took it
    fact = asyncio.run(last_tested())
    assert (fact["action"], fact["target"]) == ("rule.tested", "rule:err")
    assert fact["details"] == {"channels": 2, "sent": 1}


def _publish_history(server: EmbeddedNats, now: float) -> None:
    async def main() -> None:
        nc = await bus.connect(server.url, name="t")
        await bus.ensure_all(nc.jetstream())
        for i, (rule, ago) in enumerate([("a", 7200), ("b", 1800), ("a", 600), ("b", 60)]):
            fired = AlertFired(id=f"f{i}", ts=now - ago, rule=rule, metric="cost", value=9.0,
                               threshold=5.0, comparison=">", window_s=300, message=f"m{i}")
            await nc.jetstream().publish(alert_subject(fired), encode_event(fired))
        resolved = AlertResolved(id="r0", ts=now - 30, rule="b", metric="cost", value=1.0,
                                 fired_id="f3")
        await nc.jetstream().publish(alert_subject(resolved), encode_event(resolved))
        await nc.close()

    asyncio.run(main())


def test_history_reads_the_event_log_when_no_ledger_answers(nats_server: EmbeddedNats) -> None:
    now = time.time()
    _publish_history(nats_server, now)
    code, out = cli(nats_server, "history", "--json")
    data = json.loads(out)
    assert data["source"] == "event log"
    assert [r["id"] for r in data["items"]] == ["f0", "f1", "f2", "f3", "r0"]
    code, out = cli(nats_server, "history", "--json", "--since", "1h", "--until", "5m")
    assert [r["id"] for r in json.loads(out)["items"]] == ["f1", "f2"]
    code, out = cli(nats_server, "history", "--json", "--rule", "b", "--limit", "1")
    assert [r["id"] for r in json.loads(out)["items"]] == ["r0"]
    code, out = cli(nats_server, "history", "--since", "2h")
    assert code == 0 and "source: event log" in out and "Resolved" in out


def test_history_from_the_event_log_has_a_severity_on_every_row(
    nats_server: EmbeddedNats,
) -> None:
    """A resolve written before AlertResolved carried the severity and a delivery failure show
    the severity of the alert they refer to; one that carries it shows its own; unknown is -."""
    now = time.time()

    async def main() -> None:
        nc = await bus.connect(nats_server.url, name="t")
        await bus.ensure_all(nc.jetstream())
        js = nc.jetstream()
        facts: list[AlertFired | AlertResolved | AlertNotificationFailed] = [
            AlertFired(id="f1", ts=now - 50, rule="a", metric="cost", value=9.0, threshold=5.0,
                       comparison=">", window_s=300, severity="critical", message="m-f1"),
            AlertNotificationFailed(id="d1", ts=now - 45, rule="a", channel="slack:x",
                                    alert_id="f1", attempts=4, error="HTTP 500"),
            AlertResolved(id="r1", ts=now - 40, rule="a", metric="cost", value=1.0,
                          fired_id="f1", message="m-r1"),  # as written before the field
            AlertResolved(id="r2", ts=now - 30, rule="b", metric="cost", value=1.0,
                          fired_id="f0", severity="info", message="m-r2"),
            AlertResolved(id="r3", ts=now - 20, rule="c", metric="cost", value=1.0,
                          fired_id="gone", message="m-r3"),  # its fire is not in the log
        ]
        for fact in facts:
            await js.publish(alert_subject(fact), encode_event(fact))
        await nc.close()

    asyncio.run(main())
    code, out = cli(nats_server, "history", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["source"] == "event log"
    assert [(r["id"], r["severity"]) for r in data["items"]] == [
        ("f1", "critical"), ("d1", "critical"), ("r1", "critical"), ("r2", "info"),
        ("r3", None)]
    code, out = cli(nats_server, "history", "--rule", "a")
    assert code == 0, out
    rows = [line for line in out.splitlines() if "m-" in line or "HTTP 500" in line]
    assert len(rows) == 3 and all("critical" in line for line in rows), out
    code, out = cli(nats_server, "history", "--rule", "c")
    [row] = [line for line in out.splitlines() if "m-r3" in line]
    assert "None" not in row and " - " in row


@pytest.fixture
def ledger(nats_server: EmbeddedNats) -> Iterator[list[dict]]:
    """A stand-in for the ledger's cs.ledger.alert_history responder, in its own thread."""
    queries: list[dict] = []
    ready = threading.Event()
    stop = threading.Event()

    async def serve() -> None:
        nc = await bus.connect(nats_server.url, name="fake-ledger")

        async def answer(msg) -> None:  # type: ignore[no-untyped-def]
            queries.append(json.loads(msg.data))
            rows = [{"kind": "resolved", "seq": 9, "ts": 1735689660.0, "rule": "a",
                     "value": 1.0, "message": "back to normal"},
                    {"kind": "fired", "seq": 8, "ts": 1735689600.0, "rule": "a",
                     "severity": "critical", "value": 3.0, "message": "from the ledger"}]
            await msg.respond(msgspec.json.encode({"ok": True, "result": rows}))

        await nc.subscribe("cs.ledger.alert_history", cb=answer)
        await nc.flush()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.02)
        await nc.close()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield queries
    stop.set()
    thread.join(10)


def test_history_asks_the_ledger_first(nats_server: EmbeddedNats, ledger: list[dict]) -> None:
    code, out = cli(nats_server, "history", "--since", "1735689000", "--rule", "a")
    assert code == 0, out
    assert "source: ledger" in out and "from the ledger" in out
    assert "None" not in out  # the stand-in's resolved row has no severity: shown as -
    assert out.index("from the ledger") < out.index("back to normal")  # oldest first
    assert ledger == [{"since": 1735689000.0, "until": None, "rule": "a", "limit": 200}]


def test_unreachable_nats_is_a_message_not_a_traceback() -> None:
    for args in (["list"], ["history"], ["remove", "x"], ["add", "x", "--metric", "cost"]):
        result = runner.invoke(app, ["alerts", *args, "--nats-url", "nats://127.0.0.1:1"])
        assert result.exit_code == 2, result.output
        assert "cannot reach NATS at nats://127.0.0.1:1" in result.output
        assert "Traceback" not in result.output
        assert isinstance(result.exception, SystemExit)


def test_time_and_duration_parsing() -> None:
    assert parse_duration("90") == 90 and parse_duration("5m") == 300
    assert parse_duration("1.5h") == 5400 and parse_duration("2d") == 172800
    assert parse_time("1h", now=10000.0) == 6400.0
    assert parse_time("30m ago", now=10000.0) == 8200.0
    assert parse_time("2025-01-01T00:00:00") == 1735689600.0
    assert parse_time("2025-01-01T01:00:00+01:00") == 1735689600.0
    assert parse_time("1735689600.5") == 1735689600.5
