"""Gateway parts as separate processes on a NATS cluster, as an operator runs them
(``python -m runtime.launch PART --nats-url URLS --home DIR``): for the cluster tests and
``bench/cluster.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from runtime.process import free_port

__all__ = ["Parts"]

ROOT = Path(__file__).resolve().parents[2]


class Parts:
    def __init__(self, workdir: Path, urls: str, env: dict[str, str]) -> None:
        self.workdir = Path(workdir)
        self.urls = urls
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.edge_urls: dict[str, str] = {}
        self._args: dict[str, list[str]] = {}

    def start(self, name: str, part: str, *extra: str) -> subprocess.Popen[bytes]:
        """Start (or restart, on the same home and port) part ``part`` as ``name``."""
        if name not in self._args:
            args = [part, "--nats-url", self.urls, "--home", str(self.workdir / name)]
            if part == "edge":
                port = free_port()
                args += ["--host", "127.0.0.1", "--port", str(port), "--grace", "3"]
                self.edge_urls[name] = f"http://127.0.0.1:{port}"
            self._args[name] = [*args, *extra]
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        proc = subprocess.Popen([sys.executable, "-m", "runtime.launch", *self._args[name]],
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                env=self.env, cwd=ROOT, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def stop(self, name: str, timeout: float = 20.0) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def wait_edges(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for name, url in self.edge_urls.items():
            while True:
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited: {self.log(name)[-2000:]}")
                try:
                    if httpx.get(url + "/readiness", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready: {self.log(name)[-2000:]}")
                time.sleep(0.1)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def part_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CODESWITCH_") or k == "CODESWITCH_LOG_LEVEL"}
    return {**env, "COLUMNS": "250", **extra}
