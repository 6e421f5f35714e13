"""Every part supervised (issue 10): restarted with backoff and never given up on, each restart a
log line and a fact, a crash loop reported loudly and its recovery too, nats-server restarted
on the same port, /health's view of the parts, private files, and a clean start after the
supervisor itself was killed with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from codeswitch.supervisor import Part, RestartPolicy, Supervisor, describe_exit
from runtime.health import parts_health
from runtime.process import free_port, pid_alive
from schemas.events import PartChanged, decode_event
from tests.fakes.upstream import Behavior, FakeUpstream
from tests.test_up import CLI, Up

BODY = {"model": "claude-opus-4-8", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]}


# -- the policy and the loop, without a gateway ---------------------------------------------
def test_backoff_doubles_to_the_cap_and_starts_over_after_a_stable_run() -> None:
    policy = RestartPolicy(backoff_start=0.1, backoff_cap=10, stable_after=10)
    waits, backoff = [], 0.0
    for _ in range(10):
        backoff = policy.next_backoff(backoff, ran_for=0.5)
        waits.append(backoff)
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10, 10, 10]
    assert policy.next_backoff(10, ran_for=11) == 0.1  # it ran a while: start over
    now = 1000.0
    assert not policy.crash_looping([now - 61, now - 30, now - 20, now - 10], now)
    assert policy.crash_looping([now - 50, now - 30, now - 20, now - 10, now], now)
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(3) == "exited with code 3"


class _Facts:
    """The supervisor's fact sink: each fact is the JSON fields of a PartChanged (it writes
    them to the outbox without msgspec), decoded here as the event log's readers do."""

    def __init__(self) -> None:
        self.got: list[tuple[str, PartChanged]] = []

    def emit(self, subject: str, event: dict[str, Any]) -> None:
        decoded = decode_event(json.dumps(event).encode())
        assert isinstance(decoded, PartChanged)
        self.got.append((subject, decoded))


def test_a_part_that_keeps_dying_is_never_given_up_on(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    policy = RestartPolicy(backoff_start=0.01, backoff_cap=0.04, stable_after=0.5)
    sup = Supervisor(home=tmp_path, host="127.0.0.1", port=1, nats_url="nats://x",
                     policy=policy)
    facts = _Facts()
    sup.facts = facts  # type: ignore[assignment]
    dying = Part("dying", [sys.executable, "-c", "raise SystemExit(3)"], order=1)
    sup.parts = [dying]
    sup._start_part(dying, dict(os.environ))
    deadline = time.monotonic() + 20
    while dying.restarts_total < 8 and time.monotonic() < deadline:
        sup.tick({})
        time.sleep(0.005)
    assert dying.restarts_total >= 8  # the old supervisor stopped at 5
    assert dying.last_exit == 3 and dying.crash_loop
    states = [e.state for _, e in facts.got]
    assert states.count("crash_loop") == 1  # reported once, not on every restart
    assert states.count("restarted") == dying.restarts_total
    exited = next(e for _, e in facts.got if e.state == "exited")
    assert exited.exit_code == 3 and exited.backoff_s > 0
    assert all(s == f"gateway.part.dying.{e.state}" for s, e in facts.got)
    assert "CRASH LOOP: part dying" in caplog.text
    assert "part dying (pid" in caplog.text and "exited with code 3" in caplog.text
    # the cause goes away: the part stays up for stable_after, and the recovery is reported
    dying.argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    while dying.alive or dying.next_start is None:
        sup.tick({})
        time.sleep(0.005)
    while not dying.alive:
        sup.tick({})
        time.sleep(0.005)
    time.sleep(policy.stable_after + 0.05)
    sup.tick({})
    assert not dying.crash_loop and facts.got[-1][1].state == "recovered"
    assert "part dying recovered" in caplog.text
    assert dying.proc is not None
    dying.proc.kill()
    dying.proc.wait()


# -- parts_health ---------------------------------------------------------------------------
def _parts_file(home: Path, parts: dict[str, Any], *, pid: int | None = None,
                updated: float | None = None) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "parts.json").write_text(json.dumps({
        "pid": pid or os.getpid(), "updated": updated or time.time(), "parts": parts}))


