#!/usr/bin/env python3
"""`codeswitch mcp` against the real Claude Code and Codex CLIs (a by-hand check, not CI).

    .venv/bin/python bench/real_clients/mcp.py

Needs the CLIs the other scripts here install (/tmp/realcli/claude and /tmp/realcli/codex; run
claude_code.py and codex.py once). In a temporary HOME with a server added by hand to each
client's file, it adds a stdio and an HTTP server with `codeswitch mcp add` (an embedded
nats-server holds the list), then asks each CLI itself (`claude mcp list/get`, `codex mcp
list/get`) whether it sees them, with their command, URL and headers, beside the hand-added
one; then `codeswitch mcp remove` and the CLIs again. Prints PASS/FAIL per check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from runtime.natsd import EmbeddedNats  # noqa: E402

CS = ROOT / ".venv" / "bin" / "codeswitch"
CLAUDE = Path("/tmp/realcli/claude/node_modules/.bin/claude")
CODEX = Path("/tmp/realcli/codex/node_modules/.bin/codex")
failures = 0


def check(name: str, ok: bool, evidence: str) -> None:
    global failures
    failures += not ok
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {evidence}", flush=True)


def main() -> int:
    missing = [str(p) for p in (CLAUDE, CODEX) if not p.exists()]
    if missing:
        print(f"missing {missing}: run claude_code.py and codex.py first (they install them)")
        return 2
    base = Path(tempfile.mkdtemp(prefix="cs-mcp-"))
    home = base / "home"
    (home / ".codex").mkdir(parents=True)
    (home / ".claude.json").write_text(json.dumps({"numStartups": 3, "mcpServers": {
        "mine": {"type": "stdio", "command": "echo", "args": ["hi"]}}}, indent=2))
    (home / ".codex" / "config.toml").write_text(
        '# my codex config\nmodel = "gpt-5.5"\n\n[mcp_servers.handmade]\ncommand = "echo"\n'
        'args = ["x"]\n')
    env = {**os.environ, "HOME": str(home), "CODESWITCH_HOME": str(base / "cs"),
           "CODEX_HOME": str(home / ".codex"), "DISABLE_TELEMETRY": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}

    def cli(*cmd: str | Path) -> str:
        r = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True,
                           timeout=120, cwd=base)
        return r.stdout

    with EmbeddedNats(base / "nats") as nats:
        url = ["--nats-url", nats.url]
        subprocess.run([CS, "mcp", "add", "docs", *url, "-e", "DOCS_TOKEN=t1", "--", "npx", "-y",
                        "docs-mcp"], env=env, check=True, capture_output=True)
        subprocess.run([CS, "mcp", "add", "api", *url, "--url", "https://mcp.example.com/mcp",
                        "-H", "Authorization: Bearer tok"], env=env, check=True,
                       capture_output=True)
        listed = cli(CLAUDE, "mcp", "list")
        check("claude-list", all(n in listed for n in ("mine:", "docs: npx -y docs-mcp",
                                                        "api: https://mcp.example.com/mcp")),
              " | ".join(x for x in listed.splitlines() if ":" in x))
        got = cli(CLAUDE, "mcp", "get", "api")
        check("claude-get-http", "Type: http" in got and "Authorization: Bearer tok" in got,
              " ".join(got.split())[:160])
        got = cli(CLAUDE, "mcp", "get", "docs")
        check("claude-get-stdio", "Type: stdio" in got and "DOCS_TOKEN=t1" in got,
              " ".join(got.split())[:160])
        listed = cli(CODEX, "mcp", "list")
        check("codex-list", all(n in listed for n in ("handmade", "docs", "api")),
              " | ".join(" ".join(x.split()) for x in listed.splitlines() if x.strip()))
        got = cli(CODEX, "mcp", "get", "api")
        check("codex-get-http", "streamable_http" in got and "Authorization=" in got,
              " ".join(got.split())[:160])
        subprocess.run([CS, "mcp", "remove", "docs", *url], env=env, check=True,
                       capture_output=True)
        after_claude, after_codex = cli(CLAUDE, "mcp", "list"), cli(CODEX, "mcp", "list")
        check("remove", "docs" not in after_claude and "docs" not in after_codex
              and "mine:" in after_claude and "handmade" in after_codex,
              "docs gone from both, the hand-added servers kept")
        toml = (home / ".codex" / "config.toml").read_text()
        check("codex-comments-kept", toml.startswith("# my codex config"), toml.splitlines()[0])
    print(f"\n{7 - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
