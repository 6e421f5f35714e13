#!/usr/bin/env python3
"""Real Claude Code on device A, its session on device B (a by-hand check, not CI).

    .venv/bin/python bench/real_clients/sync_devices.py

Starts a hub and two gateways joined to it (tests/sync/harness.py: `codeswitch hub`, `codeswitch
up --join`, devices A and B), a fake Anthropic provider added on B (`env:` key, each device its
own value), the body log on; runs `claude -p` (installed under $CC_DIR, default
/tmp/realcli/claude, as bench/real_clients/claude_code.py does) against A twice in one session
(`--continue`), then shows what B's `codeswitch sessions list` and `sessions show` say about
it, deletes it on B and checks A no longer has it. Prints PASS/FAIL per check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.fakes.upstream import FakeUpstream  # noqa: E402
from tests.sync.harness import Device, Hub  # noqa: E402

CLAUDE = Path(os.environ.get("CC_DIR", "/tmp/realcli/claude")) / "node_modules" / ".bin" / "claude"
FAILED: list[str] = []


def check(name: str, ok: bool, evidence: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {evidence}", flush=True)
    if not ok:
        FAILED.append(name)


def claude(base: str, home: Path, work: Path, prompt: str, *extra: str
           ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "CLAUDE_", "CODESWITCH_"))}
    env.update({"ANTHROPIC_BASE_URL": base, "ANTHROPIC_AUTH_TOKEN": "sk-cs-test",
                "HOME": str(home), "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
                "DISABLE_ERROR_REPORTING": "1"})
    return subprocess.run([str(CLAUDE), "-p", prompt, *extra], env=env, cwd=work,
                          capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="cs-sync-real-"))
    fake = FakeUpstream("anthropic").start()
    hub = Hub(tmp / "hub").start()
    a = Device("A", tmp / "A", hub.join_url, {"SYNC_FAKE_KEY": "sk-a"})
    b = Device("B", tmp / "B", hub.join_url, {"SYNC_FAKE_KEY": "sk-b"})
    try:
        a.start()
        b.start()
        b.cli("provider", "add", "fake", "--dialect", "anthropic", "--base-url",
              fake.base_url, "--api-key", "env:SYNC_FAKE_KEY")
        b.cli("body-log", "on")
        time.sleep(1.0)
        home, work = tmp / "claude-home", tmp / "work"
        home.mkdir()
        work.mkdir()
        first = claude(a.url, home, work, "say hello from device A")
        check("claude on A", first.returncode == 0, first.stdout.strip()[:80] or first.stderr)
        second = claude(a.url, home, work, "and once more", "--continue")
        check("claude --continue on A", second.returncode == 0,
              second.stdout.strip()[:80] or second.stderr)
        keys = {r.api_key for r in fake.requests}
        check("A's own env: key", keys == {"sk-a"}, f"keys the provider saw: {keys}")
        rows: list[dict[str, object]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = json.loads(b.cli("sessions", "list", "--json").stdout)
            if any(r.get("client") == "claude-code" or r.get("requests", 0) >= 2 for r in rows):
                break
            time.sleep(0.2)
        session = next((r for r in rows if r.get("device") == "A"), None)
        check("A's Claude Code session listed on B", session is not None,
              json.dumps({k: session.get(k) for k in ("session", "client", "device", "requests",
                                                      "title")} if session else rows)[:300])
        if session is None:
            return 1
        sid = str(session["session"])
        show = b.cli("sessions", "show", sid).stdout
        check("its conversation on B", "hello from device A" in show,
              show.strip().splitlines()[-1][:120] if show.strip() else "(empty)")
        deleted = b.cli("sessions", "delete", sid, "--force", "--yes")
        check("deleted on B", deleted.returncode == 0, deleted.stdout.strip()[:120])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sid in a.sessions():
            time.sleep(0.1)
        check("gone on A", sid not in a.sessions(), f"A's sessions: {len(a.sessions())}")
    finally:
        for part in (a, b, hub):
            part.stop()
        fake.stop()
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
