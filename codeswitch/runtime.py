"""Where a running gateway lives: the data directory and the run file ``codeswitch up`` writes,
so that the other commands (provider, stats, tail, mcp, ...) find its NATS without flags."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["DEFAULT_NATS_URL", "home_dir", "nats_url_for", "read_run_file", "run_file"]

DEFAULT_NATS_URL = "nats://127.0.0.1:18122"


def home_dir(flag: str | Path | None = None) -> Path:
    """--home, else $CODESWITCH_HOME, else ~/.code-switch."""
    raw = flag or os.environ.get("CODESWITCH_HOME") or Path.home() / ".code-switch"
    return Path(raw).expanduser()


def run_file(home: Path) -> Path:
    return home / "run.json"


def read_run_file(home: Path) -> dict[str, object] | None:
    try:
        data = json.loads(run_file(home).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def nats_url_for(home: Path | None = None, override: str | None = None) -> str:
    """--nats-url, else $CODESWITCH_NATS_URL, else the running gateway's, else the default."""
    if override:
        return override
    env = os.environ.get("CODESWITCH_NATS_URL")
    if env:
        return env
    info = read_run_file(home_dir(home))
    if info and isinstance(info.get("nats_url"), str):
        return str(info["nats_url"])
    return DEFAULT_NATS_URL
