"""The process ``codeswitch up`` becomes: the supervisor, without the CLI.

``codeswitch up`` parses its options and checks the config file with the full CLI (typer,
rich, every command module: ~40 MB), then replaces itself (``exec``) with
``python -m codeswitch.up SPEC``: this module, the supervisor and ``runtime``'s standard-library
modules, ~17 MB, for as long as the gateway runs (the config is applied by a short-lived
``python -m codeswitch.prepare``). Same pid, same terminal, same signals.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["exec_up", "main"]

_BOLD_GREEN, _BOLD, _RESET = "\x1b[1;32m", "\x1b[1m", "\x1b[0m"


def exec_up(spec: dict[str, Any]) -> None:
    """Become the supervisor (never returns)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "codeswitch.up", json.dumps(spec)])


def _styled(text: str, style: str) -> str:
    return f"{style}{text}{_RESET}" if sys.stdout.isatty() and not os.environ.get(
        "NO_COLOR") else text


def banner(info: dict[str, Any], config: str | None) -> list[str]:
    from codeswitch import __version__
    from runtime.home import masked_url

    base = info["edge_url"]
    lines = [f"{_styled(f'codeswitch {__version__}', _BOLD_GREEN)} listening on "
             f"{_styled(base, _BOLD)}",
             f"  NATS      {masked_url(info['nats_url'])}"
             + ("  (embedded)" if info["embedded_nats"] else ""),
             f"  data      {info['home']}"]
    if config:
        lines.append(f"  config    {config}")
    lines += [f"  · {change}" for change in info["changes"]]
    lines += [f"  parts     {', '.join(info['parts'])}",
              "",
              "Next:",
              f"  Claude Code  ANTHROPIC_BASE_URL={base} claude",
              f"  Codex CLI    codeswitch connect codex   (base_url {base}/v1)",
              f"  Gemini CLI   GOOGLE_GEMINI_BASE_URL={base} gemini",
              "  providers    codeswitch provider list   ·   live events: codeswitch tail",
              "Ctrl-C stops everything."]
    return lines


def main(argv: list[str] | None = None) -> int:
    from runtime.process import private_umask, set_title, skip_nats_websocket

    private_umask()
    skip_nats_websocket()
    spec: dict[str, Any] = json.loads((argv or sys.argv[1:])[0])
    logging.basicConfig(level=os.environ.get("CODESWITCH_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    home = Path(spec["home"])
    set_title(f"codeswitch up --home {home}", "codeswitch-up")

    # neither nats nor the config code, ever: the supervisor lives as long as the gateway;
    # the config is applied by a process of its own (codeswitch/prepare.py) while the parts'
    # interpreters load
    from codeswitch.supervisor import Supervisor

    config = spec.get("config")
    demo_port: int | None = None
    extra: list[tuple[str, list[str]]] = []
    if spec.get("demo"):  # the demo provider: one more supervised process (codeswitch/demo.py)
        from runtime.process import free_port

        demo_port = free_port()
        extra.append(("demo", [sys.executable, "-m", "codeswitch.demo", "--port",
                               str(demo_port)]))

    def ready(info: dict[str, Any]) -> None:
        print("\n".join(banner(info, config)), flush=True)
        none = any(c.startswith("NO PROVIDER") for c in info.get("changes", []))
        if not none and not os.environ.get("CODESWITCH_NO_PROVIDER_CHECK"):
            # each enabled provider checked now (codeswitch/probe.py), so a wrong key or base
            # URL shows here, not as a failed CLI turn; its own short-lived process: the
            # supervisor stays without an HTTP client
            import subprocess

            subprocess.Popen([sys.executable, "-m", "codeswitch.probe", "--home", str(home)],
                             stdin=subprocess.DEVNULL)
        if spec.get("connect"):
            # `codeswitch connect all` in a process of its own (the supervisor stays without
            # the CLI): it reads this gateway's run.json, and when the gateway has users it
            # makes the person's own key or says what to do (codeswitch/clients/target.py)
            import subprocess

            subprocess.Popen([sys.executable, "-m", "codeswitch", "connect", "all", "--home",
                              str(home)], stdin=subprocess.DEVNULL)

    sup = Supervisor(home=home, host=spec["host"], port=spec["port"],
                     nats_url=spec.get("nats_url"), routers=spec.get("routers", 1),
                     single_process=spec.get("single_process", False),
                     grace=spec.get("grace", 30.0), on_ready=ready,
                     apply={"config": config, "port": spec["port"], "demo_port": demo_port},
                     nats_creds=spec.get("nats_creds"),
                     join=os.environ.get("CODESWITCH_JOIN") or None, extra_parts=extra)
    try:
        code = sup.run()
    except Exception as exc:
        print(f"codeswitch: {exc}", file=sys.stderr, flush=True)
        return 1
    print("codeswitch stopped.", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
