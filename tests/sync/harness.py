"""Three nats-servers from the wheel: a hub (`codeswitch hub`) and two gateways joined to it
(`codeswitch up --join`, devices A and B), each a real subprocess with its own data directory,
as a user would run them. Used by tests/sync and bench/sync_lag.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from runtime.process import free_port

CLI = [sys.executable, "-m", "codeswitch"]


def _wait(cond: Any, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
          log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: exited {proc.returncode}: "
                                 + (log.read_text() if log else ""))
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s"
                         + (f"; {log.read_text()}" if log else ""))


class Hub:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.leaf_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def join_url(self) -> str:
        """Known before the hub first starts: its leaf password is made on first use."""
        from codeswitch.cli_sync import LEAF_USER, hub_join_url
        from runtime.natsd import load_or_create_auth

        auth = load_or_create_auth(self.home / "hub" / "leaf.json")
        assert LEAF_USER
        return hub_join_url("127.0.0.1", self.leaf_port, auth.password)

    def start(self) -> Hub:
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.home / "hub.out"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*CLI, "hub", "--home", str(self.home), "--port", str(self.port),
                 "--leaf-port", str(self.leaf_port), "--host", "127.0.0.1"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait(lambda: b"leaf nodes on" in log.read_bytes(), 30, "hub", self.proc, log)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


class Device:
    """``codeswitch up --join`` as device ``name``."""

    def __init__(self, name: str, home: Path, join: str, env: dict[str, str]) -> None:
        self.name = name
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "CODESWITCH_DEVICE": name, "CODESWITCH_JOIN": join,
                    "CODESWITCH_HOME": str(home)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.out = home.parent / f"{name}.out"

    def start(self) -> Device:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.out.open("ab") as out:
            self.proc = subprocess.Popen(
                [*CLI, "up", "--home", str(self.home), "--port", str(self.port), "--grace",
                 "5"], stdout=out, stderr=subprocess.STDOUT, env=self.env)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        def ready() -> bool:
            try:
                return (httpx.get(self.url + "/readiness", timeout=1).status_code == 200
                        and (self.home / "run.json").exists())
            except httpx.HTTPError:
                return False

        _wait(ready, 90, f"device {self.name}", self.proc, self.out)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    @property
    def nats_url(self) -> str:
        info = json.loads((self.home / "run.json").read_text())
        creds = json.loads(Path(info["nats_credentials"]).read_text())
        host = info["nats_url"].split("://", 1)[1]
        return f"nats://{creds['user']}:{creds['password']}@{host}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*CLI, *args], capture_output=True,  # $CODESWITCH_HOME: its home
                           text=True, env=self.env, timeout=60)
        if check:
            assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
        return r

    def ask(self, query: str, params: dict[str, Any] | None = None) -> Any:
        from codeswitch.cli_ledger import ask

        return asyncio.run(ask(self.nats_url, query, params or {}, timeout=10))

    def sessions(self) -> set[str]:
        return {s["session"] for s in self.ask("sessions", {"limit": 1000})}

    def request_ids(self) -> list[str]:
        return [r["request_id"] for r in self.ask("log", {"limit": 10000})]

    def send(self, session: str, text: str = "hello") -> httpx.Response:
        return httpx.post(self.url + "/v1/messages", timeout=30, headers={
            "x-api-key": "test", "anthropic-version": "2023-06-01",
            "x-codeswitch-session": session},
            json={"model": "claude-sonnet-4-5", "max_tokens": 16,
                  "messages": [{"role": "user", "content": text}]})
