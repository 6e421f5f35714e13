"""`codeswitch up` as users run it: a real subprocess with the embedded nats-server, the CLI
against it, and a clean, ordered shutdown that lets in-flight requests finish."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runtime.natsd import EmbeddedNats
from runtime.process import free_port
from tests.fakes.upstream import Behavior, FakeUpstream

CLI = [sys.executable, "-m", "codeswitch"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


class Up:
    def __init__(self, tmp: Path, fake: FakeUpstream, *extra: str) -> None:
        self.home = tmp / "home"
        self.port = free_port()
        config = tmp / "codeswitch.toml"
        config.write_text(
            "[gateway]\npickup_timeout = 3\n\n"
            "[[providers]]\n"
            'name = "fake"\n'
            'dialect = "anthropic"\n'
            f'base_url = "{fake.base_url}"\n'
            'api_key = "env:FAKE_PROVIDER_KEY"\n'
            'models = ["claude-*"]\n'
        )
        env = {**os.environ, "FAKE_PROVIDER_KEY": "sk-from-env-SECRET"}
        self.proc = subprocess.Popen(
            [*CLI, "up", "--home", str(self.home), "--config", str(config), "--port",
             str(self.port), "--grace", "10", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            self._wait_ready()
        except BaseException:
            self.proc.kill()  # its children follow (PR_SET_PDEATHSIG): no orphans
            self.proc.wait(10)
            raise
        self.info = json.loads((self.home / "run.json").read_text())

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read().decode()  # type: ignore[union-attr]
            try:
                if httpx.get(self.url + "/readiness", timeout=1).status_code == 200 and \
                        (self.home / "run.json").exists():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("gateway did not become ready")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a `codeswitch` command against this gateway (found through its run file)."""
        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "CODESWITCH_HOME": str(self.home)})

    def pids(self) -> list[int]:
        pids = list(self.info["parts"].values())
        nats = subprocess.run(["pgrep", "-f", str(self.home / "nats")], capture_output=True,
                              text=True).stdout.split()
        return pids + [int(p) for p in nats]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        return out.decode()


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream("anthropic") as f:
        yield f


def test_up_serves_and_stops_cleanly(tmp_path: Path, fake: FakeUpstream) -> None:
    up = Up(tmp_path, fake)
    try:
        assert up.info["embedded_nats"] is True
        assert set(up.info["parts"]) >= {"edge", "router"}
        pids = up.pids()
        assert len(pids) >= 3
        # an in-flight stream that outlives the SIGTERM still completes
        fake.push(Behavior(chunk_delay=0.3, chunks=8))
        result: dict[str, object] = {}

        def stream() -> None:
            with httpx.Client(timeout=30) as c:
                r = c.post(up.url + "/v1/messages", json={
                    "model": "claude-opus-4-8", "max_tokens": 10, "stream": True,
                    "messages": [{"role": "user", "content": "hi"}]})
                result["status"], result["text"] = r.status_code, r.text

        t = threading.Thread(target=stream)
        t.start()
        assert fake.wait_requests(1, timeout=10)
        time.sleep(0.3)
        output = up.stop()
        t.join(30)
        assert result["status"] == 200
        assert "event: message_stop" in str(result["text"]), result
        assert "codeswitch stopped" in output
        assert fake.requests[0].headers["x-api-key"] == "sk-from-env-SECRET"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        assert not [p for p in pids if _alive(p)], "orphaned processes after stop"
        assert not (up.home / "run.json").exists()
    finally:
        if up.proc.poll() is None:
            up.proc.kill()


