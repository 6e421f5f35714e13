#!/usr/bin/env python3
"""Route rules with the real Claude Code (a by-hand check, not CI).

    .venv/bin/python bench/real_clients/claude_routes.py

Starts the stack of bench/real_clients/claude_code.py (fake providers fa anthropic, fc
openai-chat, fr openai-responses, fg gemini; its own nats-server; `codeswitch up`; a logging
proxy), adds two rules with the CLI while the gateway runs:

    codeswitch route add background --to fc --match 'model=*haiku*' --model gpt-4.1-mini
    codeswitch route add subagents --to fr --match subagent=true

then runs `claude -p "SPAWNAGENT please"` (the fake asks for the Agent tool) with
ANTHROPIC_DEFAULT_HAIKU_MODEL=claude-haiku-4-5 (what makes Claude Code 2.1.197 send its
background calls, the session title, with a small model to a gateway; the title call is
"nonessential traffic", so CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC is left unset) and prints,
for each request Claude Code sent, the model, the x-codeswitch-route and x-codeswitch-provider the
gateway answered with. PASS when the haiku call took `background` to fc, the subagent's call
`subagents` to fr and the main turns no rule to fa.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import claude_code as cc  # noqa: E402
import record_claude_routes as rec  # noqa: E402


def main() -> int:
    cc.ScriptedFake = rec.Fake  # type: ignore[misc]  # knows SPAWNAGENT and SUBAGENT_TASK
    st = cc.Stack().start()
    ok = False
    try:
        url = f"nats://127.0.0.1:{st.nats_port}"
        env = {**os.environ, "CODESWITCH_HOME": str(st.home)}
        for args in (["background", "--to", "fc", "--match", "model=*haiku*", "--model",
                      "gpt-4.1-mini"], ["subagents", "--to", "fr", "--match", "subagent=true"]):
            r = subprocess.run([str(cc.VENV / "codeswitch"), "route", "add", *args,
                                "--nats-url", url], env=env, capture_output=True, text=True,
                               timeout=60)
            print(r.stdout.strip() or r.stderr.strip())
        res = st.claude("SPAWNAGENT please", args=["--allowedTools", "Agent"],
                        extra_env={"ANTHROPIC_DEFAULT_HAIKU_MODEL": "claude-haiku-4-5",
                                   # the title call is "nonessential traffic"
                                   "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": ""},
                        timeout=240)
        print(f"claude rc {res.returncode}: {res.stdout.strip()[:200]!r}")
        seen: list[tuple[str, str, str, str]] = []
        assert st.proxy is not None
        for e in st.proxy.log:
            if e["method"] != "POST":
                continue
            body: Any = e.get("json") or {}
            sys_ = body.get("system") if isinstance(body, dict) else None
            kind = "?"
            if isinstance(sys_, list) and len(sys_) > 2:
                text = sys_[0].get("text", "") + sys_[2].get("text", "")[:80]
                kind = ("subagent" if "cc_is_subagent=true" in text else
                        "title" if "title" in text else "main")
            h = {k.lower(): v for k, v in (e.get("resp_headers") or {}).items()}
            seen.append((kind, str(body.get("model")), h.get("x-codeswitch-route", "-"),
                         h.get("x-codeswitch-provider", "-")))
            print(f"  {e['path']:<28} {kind:<9} model={body.get('model'):<18} "
                  f"route={h.get('x-codeswitch-route', '-'):<11} "
                  f"provider={h.get('x-codeswitch-provider', '-')} status={e.get('status')}")
        ok = (any(s == ("title", "claude-haiku-4-5", "background", "fc") for s in seen)
              and any(s[0] == "subagent" and s[2:] == ("subagents", "fr") for s in seen)
              and all(s[2:] == ("-", "fa") for s in seen if s[0] == "main")
              and any(s[0] == "main" for s in seen))
        print("PASS" if ok else "FAIL")
    finally:
        st.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
