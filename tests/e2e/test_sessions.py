"""Sessions end to end: the recorded requests of Claude Code, Codex and Gemini CLI become
sessions in the ledger (`codeswitch sessions list`, `show` with the conversation from the body
log), and `sessions delete` leaves no trace of one — not in the DuckDB file, the body log, the
event log, nor anywhere in the NATS store directory — while the totals stay, replay included.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.natsd import EmbeddedNats
from schemas.config import GatewaySettings
from tests.e2e.conftest import provider_for
from tests.e2e.gateway import Gateway, run_nats
from tests.fakes.upstream import DEFAULT_TEXT, FakeUpstream
from workers.ledger import service
from workers.ledger.wire import decode_reply

CLIENTS = Path(__file__).parent.parent / "fixtures" / "clients"
CLI = [sys.executable, "-m", "codeswitch"]
CLAUDE = "a4aa0c87-92b1-486c-b918-e890bd70d3e2"
CODEX = "01a21cb6-4561-7703-9933-939bb79b6ef1"
CLAUDE_TEXT = "RUNTOOL: run the marker command with Bash"  # only in Claude Code's request
DROP = {"host", "content-length", "connection", "accept-encoding"}


class LedgerThread:
    """The ledger service in a thread of its own (its own event loop), as `codeswitch up`
    runs it in the workers process."""

    def __init__(self, url: str, home: Path) -> None:
        self.home = home
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.error: BaseException | None = None
        ready = threading.Event()

        async def main() -> None:
            self.stop_event = asyncio.Event()
            ready.set()
            await service.run(url, home, self.stop_event, batch=200)

        def run() -> None:
            try:
                self.loop.run_until_complete(main())
            except BaseException as exc:  # shown by the test that waits for it
                self.error = exc

        self.thread = threading.Thread(target=run, name="ledger", daemon=True)
        self.thread.start()
        ready.wait(10)

    def stop(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)


def ask(url: str, query: str, params: dict[str, Any] | None = None,
        timeout: float = 30) -> Any:
    async def go(nc: Any) -> Any:
        msg = await nc.request(f"cs.ledger.{query}", json.dumps(params or {}).encode(),
                               timeout=timeout)
        body = decode_reply(msg.data, msg.headers)
        assert body["ok"], body
        return body["result"]

    return run_nats(url, go)


def wait_requests(url: str, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ask(url, "overview", timeout=2)["requests"] >= n:
                return
        except Exception:
            pass
        assert time.monotonic() < deadline, f"the ledger never had {n} requests"
        time.sleep(0.1)


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args, "--nats-url", url], capture_output=True, text=True,
                          timeout=120, env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"})


def _recorded(name: str) -> tuple[dict[str, str], bytes]:
    headers = json.loads((CLIENTS / f"{name}.headers.json").read_text())
    return ({k: v for k, v in headers.items() if k.lower() not in DROP},
            (CLIENTS / f"{name}.json").read_bytes())


@pytest.fixture
def world(nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[tuple[Gateway, LedgerThread]]:
    fakes = {d: FakeUpstream(d).start() for d in ("anthropic", "openai-responses", "gemini")}
    gw = Gateway(nats_server.url, settings=GatewaySettings(body_log=True))
    led = LedgerThread(nats_server.url, tmp_path / "home")
    try:
        for fake in fakes.values():
            gw.add_provider(provider_for(fake, models=["*"]) if fake.dialect == "gemini"
                            else provider_for(fake))
        yield gw, led
    finally:
        led.stop()
        gw.stop()
        for fake in fakes.values():
            fake.stop()


def _send_recorded(gw: Gateway) -> None:
    with gw.client() as c:
        headers, body = _recorded("claude_code_2.1.197_recorded")
        turn1 = json.loads(body)
        turn1["messages"] = turn1["messages"][:1]
        for b in (json.dumps(turn1).encode(), body):  # two turns of one Claude Code session
            r = c.post("/v1/messages?beta=true", content=b, headers=headers)
            assert r.status_code == 200, r.text
        headers, body = _recorded("codex_0.171.0_recorded")
        r = c.post("/v1/responses", content=body, headers=headers)
        assert r.status_code == 200, r.text
        headers, body = _recorded("gemini_cli_0.61.0_recorded")
        r = c.post("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                   content=body, headers=headers)
        assert r.status_code == 200, r.text


def _grep(root: Path, needles: list[str]) -> list[str]:
    """Files under ``root`` holding any of ``needles`` (bytes, as stored)."""
    found = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            found += [f"{p.relative_to(root)}: {n}" for n in needles if n.encode() in data]
    return found


def test_recorded_clients_become_sessions_and_delete_leaves_no_trace(
        world: tuple[Gateway, LedgerThread], nats_server: EmbeddedNats) -> None:
    gw, led = world
    url = gw.nats_url
    _send_recorded(gw)
    wait_requests(url, 4)

    listed = cli(url, "sessions", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["session"]: r for r in json.loads(listed.stdout)}
    gemini = next(s for s in rows if s.startswith("gemini-cli-"))
    assert set(rows) == {CLAUDE, CODEX, gemini}
    assert rows[CLAUDE]["requests"] == 2 and rows[CLAUDE]["client"] == "claude-code"
    assert rows[CODEX]["client"] == "codex" and rows[gemini]["client"] == "gemini-cli"
    assert rows[CLAUDE]["title"] == CLAUDE_TEXT
    assert rows[CODEX]["title"] == "RUN_TOOL: run the command the tool call gives"
    assert rows[gemini]["title"] == "Please CALL_SHELL now"
    assert rows[CLAUDE]["devices"] and rows[CLAUDE]["providers"] == ["anthropic"]

    shown = cli(url, "sessions", "show", CLAUDE[:8])  # a unique prefix will do
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert CLAUDE_TEXT in out and "assistant -> tool Bash" in out
    assert "CS_TOOL_MARKER_42" in out  # the tool's result
    assert DEFAULT_TEXT["anthropic"][:20] in out  # the answer of the last request
    as_json = json.loads(cli(url, "sessions", "show", CODEX, "--json").stdout)
    assert [t["kind"] for t in as_json["conversation"]][-1] == "text"
    assert len(as_json["timeline"]) == 1

    # bad input: clear messages, nothing touched
    unknown = cli(url, "sessions", "show", "no-such-session")
    assert unknown.returncode == 2 and "no session 'no-such-session'" in unknown.stderr
    active = cli(url, "sessions", "delete", CLAUDE, "--yes")
    assert active.returncode == 2 and "is active" in active.stderr and "--force" in active.stderr

    before = ask(url, "overview")
    store = nats_server.store_dir
    ledger_file = led.home / "ledger.duckdb"
    needles = [CLAUDE, CLAUDE_TEXT]
    assert _grep(store, needles)  # the event log and the body log hold them now

    deleted = cli(url, "sessions", "delete", CLAUDE, "--yes", "--force", "--json")
    assert deleted.returncode == 0, deleted.stderr
    report = json.loads(deleted.stdout)
    # 2 requests: 2 RequestCompleted + 2 AttemptFinished facts, 2 body-log entries
    assert (report["requests"], report["facts_erased"], report["bodies_erased"]) == (2, 4, 2)

    after = ask(url, "overview")
    for k in ("requests", "errors", "input_tokens", "output_tokens", "cache_read_tokens",
              "total_tokens"):
        assert after[k] == before[k], k
    assert after["cost"] == pytest.approx(before["cost"])
    rows = {r["session"]: r for r in json.loads(cli(url, "sessions", "list", "--json").stdout)}
    assert set(rows) == {CODEX, gemini}
    gone = cli(url, "sessions", "show", CLAUDE)
    assert gone.returncode == 2

    # no trace: the ledger's file, the whole NATS store (event log, body log, KV)
    assert _grep(led.home, needles) == []
    assert _grep(store, needles) == []
    assert ledger_file.exists()

    # a replay from the event log: the same totals, still no trace
    job = ask(url, "replay", {})
    deadline = time.monotonic() + 60
    while ask(url, "status")["replay"]["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert ask(url, "status")["replay"]["state"] == "done", job
    replayed = ask(url, "overview")
    for k in ("requests", "errors", "total_tokens", "cache_read_tokens"):
        assert replayed[k] == before[k], k
    assert replayed["cost"] == pytest.approx(before["cost"])
    assert {r["session"] for r in ask(url, "sessions")} == {CODEX, gemini}
    assert _grep(led.home, needles) == []