def test_parts_health_reads_the_supervisors_file(tmp_path: Path) -> None:
    me = {"pid": os.getpid(), "alive": True, "restarts": 0, "crash_loop": False}
    ok, detail = parts_health(tmp_path)
    assert not ok and "no parts.json" in detail["reason"]
    _parts_file(tmp_path, {"edge": me, "router": me})
    ok, detail = parts_health(tmp_path)
    assert ok and detail["down"] == [] and detail["supervisor"]["alive"]
    # the process is gone, even if the supervisor has not noticed yet
    gone = subprocess.Popen(["true"])
    gone.wait()
    _parts_file(tmp_path, {"edge": me, "router": {**me, "pid": gone.pid}})
    ok, detail = parts_health(tmp_path)
    assert not ok and detail["down"] == ["router"] and "down: router" in detail["reason"]
    _parts_file(tmp_path, {"edge": me, "router": {**me, "crash_loop": True}})
    ok, detail = parts_health(tmp_path)
    assert not ok and detail["crash_loop"] == ["router"]
    _parts_file(tmp_path, {"edge": me}, updated=time.time() - 60)
    ok, detail = parts_health(tmp_path)
    assert not ok and "not updated" in detail["reason"]
    _parts_file(tmp_path, {"edge": me}, pid=gone.pid)
    ok, detail = parts_health(tmp_path)
    assert not ok and "supervisor gone" in detail["reason"]


# -- a real gateway -------------------------------------------------------------------------
@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream("anthropic") as f:
        yield f


def _parts(home: Path) -> dict[str, Any]:
    return dict(json.loads((home / "parts.json").read_text())["parts"])


