"""Subprocess helpers for compare.py: free ports, waiting for a port, stopping what we started,
and CPU time of a process tree read from /proc (no psutil)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcCpu", "free_port", "nodelay", "stop_process", "tree_cpu", "wait_port"]

_TICK = os.sysconf("SC_CLK_TCK")


def nodelay(transport: object) -> None:
    """TCP_NODELAY on an asyncio transport's socket (small writes go out at once)."""
    sock = transport.get_extra_info("socket")  # type: ignore[attr-defined]
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    """True once 127.0.0.1:``port`` accepts connections; False if ``proc`` died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stop_process(proc: subprocess.Popen[bytes], first: int = signal.SIGTERM,
                 grace: float = 10.0) -> None:
    """Signal the one process we started, wait, then SIGKILL it if it is still there."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(first)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


@dataclass(frozen=True, slots=True)
class ProcCpu:
    pid: int
    label: str
    cpu_s: float  # utime + stime + reaped children's cutime + cstime


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, cpu seconds) of ``pid`` from /proc/<pid>/stat, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()  # comm may hold spaces and parentheses
    # fields[0] is field 3 (state): ppid=4, utime=14, stime=15, cutime=16, cstime=17
    ppid = int(fields[1])
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return ppid, ticks / _TICK


def _label(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    words = [a.decode(errors="replace") for a in argv if a]
    if not words:
        return str(pid)
    name = Path(words[0]).name
    if "-m" in words:  # python -m codeswitch edge ... -> "codeswitch edge"
        i = words.index("-m")
        rest = [w for w in words[i + 1:i + 4] if not w.startswith("-")]
        return " ".join(rest[:3]) or name
    if name.startswith("python"):
        rest = [w for w in words[1:4] if not w.startswith("-")]
        return " ".join(Path(rest[0]).name.split()[:1] + rest[1:2]) if rest else name
    return name


def tree_cpu(root: int) -> list[ProcCpu]:
    """CPU seconds so far of ``root`` and every live descendant (found through ppid, since the
    gateway starts its parts in sessions of their own, so a process group would miss them)."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st is not None:
            parent[int(entry)], cpu[int(entry)] = st
    if root not in cpu:
        return []
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(ProcCpu(pid, _label(pid), cpu[pid]))
        todo.extend(children.get(pid, ()))
    return out
