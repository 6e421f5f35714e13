"""Subprocess helpers for compare.py and footprint.py: free ports, waiting for a port, stopping
what we started, and CPU time and memory of a process tree read from /proc (no psutil)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcCpu", "ProcMem", "descendants", "free_port", "nodelay", "proc_mem",
           "proc_title", "short_label", "stop_process", "tree_cpu", "tree_memory", "wait_port"]

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


# -- memory -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcMem:
    pid: int
    label: str  # short: "codeswitch up", "codeswitch worker router", "nats-server"
    title: str  # the command line as ps shows it (the process title a part sets for itself)
    rss_kb: int  # VmRSS from /proc/<pid>/status
    pss_kb: int | None  # from /proc/<pid>/smaps_rollup, None when it cannot be read
    uss_kb: int | None  # Private_Clean + Private_Dirty from smaps_rollup


def _ppid_state(pid: int) -> tuple[int, str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    return int(fields[1]), fields[0].decode()


def descendants(root: int) -> list[int]:
    """``root`` (if alive) and its live descendants, found through ppid (the gateway starts its
    parts in sessions of their own); zombies left out. Root first, then by pid."""
    children: dict[int, list[int]] = {}
    alive: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _ppid_state(int(entry))
        if st is not None and st[1] not in ("Z", "X"):
            alive.add(int(entry))
            children.setdefault(st[0], []).append(int(entry))
    if root not in alive:
        return []
    out, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return [root, *sorted(out)]


def proc_title(pid: int) -> str:
    """The command line of ``pid`` as ps shows it: arguments joined by spaces, the padding a
    process title leaves stripped; "" if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())


def short_label(title: str) -> str:
    """``codeswitch up --home x`` -> ``codeswitch up``; ``python -m codeswitch worker router
    --nats-url ...`` -> ``codeswitch worker router``; ``/x/bin/nats-server -c f`` ->
    ``nats-server``: the words before the first option, from ``codeswitch`` on."""
    words = title.split()
    if not words:
        return "?"
    start = next((i for i, w in enumerate(words) if Path(w).name == "codeswitch"), None)
    if start is None:
        return Path(words[0]).name
    out = ["codeswitch"]
    for w in words[start + 1:]:
        if w.startswith("-"):
            break
        out.append(w)
    return " ".join(out)


def _kb(line: str) -> int:
    return int(line.split()[1])


def proc_mem(pid: int) -> ProcMem | None:
    """RSS (and PSS/USS when smaps_rollup is readable) of one process; None if it is gone."""
    rss = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = _kb(line)
                break
    except (OSError, ValueError, IndexError):
        return None
    if rss is None:  # a kernel thread, or exiting
        return None
    pss = uss = None
    try:
        priv = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = _kb(line)
            elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                priv += _kb(line)
        uss = priv if pss is not None else None
    except (OSError, ValueError, IndexError):
        pss = uss = None
    title = proc_title(pid)
    return ProcMem(pid, short_label(title), title, rss, pss, uss)


def tree_memory(root: int) -> list[ProcMem]:
    """Memory of ``root`` and every live descendant (root first, then by pid)."""
    return [m for m in map(proc_mem, descendants(root)) if m is not None]
