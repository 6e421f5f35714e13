"""Are the parts of a supervised gateway up? Read from ``<home>/parts.json``, which the
supervisor (``codeswitch up``) rewrites on every change (a part exited, was restarted, entered
or left a crash loop) and at least every ``HEARTBEAT_S`` seconds.

``parts_health`` is what the edge's ``/health`` answers with: no network, one small file read
(only when the file changed), a ``kill(pid, 0)`` per part. An edge not started by a supervisor
(``supervised_home()`` is None) has nothing to report beyond itself.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from runtime.process import pid_alive

__all__ = ["HEARTBEAT_S", "PARTS_FILE", "SUPERVISED_ENV", "parts_file", "parts_health",
           "read_parts", "supervised_home"]

PARTS_FILE = "parts.json"
# the supervisor rewrites parts.json at least this often; older means it is gone
HEARTBEAT_S = 2.0
# set by the supervisor for the parts it starts (value: the data directory)
SUPERVISED_ENV = "CODESWITCH_SUPERVISED_HOME"

_cache: dict[Path, tuple[int, int, dict[str, Any]]] = {}


def parts_file(home: Path) -> Path:
    return home / PARTS_FILE


def supervised_home() -> Path | None:
    """The data directory of the supervisor that started this process, if one did."""
    raw = os.environ.get(SUPERVISED_ENV)
    return Path(raw) if raw else None


def read_parts(home: Path) -> dict[str, Any] | None:
    """parts.json as written by the supervisor (re-read only when it changed)."""
    path = parts_file(home)
    try:
        st = path.stat()
    except OSError:
        _cache.pop(path, None)
        return None
    hit = _cache.get(path)
    if hit is not None and hit[0] == st.st_mtime_ns and hit[1] == st.st_size:
        return hit[2]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    _cache[path] = (st.st_mtime_ns, st.st_size, data)
    return data


def parts_health(home: Path, max_age: float = 5 * HEARTBEAT_S,
                 now: float | None = None) -> tuple[bool, dict[str, Any]]:
    """(every part up?, details). Details: ``supervisor`` (pid, alive, age of the file),
    ``parts`` (name -> pid, alive, restarts, last_exit, crash_loop), ``down`` and
    ``crash_loop`` (names), ``reason``. Not ok when the file is missing or older than
    ``max_age``, the supervisor is gone, a part is down or in a crash loop. A part counts as
    down as soon as its process is gone, even before the supervisor noticed."""
    data = read_parts(home)
    if data is None:
        return False, {"supervisor": {"alive": False}, "parts": {}, "down": [],
                       "crash_loop": [], "reason": "no parts.json: not supervised or not "
                                                   "started yet"}
    now = time.time() if now is None else now
    age = max(0.0, now - float(data.get("updated", 0)))
    sup_pid = int(data.get("pid", 0) or 0)
    sup_alive = sup_pid > 0 and pid_alive(sup_pid)
    parts: dict[str, Any] = {}
    down: list[str] = []
    looping: list[str] = []
    for name, raw in (data.get("parts") or {}).items():
        info = dict(raw)
        pid = info.get("pid")
        alive = bool(info.get("alive")) and isinstance(pid, int) and pid_alive(pid)
        info["alive"] = alive
        parts[name] = info
        if not alive:
            down.append(name)
        if info.get("crash_loop"):
            looping.append(name)
    detail: dict[str, Any] = {
        "supervisor": {"pid": sup_pid, "alive": sup_alive, "age_s": round(age, 2)},
        "parts": parts, "down": down, "crash_loop": looping,
    }
    reasons = []
    if not sup_alive:
        reasons.append("supervisor gone")
    elif age > max_age:
        reasons.append(f"parts.json not updated for {age:.0f} s")
    if down:
        reasons.append("down: " + ", ".join(down))
    if looping:
        reasons.append("crash loop: " + ", ".join(looping))
    if reasons:
        detail["reason"] = "; ".join(reasons)
    return not reasons, detail
