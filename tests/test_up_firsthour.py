"""The first hour as a user lives it: `codeswitch up --demo` as a real subprocess (embedded
nats-server, the parts, the demo provider process), then `connect`, a request, `log` at 80
columns and `doctor` — all well, then naming the provider with a refused base URL and the
one with a rejected key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from runtime.process import free_port
from tests.fakes.upstream import FakeUpstream

CLI = [sys.executable, "-m", "codeswitch"]
_KEYS = ("ANTHROPIC_", "OPENAI_", "GEMINI_", "GOOGLE_", "OPENROUTER_", "DEEPSEEK_", "MISTRAL_",
         "XAI_", "GROQ_", "MOONSHOT_", "CODESWITCH_", "CLAUDE_", "CODEX_")


def test_up_demo_connect_log_and_doctor(tmp_path: Path) -> None:
    home, user = tmp_path / "data", tmp_path / "user"
    (user / ".claude").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_KEYS)}
    env.update(HOME=str(user), CODESWITCH_HOME=str(home), COLUMNS="80",
               BAD_PROVIDER_KEY="not-the-right-key")
    port = free_port()
    proc = subprocess.Popen([*CLI, "up", "--demo", "--port", str(port), "--grace", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True)
    fake = FakeUpstream("anthropic").start()
    fake.require_key = "the-right-key"
    try:
        assert proc.stdout is not None
        banner: list[str] = []
        deadline = time.monotonic() + 90
        while not any("check     demo" in line for line in banner):
            assert time.monotonic() < deadline, "".join(banner)
            line = proc.stdout.readline()
            assert line, "".join(banner)
            banner.append(line)
        text = "".join(banner)
        assert "DEMO provider on" in text and "no provider key in the environment" in text
        assert "check     demo: ok" in text

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                                  env=env)

        out = cli("connect", "claude")
        assert out.returncode == 0, out.stderr
        settings = json.loads((user / ".claude" / "settings.json").read_text())
        assert settings["env"]["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}"

        r = httpx.post(f"http://127.0.0.1:{port}/v1/messages", timeout=30, json={
            "model": "claude-anything", "max_tokens": 20,
            "messages": [{"role": "user", "content": "hello"}]})
        assert r.status_code == 200 and r.headers["x-codeswitch-provider"] == "demo"

        deadline = time.monotonic() + 30
        while True:
            log = cli("log")
            if "demo" in log.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "demo" in log.stdout and max(map(len, log.stdout.splitlines())) <= 80

        doctor = cli("doctor")
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "provider demo" in doctor.stdout and "all is well" in doctor.stdout
        assert "claude: points at" in doctor.stdout

        closed = free_port()
        for args in (["dead", "--base-url", f"http://127.0.0.1:{closed}"],
                     ["badkey", "--base-url", fake.base_url, "--api-key",
                      "env:BAD_PROVIDER_KEY"]):
            out = cli("provider", "add", *args[:1], "--dialect", "anthropic", *args[1:],
                      "--no-check")
            assert out.returncode == 0, out.stderr
        doctor = cli("doctor")
        assert doctor.returncode == 1
        lines = doctor.stdout.splitlines()
        dead = next(line for line in lines if "provider dead" in line)
        bad = next(line for line in lines if "provider badkey" in line)
        assert "✗" in dead and "unreachable" in dead and "connection refused" in dead
        assert "✗" in bad and "bad key" in bad and "401" in bad
        assert "not-the-right-key" not in doctor.stdout
        assert "2 to fix" in doctor.stdout
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)
        fake.stop()
