#!/usr/bin/env python3
"""The first hour with the real CLIs (a by-hand check, not CI): `codeswitch up --demo`, then
Claude Code, Codex CLI and Gemini CLI answering through the demo provider, connected with
`codeswitch connect` (which reads the gateway's port from run.json); then the gateway with no
provider at all: each CLI must show the gateway's message after ONE request, no retry loop.

    .venv/bin/python bench/real_clients/firsthour.py            # everything
    .venv/bin/python bench/real_clients/firsthour.py demo       # names containing ...

Times quoted: from `codeswitch up --demo` started to Claude Code's answer printed (the
first-minute path; `pip install` already done), and each CLI's wall time. Everything runs
under a temp HOME and data directory, on free ports; all of it is stopped at the end.
The CLIs: /tmp/realcli/{claude,codex,gemini} (see claude_code.py, codex.py, gemini_cli.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent
CLAUDE = Path(os.environ.get("CC_DIR", "/tmp/realcli/claude")) / "node_modules/.bin/claude"
CODEX = Path(os.environ.get("CX_DIR", "/tmp/realcli/codex")) / "node_modules/.bin/codex"
GEMINI = Path(os.environ.get("GM_DIR", "/tmp/realcli/gemini")) / "node_modules/.bin/gemini"
RESULTS: list[tuple[str, bool, str]] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check(name: str, ok: bool, evidence: str) -> None:
    RESULTS.append((name, ok, evidence))
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {evidence}", flush=True)


class World:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="cs-firsthour-"))
        self.home = self.tmp / "user"  # HOME of the CLIs
        self.data = self.tmp / "data"  # codeswitch's data directory
        self.home.mkdir()
        self.work = self.tmp / "work"
        self.work.mkdir()
        self.gw: subprocess.Popen[str] | None = None
        self.port = 0
        self.banner: list[str] = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ANTHROPIC_", "OPENAI_", "GEMINI_", "GOOGLE_", "CLAUDE_",
                                    "CODEX_", "CODESWITCH_", "OPENROUTER_", "DEEPSEEK_"))}
        env.update(HOME=str(self.home), CODESWITCH_HOME=str(self.data), NO_COLOR="1",
                   PATH=f"{VENV}:{CLAUDE.parent}:{CODEX.parent}:{GEMINI.parent}:"
                        + os.environ.get("PATH", ""))
        return env

    def up(self, *extra: str) -> float:
        """Start `codeswitch up`; the seconds until its banner said it listens."""
        self.port = free_port()
        t0 = time.monotonic()
        self.gw = subprocess.Popen([str(VENV / "codeswitch"), "up", "--port", str(self.port),
                                    *extra], env=self.env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        assert self.gw.stdout is not None
        self.banner = []
        while True:
            line = self.gw.stdout.readline()
            if not line:
                raise RuntimeError("codeswitch up exited:\n" + "".join(self.banner))
            self.banner.append(line)
            if "Ctrl-C stops everything" in line:
                return time.monotonic() - t0

    def down(self) -> None:
        if self.gw is not None and self.gw.poll() is None:
            os.killpg(self.gw.pid, signal.SIGINT)
            try:
                self.gw.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.gw.pid, signal.SIGKILL)
                self.gw.wait()
        self.gw = None

    def cs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VENV / "codeswitch"), *args], env=self.env(),
                              capture_output=True, text=True, timeout=120)

    def requests(self) -> list[dict[str, Any]]:
        out = self.cs("log", "--json", "-n", "200")
        try:
            return list(json.loads(out.stdout))
        except ValueError:
            return []

    def wait_requests(self, n: int, timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        rows = self.requests()
        while len(rows) < n and time.monotonic() < deadline:
            time.sleep(0.5)
            rows = self.requests()
        return rows

    def claude(self, prompt: str, *args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], float]:  # noqa: E501
        env = self.env()
        env.update(CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_TELEMETRY="1",
                   DISABLE_AUTOUPDATER="1", DISABLE_ERROR_REPORTING="1")
        t0 = time.monotonic()
        r = subprocess.run([str(CLAUDE), "-p", prompt, *args], env=env, cwd=self.work,
                           capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        return r, time.monotonic() - t0

    def codex(self, prompt: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], float]:  # noqa: E501
        env = self.env()
        t0 = time.monotonic()
        r = subprocess.run([str(CODEX), "exec", "--skip-git-repo-check", "-m", "gpt-5-codex",
                            "-c", "check_for_update_on_startup=false", "-C", str(self.work),
                            prompt], env=env, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        return r, time.monotonic() - t0

    def gemini(self, prompt: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], float]:  # noqa: E501
        env = self.env()
        env.update(GEMINI_CLI_TRUST_WORKSPACE="true")
        t0 = time.monotonic()
        r = subprocess.run([str(GEMINI), "-p", prompt, "-m", "gemini-2.5-flash"], env=env,
                           cwd=self.work, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        return r, time.monotonic() - t0

    def close(self) -> None:
        self.down()
        if not os.environ.get("FH_KEEP"):
            shutil.rmtree(self.tmp, ignore_errors=True)


def _tail(text: str, n: int = 300) -> str:
    return " ".join(text.split())[-n:]


def demo(w: World) -> None:
    t0 = time.monotonic()
    ready = w.up("--demo")
    con = w.cs("connect", "all")
    r, took = w.claude("Say hello")
    total = time.monotonic() - t0
    check("demo-claude", r.returncode == 0 and "You said: 'Say hello'" in r.stdout,
          f"exit {r.returncode}, {took:.1f} s: {_tail(r.stdout or r.stderr, 160)}")
    check("first-minute", r.returncode == 0,
          f"`codeswitch up --demo` -> banner {ready:.1f} s -> `connect all` -> Claude Code's "
          f"answer printed {total:.1f} s after `up` started")
    check("connect-port", f"127.0.0.1:{w.port}" in con.stdout + con.stderr
          or con.returncode == 0, _tail(con.stdout + con.stderr, 200))
    r, took = w.claude("Use a tool", "--allowedTools", "Bash")
    check("demo-claude-tool", r.returncode == 0 and "The tool answered" in r.stdout,
          f"exit {r.returncode}, {took:.1f} s: {_tail(r.stdout or r.stderr, 160)}")
    r, took = w.codex("Say hello")
    check("demo-codex", r.returncode == 0 and "[codeswitch demo]" in r.stdout,
          f"exit {r.returncode}, {took:.1f} s: {_tail(r.stdout or r.stderr, 160)}")
    r, took = w.gemini("Say hello")
    check("demo-gemini", r.returncode == 0 and "[codeswitch demo]" in r.stdout,
          f"exit {r.returncode}, {took:.1f} s: {_tail(r.stdout or r.stderr, 160)}")
    r, took = w.codex("Use a tool")
    check("demo-codex-tool", r.returncode == 0 and "The tool answered" in r.stdout,
          f"exit {r.returncode}, {took:.1f} s: {_tail(r.stdout or r.stderr, 160)}")
    rows = w.wait_requests(5)
    by_client: dict[str, int] = {}
    for row in rows:
        by_client[str(row.get("client"))] = by_client.get(str(row.get("client")), 0) + 1
    check("demo-ledger", len(rows) >= 5 and all(x["provider"] == "demo" for x in rows),
          f"{len(rows)} requests in the ledger, by client {by_client}")
    w.down()


def no_provider(w: World) -> None:
    w.up()  # no --demo, no key in the environment: no provider
    w.cs("connect", "all")  # a new port: connect follows it (run.json)
    before = len(w.requests())
    runs = {"claude": w.claude, "codex": w.codex, "gemini": w.gemini}
    for name, run in runs.items():
        r, took = run("Say hello")
        rows = w.wait_requests(before + 1, timeout=10)
        time.sleep(2)  # a retry would land by now
        rows = w.requests()
        new = len(rows) - before
        before = len(rows)
        full = r.stdout + "\n" + r.stderr
        shown = next((line.strip() for line in full.splitlines()
                      if "no provider is configured" in line), _tail(full, 200))
        check(f"no-provider-{name}", r.returncode != 0 and new == 1
              and "no provider is configured" in full,
              f"exit {r.returncode}, {new} request(s) reached the gateway, {took:.1f} s: "
              f"{shown[:400]}")
    w.down()


def all_failed(w: World) -> None:
    """Two providers, both refusing connections: the gateway tried both; each CLI must show
    which, once."""
    w.up()
    w.cs("connect", "all")
    for name in ("dead-a", "dead-b"):
        w.cs("provider", "add", name, "--dialect", "anthropic", "--base-url",
             f"http://127.0.0.1:{free_port()}", "--no-check")
    before = len(w.requests())
    for name, run in {"claude": w.claude, "codex": w.codex, "gemini": w.gemini}.items():
        r, took = run("Say hello")
        w.wait_requests(before + 1, timeout=10)
        time.sleep(2)  # a retry would land by now
        rows = w.requests()
        new = len(rows) - before
        before = len(rows)
        full = r.stdout + "\n" + r.stderr
        shown = next((line.strip() for line in full.splitlines()
                      if "every provider failed" in line), _tail(full, 200))
        check(f"all-failed-{name}", r.returncode != 0 and new == 1
              and "every provider failed" in full and "dead-a" in full and "dead-b" in full,
              f"exit {r.returncode}, {new} request(s) reached the gateway, {took:.1f} s: "
              f"{shown[:400]}")
    w.down()


SCENARIOS = {"demo": demo, "no-provider": no_provider, "all-failed": all_failed}


def main() -> int:
    wanted = sys.argv[1:]
    w = World()
    try:
        for name, fn in SCENARIOS.items():
            if not wanted or any(x in name for x in wanted):
                fn(w)
    finally:
        w.close()
    failed = [n for n, ok, _ in RESULTS if not ok]
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed"
          + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
