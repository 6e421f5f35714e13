"""The ledger commands through a throwaway typer app, against a ledger running in a thread."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from codeswitch import cli_alerts
from codeswitch.cli_ledger import parse_time, register
from runtime import bus
from runtime.natsd import EmbeddedNats
from tests.ledger.conftest import ask, publish, recorded
from workers.ledger import service

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


@pytest.fixture
def running(nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A ledger with the recorded sequence folded in, on its own loop in a thread."""
    home = tmp_path / "home"
    events = recorded("ledger_basic.jsonl")
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        nc = await bus.connect(nats_server.url, name="seed")
        await bus.wait_ready(nc)
        await bus.ensure_all(nc.jetstream())
        await publish(nc, events)
        await nc.close()
        await service.run(nats_server.url, home, stop)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()

    async def caught_up() -> None:
        nc = await bus.connect(nats_server.url, name="probe")
        try:
            for _ in range(400):
                try:
                    if (await ask(nc, "status", timeout=1))["state"]["last_seq"] >= len(events):
                        return
                except Exception:
                    pass
                await asyncio.sleep(0.025)
            raise TimeoutError
        finally:
            await nc.close()

    asyncio.run(caught_up())
    try:
        yield nats_server.url, home
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


def test_stats_json_and_tables(running: tuple[str, Path]) -> None:
    url, home = running
    common = ["--home", str(home), "--nats-url", url]
    out = runner.invoke(_app(), ["stats", "--json", "--by", "provider", *common])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["overview"]["requests"] == 5
    assert {r["key"] for r in data["breakdown"]} == {"anthropic-main", "openai", "gemini",
                                                     "local"}
    out = runner.invoke(_app(), ["stats", "--by", "model", "--series", "day", *common],
                        env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "gemini-2.5-pro" in out.output and "unpriced" in out.output
    out = runner.invoke(_app(), ["stats", "--since", "2025-11-18", "--json", *common])
    assert json.loads(out.output)["overview"]["requests"] == 1


def test_log_heatmap_export_replay(running: tuple[str, Path], tmp_path: Path) -> None:
    url, home = running
    common = ["--home", str(home), "--nats-url", url]
    out = runner.invoke(_app(), ["log", "--status", "error", "--json", *common])
    assert [r["request_id"] for r in json.loads(out.output)] == ["req-5"]
    out = runner.invoke(_app(), ["log", "--user", "alice", *common], env={"COLUMNS": "200"})
    assert out.exit_code == 0 and "req-3" in out.output and "req-2" not in out.output
    out = runner.invoke(_app(), ["heatmap", "--since", "2025-11-01", "--until", "2025-12-01",
                                 *common])
    assert out.exit_code == 0, out.output
    assert "Mon" in out.output and "Nov" in out.output and "2 active days" in out.output
    out = runner.invoke(_app(), ["export", "--format", "csv", "--out", str(tmp_path / "x"),
                                 *common])
    assert out.exit_code == 0, out.output
    assert len((tmp_path / "x" / "requests.csv").read_text().splitlines()) == 6
    out = runner.invoke(_app(), ["export", "--table", "attempts", "--out",
                                 str(tmp_path / "a.parquet"), *common])
    assert out.exit_code == 0 and (tmp_path / "a.parquet").stat().st_size > 0
    out = runner.invoke(_app(), ["replay", "--into", str(tmp_path / "r.duckdb"), *common])
    assert out.exit_code == 0, out.output
    assert "17 events replayed" in out.output and "exact from there" in out.output
    out = runner.invoke(_app(), ["replay", *common])
    assert out.exit_code == 0 and "swapped in" in out.output


def test_alerts_history_from_the_ledger_has_a_severity_on_every_row(
    running: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`codeswitch alerts history` against the real ledger: the recorded resolve predates
    AlertResolved.severity; it and the delivery failure show the fire's, never "None"."""
    url, home = running
    monkeypatch.setattr(cli_alerts, "console", Console(width=200))  # no wrapped cells
    app = typer.Typer()
    cli_alerts.register(app)
    common = ["--since", "2025-11-18", "--home", str(home), "--nats-url", url]
    out = runner.invoke(app, ["alerts", "history", "--json", *common])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["source"] == "ledger"
    assert [(r["kind"], r["severity"]) for r in data["items"]] == [
        ("fired", "critical"), ("delivery_failed", "critical"), ("resolved", "critical")]
    out = runner.invoke(app, ["alerts", "history", *common])
    assert out.exit_code == 0, out.output
    rows = [line for line in out.output.splitlines() if "error-rate" in line]
    assert len(rows) == 3 and all("critical" in line for line in rows), out.output
    assert "None" not in out.output


def test_no_ledger_is_a_clear_message(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    for url in (nats_server.url, "nats://127.0.0.1:1"):  # NATS without a ledger; no NATS
        for cmd in (["stats"], ["log"], ["heatmap"], ["export"], ["replay"]):
            out = runner.invoke(_app(), [*cmd, "--home", str(tmp_path), "--nats-url", url])
            assert out.exit_code == 1, (cmd, out.output)
            assert "ledger not running: start the gateway with `codeswitch up`" in out.output
            assert "Traceback" not in out.output


def test_parse_time() -> None:
    now = 1_763_400_000.0
    assert parse_time("24h", now=now) == now - 86400
    assert parse_time("90m", now=now) == now - 5400
    assert parse_time("1763370000") == 1_763_370_000.0
    assert parse_time("2025-11-17T09:00:00+00:00") == 1_763_370_000.0
    assert parse_time(None) is None
    with pytest.raises(typer.BadParameter):
        parse_time("last tuesday")
    assert abs(parse_time("now") - time.time()) < 5  # type: ignore[operator]


def test_log_and_stats_fit_80_columns(running: tuple[str, Path]) -> None:
    """In an 80-column terminal every line fits and every column keeps its whole header
    (rich reads COLUMNS, as a real terminal's width)."""
    url, home = running
    common = ["--home", str(home), "--nats-url", url]
    out = runner.invoke(_app(), ["log", *common], env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[0].split()[:4] == ["time", "provider", "model", "status"]
    assert "req-5" not in out.output  # the request id gives way at 80 columns ...
    assert all(p in out.output for p in ("anthropic-main", "openai", "gemini"))
    out = runner.invoke(_app(), ["log", *common], env={"COLUMNS": "200"})
    assert "req-5" in out.output  # ... whole when there is room
    out = runner.invoke(_app(), ["stats", "--by", "model", *common], env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "gemini-2.5-pro" in out.output
    head = next(line for line in lines if line.startswith("model"))
    assert head.split() == ["model", "reqs", "errors", "tok", "in", "out", "cost", "p50"]