def test_cli_providers_and_tail_against_running_gateway(tmp_path: Path,
                                                        fake: FakeUpstream) -> None:
    up = Up(tmp_path, fake)
    cli = up.cli

    try:
        listed = json.loads(cli("provider", "list", "--json").stdout)
        assert [p["name"] for p in listed] == ["fake"]
        assert listed[0]["api_key"] == "env:FAKE_PROVIDER_KEY"
        added = cli("provider", "add", "second", "--dialect", "openai-chat", "--base-url",
                    "http://127.0.0.1:9/v1", "--api-key", "sk-literal-SECRET-abcd",
                    "--model", "gpt-*", "--idle-timeout", "42", "--weight", "3")
        assert added.returncode == 0, added.stderr
        listed = json.loads(cli("provider", "list", "--json").stdout)
        second = next(p for p in listed if p["name"] == "second")
        assert "SECRET" not in second["api_key"] and second["api_key"].endswith("abcd")
        assert second["timeouts"]["idle"] == 42 and second["weight"] == 3
        disabled = cli("provider", "disable", "fake")
        # the command returns once the running router uses the change: no sleep needed
        assert disabled.returncode == 0 and "in effect on 1 router" in disabled.stdout
        with httpx.Client(timeout=30) as c:
            r = c.post(up.url + "/v1/messages", json={
                "model": "claude-opus-4-8", "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 503  # the only provider for the model is disabled
        assert cli("provider", "enable", "fake").returncode == 0
        switched = cli("use", "fake", "--client", "claude")
        assert switched.returncode == 0 and "in effect on 1 router" in switched.stdout, \
            switched.stdout + switched.stderr
        tail = subprocess.Popen([*CLI, "tail", "--json", "-n", "1"], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "CODESWITCH_HOME": str(up.home)})
        # tail's subscription is core NATS: a fact published before it subscribed is not
        # shown. Requests until it shows one (a loaded machine starts the CLI slowly).
        out = None
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=30) as c:
            while out is None and time.monotonic() < deadline:
                r = c.post(up.url + "/v1/messages", json={
                    "model": "claude-opus-4-8", "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200
                try:
                    out, _ = tail.communicate(timeout=2)
                except subprocess.TimeoutExpired:
                    continue
        assert out is not None, "tail showed no fact in 30 s"
        fact = json.loads(out.strip().splitlines()[-1])
        assert fact["type"] == "RequestCompleted" and fact["provider"] == "fake"
        assert fact["usage"]["input_tokens"] == 25
        assert cli("provider", "remove", "second").returncode == 0
        missing = cli("provider", "remove", "second")
        assert missing.returncode == 1 and "no provider named" in missing.stderr
    finally:
        up.stop()


def test_cli_without_gateway_says_so(tmp_path: Path) -> None:
    r = subprocess.run([*CLI, "provider", "list", "--nats-url", f"nats://127.0.0.1:{free_port()}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "cannot reach NATS" in r.stderr and "Traceback" not in r.stderr


def test_config_error_names_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[providers]]\nname = "a"\ndialect = "anthropic"\n'
                      'base_url = "https://x"\npriority = "high"\n')
    r = subprocess.run([*CLI, "up", "--home", str(tmp_path / "h"), "--config", str(config)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert f"{config}:5" in r.stderr.replace("\n", "") and "providers[0].priority" in r.stderr


def test_init_streams_script_uses_the_same_definitions(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "nats") as server:
        root = Path(__file__).resolve().parent.parent
        r = subprocess.run(["bash", str(root / "deploy/nats/init-streams.sh"), server.url],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PATH": f"{Path(sys.executable).parent}:"
                                                      f"{os.environ['PATH']}"})
        assert r.returncode == 0, r.stderr
        assert "CS_REQUESTS" in r.stdout and "CS_EVENTS" in r.stdout
        again = subprocess.run(["bash", str(root / "deploy/nats/init-streams.sh"), server.url],
                               capture_output=True, text=True, timeout=60,
                               env={**os.environ, "PATH": f"{Path(sys.executable).parent}:"
                                                          f"{os.environ['PATH']}"})
        assert again.returncode == 0, again.stderr


def test_facts_flow_into_ledger_stats_and_breaker_status(tmp_path: Path,
                                                         fake: FakeUpstream) -> None:
    """The real router's facts, projected by the real ledger, answered by `codeswitch stats`."""
    up = Up(tmp_path, fake)
    cli = up.cli

    try:
        with httpx.Client(timeout=30) as c:
            for stream in (False, True, False):
                r = c.post(up.url + "/v1/messages", json={
                    "model": "claude-opus-4-8", "max_tokens": 5, "stream": stream,
                    "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200
            fake.push(Behavior(status=400))
            assert c.post(up.url + "/v1/messages", json={
                "model": "claude-opus-4-8", "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]}).status_code == 400
        deadline = time.monotonic() + 20
        overview: dict[str, object] = {}
        while time.monotonic() < deadline:
            res = cli("stats", "--json")
            if res.returncode == 0:
                overview = json.loads(res.stdout)
                if json.dumps(overview).count('"requests": 4') or \
                        '"requests":4' in json.dumps(overview, separators=(",", ":")):
                    break
            time.sleep(0.5)
        flat = json.dumps(overview, separators=(",", ":"))
        assert '"requests":4' in flat, overview
        assert '"errors":1' in flat, overview
        # 3 successful answers x the fake's usage (input 25, cache read 11, write 7, output 15)
        assert '"output_tokens":45' in flat, overview
        status = json.loads(cli("provider", "status", "--json").stdout)
        assert status["providers"][0]["name"] == "fake" and status["circuits"] == {}
        log = cli("log", "--json")
        assert log.returncode == 0 and log.stdout.count("claude-opus-4-8") >= 4
        # `codeswitch status`: every part up, the ledger has caught up with the log
        st = cli("status", "--json")
        assert st.returncode == 0, st.stdout + st.stderr
        snap = json.loads(st.stdout)
        assert snap["healthy"] and snap["edge_ready"] == "ready" and snap["edge_url"] == up.url
        assert len(snap["routers"]) == 1 and snap["routers"][0]["in_flight"] == 0
        assert snap["streams"]["CS_EVENTS"]["messages"] >= 8  # 4 attempts + 4 requests
        ledger = next(c for c in snap["consumers"] if c["durable"].startswith("ledger-"))
        assert ledger["present"] and ledger["pending"] == 0
        assert "healthy" in cli("status").stdout
    finally:
        up.stop()


def test_status_without_routers_is_degraded(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "nats") as server:
        r = subprocess.run([*CLI, "status", "--json", "--nats-url", server.url,
                            "--home", str(tmp_path / "nohome")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r.stderr
        snap = json.loads(r.stdout)
        assert snap["healthy"] is False and snap["routers"] == [] and snap["edge_url"] is None
        assert {c["durable"]: c["present"] for c in snap["consumers"]}["ledger"] is False


def test_up_with_an_existing_nats(tmp_path: Path, fake: FakeUpstream) -> None:
    with EmbeddedNats(tmp_path / "operator-nats") as server:
        up = Up(tmp_path, fake, "--nats-url", server.url)
        try:
            assert up.info["embedded_nats"] is False and up.info["nats_url"] == server.url
            with httpx.Client(timeout=30) as c:
                r = c.post(up.url + "/v1/messages", json={
                    "model": "claude-opus-4-8", "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200
            assert not (up.home / "nats").exists()
        finally:
            up.stop()


def test_alert_fires_and_resolves_from_real_traffic(tmp_path: Path, fake: FakeUpstream) -> None:
    """Router facts -> alerts worker -> webhook, once on firing and once on resolving."""
    import http.server
    import threading as th

    received: list[dict[str, object]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    th.Thread(target=hook.serve_forever, daemon=True).start()
    up = Up(tmp_path, fake)
    try:
        added = up.cli("alerts", "add", "errors", "--metric", "error_rate", "--threshold", "50",
                       "--window", "5m", "--min-samples", "2", "--cooldown", "10m",
                       "--channel", f"http://127.0.0.1:{hook.server_port}/hook")
        assert added.returncode == 0, added.stderr
        time.sleep(1.0)
        body = {"model": "claude-opus-4-8", "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=30) as c:
            fake.push(*[Behavior(status=503)] * 3)
            assert [c.post(up.url + "/v1/messages", json=body).status_code
                    for _ in range(3)] == [503, 503, 503]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not received:
                time.sleep(0.2)
            assert len(received) == 1, received
            assert "errors" in json.dumps(received[0])
            for _ in range(10):
                assert c.post(up.url + "/v1/messages", json=body).status_code == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(received) < 2:
            time.sleep(0.2)
        assert len(received) == 2, received
        assert "resolved" in json.dumps(received[1]).lower()
        time.sleep(1.0)
        assert len(received) == 2  # nothing more while it stays resolved
        history = up.cli("alerts", "history")
        assert history.returncode == 0 and "errors" in history.stdout
    finally:
        up.stop()
        hook.shutdown()


def test_killed_supervisor_leaves_no_orphans(tmp_path: Path, fake: FakeUpstream) -> None:
    up = Up(tmp_path, fake)
    pids = up.pids()
    assert len(pids) >= 3
    up.proc.kill()  # SIGKILL: no chance to clean up; the kernel tells the children
    up.proc.wait(10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([*CLI, "up", "--home", str(tmp_path / "h"), "--port", str(port)],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "already in use" in r.stderr and "Traceback" not in r.stderr
    assert "listening on" not in r.stdout
    assert not (tmp_path / "h" / "nats").exists()  # stopped before starting anything


def test_the_original_tools_app_json_is_taken_over(tmp_path: Path, fake: FakeUpstream) -> None:
    """A user of the original Code Switch has ~/.code-switch/app.json: its new_api_* (unified
    upstream) and enable_body_log apply, the TOML config saying nothing about them."""
    dead = f"http://127.0.0.1:{free_port()}"  # the NEW-API gateway is down: fallback works
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "app.json").write_text(json.dumps({
        "show_heatmap": True, "auto_start": False, "enable_body_log": True,
        "new_api_enabled": True, "new_api_url": dead, "new_api_token": "sk-newapi-SECRET"}))
    up = Up(tmp_path, fake)
    try:
        shown = up.cli("unified")
        assert "on" in shown.stdout and dead in shown.stdout, shown.stdout
        with httpx.Client(timeout=30) as c:
            r = c.post(up.url + "/v1/messages", json={
                "model": "claude-opus-4-8", "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.headers["x-codeswitch-provider"] == "fake"
        rid = r.headers["x-codeswitch-request-id"]
        deadline = time.monotonic() + 10
        while rid not in up.cli("body-log", "list", "--json").stdout:
            assert time.monotonic() < deadline, "the body log did not keep the request"
            time.sleep(0.2)
    finally:
        output = up.stop()
    assert f"unified upstream on ({dead})" in output and "body_log on" in output
    assert "SECRET" not in output
