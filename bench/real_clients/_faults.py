"""Faults the real-client scripts put into the gateway they started, to see what each CLI does
with the gateway's own error answers (not a provider's):

- ``kill_router_on_call``: the router that took a request is killed (SIGKILL) while the
  provider holds the call (a fake with ``Behavior(hang=True)``). The edge answers **424** with
  ``x-should-retry: false`` ("may have run upstream, not retried"); the supervisor starts a
  new router.
- ``stopped_router``: the router is stopped (SIGSTOP) for the block, so no router takes a
  request: after the pickup timeout (5 s) the edge answers **503** (nothing ran, safe to retry),
  to every attempt.

Only the router of the given data directory's supervisor (``codeswitch up``) is signalled: its
pid comes from ``<home>/parts.json``. ``answered`` reads the edge's /metrics: how many answers
of each status the gateway gave (the CLI's attempts, retries included).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def router_pid(home: Path | str) -> int:
    """The pid of the supervisor's router part (KeyError if the layout has none)."""
    doc = json.loads((Path(home) / "parts.json").read_text())
    return int(doc["parts"]["router"]["pid"])


def answered(url: str, dialect: str) -> Counter[int]:
    """Answers the edge gave to ``dialect`` so far, by status (from /metrics)."""
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out: Counter[int] = Counter()
    for m in re.finditer(r'^codeswitch_requests_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("dialect") == dialect:
            out[int(labels["status"])] += int(float(m.group(2)))
    return out


def since(before: Counter[int], after: Counter[int]) -> dict[int, int]:
    return {s: n for s, n in sorted((after - before).items()) if n}


def kill_router_on_call(home: Path | str, fake: Any, n: int,
                        timeout: float = 120) -> tuple[threading.Thread, dict[str, Any]]:
    """Once ``fake`` has received its ``n``-th request, SIGKILL the router (after 0.3 s: it
    has told the edge it took the request). Returns the started thread and what it did."""
    info: dict[str, Any] = {}

    def run() -> None:
        if not fake.wait_requests(n, timeout):
            info["error"] = f"the provider did not get request {n} within {timeout:.0f} s"
            return
        time.sleep(0.3)
        pid = router_pid(home)
        os.kill(pid, signal.SIGKILL)
        info["pid"], info["at"] = pid, time.time()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, info


def wait_ready(url: str, home: Path | str, old_pid: int | None, timeout: float = 60) -> bool:
    """Until the supervisor's router is a new process and the edge's /readiness is 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if old_pid is None or router_pid(home) != old_pid:
                with urllib.request.urlopen(url.rstrip("/") + "/readiness", timeout=2) as r:
                    if r.status == 200:
                        return True
        except Exception:
            pass
        time.sleep(0.2)
    return False


@contextlib.contextmanager
def stopped_router(home: Path | str) -> Iterator[int]:
    """The router is stopped (SIGSTOP) inside the block and continued after it."""
    pid = router_pid(home)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
