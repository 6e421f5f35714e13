#!/usr/bin/env python3
"""Record the request kinds route rules tell apart, from the real Claude Code (a by-hand tool).

    .venv/bin/python bench/real_clients/record_claude_routes.py OUT_DIR

Runs `claude -p` (installed under $CC_DIR, default /tmp/realcli/claude) straight against a
scripted fake Anthropic provider (tests/fakes/upstream.py) and writes every request it sends
to OUT_DIR/<scenario>-<n>.json (body) and .headers.json. Scenarios: ``hello`` (a plain turn and
whatever background calls come with it), ``agent`` (the fake asks for the Agent tool: the
subagent's own request), ``websearch`` (the fake asks for WebSearch: Claude Code's web-search
call with the server tool), ``image`` (the fake asks to Read a PNG: the image comes back in a
tool_result), ``haiku`` (a plain turn with ANTHROPIC_DEFAULT_HAIKU_MODEL set: without it
Claude Code 2.1.197 sends its background calls, e.g. the session title, with the main model
to a gateway).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import claude_code as cc  # noqa: E402  (bench/real_clients/claude_code.py)

from tests.fakes import upstream as fu  # noqa: E402

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


class Fake(cc.ScriptedFake):
    def _script(self, rec: fu.Received) -> fu.Behavior:
        raw = rec.body.decode("utf-8", "replace")
        body = rec.json if isinstance(rec.json, dict) else {}
        tools = cc._tool_names(self.dialect, body)
        if self.has_tool_result(raw):
            return fu.Behavior(text="ALL_DONE")
        if "SUBAGENT_TASK" in raw:
            return fu.Behavior(text="SUB_DONE")
        if "SPAWNAGENT" in raw and "Agent" in tools:
            return self._call("Agent", {"description": "Say hi", "prompt": "SUBAGENT_TASK say hi",
                                        "subagent_type": "general-purpose"})
        if "DOWEBSEARCH" in raw and "WebSearch" in tools:
            return self._call("WebSearch", {"query": "codeswitch gateway"})
        return super()._script(rec)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    fake = Fake("anthropic", "fa").start()
    home = Path(tempfile.mkdtemp(prefix="ccrec-"))
    work = home / "work"
    work.mkdir()
    (work / "pic.png").write_bytes(PNG)
    scenarios = {"hello": "Say hello", "haiku": "DOWEBSEARCH please", "agent": "SPAWNAGENT please",
                 "websearch": "DOWEBSEARCH please", "image": f"READPNG {work / 'pic.png'}"}
    only = sys.argv[2:]
    try:
        for name, prompt in scenarios.items():
            if only and name not in only:
                continue
            before = len(fake.requests)
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("ANTHROPIC_", "CLAUDE_", "CODESWITCH_"))}
            env.update({"ANTHROPIC_BASE_URL": fake.root_url, "ANTHROPIC_AUTH_TOKEN": "sk-test",
                        "HOME": str(home), "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
                        "DISABLE_ERROR_REPORTING": "1", "DISABLE_BUG_COMMAND": "1",
                        "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1"})
            if name == "haiku":  # what makes its background calls use a small model
                env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] = "claude-haiku-4-5"
            r = subprocess.run([str(cc.CLAUDE), "-p", prompt, "--allowedTools",
                                "Agent,WebSearch,Read"], env=env, cwd=work,
                               capture_output=True, text=True, timeout=180,
                               stdin=subprocess.DEVNULL)
            print(f"== {name}: rc {r.returncode} out {r.stdout.strip()[:200]!r} "
                  f"err {r.stderr.strip()[:200]!r}")
            for n, rec in enumerate(fake.requests[before:]):
                body: Any = rec.json
                summary = ""
                if isinstance(body, dict):
                    sys_ = body.get("system")
                    first = (sys_[1].get("text", "")[:60] if isinstance(sys_, list)
                             and len(sys_) > 1 else str(sys_)[:60])
                    summary = (f"model={body.get('model')} thinking={body.get('thinking')} "
                               f"tools={[t.get('name') for t in body.get('tools') or []][:6]}"
                               f" n_msgs={len(body.get('messages') or [])} sys1={first!r}")
                print(f"  {n}: {rec.method} {rec.path} {summary}")
                (out / f"{name}-{n}.json").write_bytes(rec.body)
                (out / f"{name}-{n}.headers.json").write_text(json.dumps(
                    {k: v for k, v in rec.headers.items()
                     if k.lower() not in ("host", "content-length", "connection")}, indent=1))
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