def _wait(cond: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, what
        time.sleep(0.02)
    return time.monotonic() - start


def _new_pid(home: Path, part: str, old: int) -> int | None:
    try:
        p = _parts(home)[part]
    except (OSError, ValueError, KeyError):
        return None
    return p["pid"] if p["alive"] and p["pid"] != old and pid_alive(p["pid"]) else None


def _served(url: str) -> bool:
    try:
        return httpx.post(url + "/v1/messages", json=BODY, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _part_facts(url: str, auth: dict[str, str]) -> list[tuple[str, PartChanged]]:
    async def main() -> list[tuple[str, PartChanged]]:
        nc = await nats.connect(url, user=auth["user"], password=auth["password"])
        try:
            sub = await nc.jetstream().pull_subscribe("gateway.part.>", stream="CS_EVENTS")
            got: list[tuple[str, PartChanged]] = []
            while True:
                try:
                    msgs = await sub.fetch(200, timeout=1)
                except (TimeoutError, nats.errors.TimeoutError):  # fetch raises either
                    return got
                for m in msgs:
                    event = decode_event(m.data)
                    assert isinstance(event, PartChanged)
                    got.append((m.subject, event))
        finally:
            await nc.close()

    return asyncio.run(main())


def test_killed_parts_come_back(tmp_path: Path, fake: FakeUpstream,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODESWITCH_RESTART_STABLE_S", "3")  # recovery observable quickly
    up = Up(tmp_path, fake)
    home = up.home
    try:
        auth = json.loads((home / "nats" / "credentials.json").read_text())
        nats_url = up.info["nats_url"]
        assert auth["password"] not in json.dumps(up.info)  # run.json names the file only
        # every part shows by name in ps; no credential on any command line
        for name, pid in up.info["parts"].items():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert auth["password"].encode() not in cmdline
            titles = {"edge": b"codeswitch edge", "router": b"codeswitch worker router",
                      "workers": b"codeswitch worker ledger+quota+alerts"}
            if name != "nats-server":
                assert cmdline.replace(b"\0", b" ").rstrip() == titles[name], cmdline

        # the router, kill -9 six times in a row: back every time
        old = up.info["parts"]["router"]
        kills = []
        for _ in range(6):
            os.kill(old, signal.SIGKILL)
            kills.append(time.monotonic())
            # /health's view: down while it is down
            _wait(lambda: "router" in parts_health(home)[1]["down"], 2, "not seen down")
            _wait(lambda: _new_pid(home, "router", old) is not None, 15,  # noqa: B023
                  "the router did not come back")
            old = _new_pid(home, "router", old)  # type: ignore[assignment]
        assert kills[-1] - kills[0] < 10
        assert _parts(home)["router"]["restarts"] == 6
        assert _parts(home)["router"]["crash_loop"]
        _wait(lambda: httpx.get(up.url + "/readiness").status_code == 200, 15, "not ready")
        assert _served(up.url)
        _wait(lambda: not _parts(home)["router"]["crash_loop"], 10, "no recovery")
        assert parts_health(home)[0]

        # nats-server, kill -9: back on the same port, the gateway serves again
        nats_pid = up.info["parts"]["nats-server"]
        os.kill(nats_pid, signal.SIGKILL)
        killed = time.monotonic()
        _wait(lambda: _new_pid(home, "nats-server", nats_pid) is not None, 10, "no nats-server")
        back = _wait(lambda: _served(up.url), 20, "not served after the nats-server restart")
        assert time.monotonic() - killed < 10, back
        info = json.loads((home / "run.json").read_text())
        assert info["nats_url"] == nats_url and info["parts"]["nats-server"] != nats_pid

        # the facts are on the event log (those of the nats-server restart once it is back)
        facts: list[tuple[str, PartChanged]] = []

        def published() -> bool:
            facts[:] = _part_facts(nats_url, auth)
            return "gateway.part.nats-server.restarted" in [s for s, _ in facts]

        _wait(published, 15, "the nats-server facts were not published")
        subjects = [s for s, _ in facts]
        assert subjects.count("gateway.part.router.restarted") == 6
        assert subjects.count("gateway.part.router.exited") == 6
        assert subjects.count("gateway.part.router.crash_loop") == 1
        assert "gateway.part.router.recovered" in subjects
        assert "gateway.part.nats-server.restarted" in subjects
        exited = next(e for s, e in facts if s == "gateway.part.router.exited")
        assert exited.exit_code == -signal.SIGKILL and exited.part == "router"

        # without the credentials, the embedded NATS says no
        async def anonymous() -> None:
            await nats.connect(nats_url, allow_reconnect=False, max_reconnect_attempts=1,
                               connect_timeout=2, error_cb=_ignore)

        with pytest.raises(Exception, match="Authorization"):
            asyncio.run(anonymous())

        # the password is in the credentials file and the 0600 server config only
        logs = b"".join(f.read_bytes() for f in (home / "logs").rglob("*") if f.is_file())
        assert auth["password"].encode() not in logs

        # nothing in the data directory is readable by another user
        exposed = [str(p) for p in [home, *home.rglob("*")]
                   if stat.S_IMODE(p.lstat().st_mode) & 0o077]
        assert not exposed, exposed
    finally:
        output = up.stop()
    assert "part router (pid" in output and "killed by SIGKILL" in output
    assert "CRASH LOOP: part router" in output and "part router recovered" in output
    assert "part nats-server restarted" in output
    assert auth["password"] not in output


async def _ignore(exc: Exception) -> None:
    pass


def test_up_after_the_supervisor_was_killed(tmp_path: Path, fake: FakeUpstream) -> None:
    up = Up(tmp_path, fake)
    first = up.info
    # a stream in flight when the supervisor is killed still completes: the parts get SIGTERM
    # and finish, nats-server (lame duck) serves them for --grace seconds
    fake.push(Behavior(chunk_delay=0.25, chunks=8))
    result: dict[str, Any] = {}

    def stream() -> None:
        with httpx.Client(timeout=30) as c:
            r = c.post(up.url + "/v1/messages", json={**BODY, "stream": True})
            result["status"], result["text"] = r.status_code, r.text

    t = threading.Thread(target=stream)
    t.start()
    assert fake.wait_requests(1, timeout=10)
    time.sleep(0.3)
    up.proc.kill()  # SIGKILL: run.json and parts.json stay behind, the children get SIGTERM
    up.proc.wait(10)
    t.join(30)
    assert result["status"] == 200 and "event: message_stop" in result["text"], result
    assert (up.home / "run.json").exists()
    again = subprocess.Popen(
        [*CLI, "up", "--home", str(up.home), "--port", str(up.port), "--grace", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "FAKE_PROVIDER_KEY": "sk-from-env-SECRET"})
    try:
        _wait(lambda: again.poll() is None and (up.home / "run.json").exists() and json.loads(
            (up.home / "run.json").read_text())["pid"] == again.pid, 30, "no new run.json")
        _wait(lambda: _served(up.url), 20, "the new gateway does not serve")
        assert not [p for p in first["parts"].values() if pid_alive(p)]
        # one gateway per data directory: a second `up` on it says so
        second = subprocess.run([*CLI, "up", "--home", str(up.home), "--port",
                                 str(free_port())],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1 and f"pid {again.pid}" in second.stderr
    finally:
        again.send_signal(signal.SIGTERM)
        out = again.communicate(timeout=30)[0].decode()
    assert "did not stop cleanly" in out and "codeswitch stopped" in out
