"""Child-process helpers: children die with their parent (Linux PR_SET_PDEATHSIG), files are
private to the user, and each part shows its name in ``ps``."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.machinery
import os
import signal
import socket
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["PART_ENV", "device_name", "free_port", "pdeathsig_preexec", "pid_alive",
           "private_umask", "set_title", "write_private"]

# the supervisor's name for a part process it starts (router-2, gateway, ...): its title
PART_ENV = "CODESWITCH_PART"
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            # by its soname: ctypes.util.find_library costs 2.5 MB (it imports shutil, re and
            # runs ldconfig) for the name glibc has had for 25 years
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    return _libc


def pdeathsig_preexec(sig: int = signal.SIGTERM, *, nice: int = 0
                      ) -> Callable[[], None] | None:
    """A preexec_fn that asks the kernel to send ``sig`` (SIGTERM) to the child when its
    parent dies, and lowers the child's CPU priority by ``nice``.

    libc is loaded here, in the parent: the child between fork and exec only makes the one
    system call (no dlopen, which could deadlock on a lock another thread of the parent held
    at fork time). The signal is tied to the thread that forks: start children from the
    supervisor's main thread."""
    libc = _load_libc()
    prctl = libc.prctl if libc is not None else None
    if prctl is None and not nice:
        return None

    def _preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sig)
        if nice:
            os.nice(nice)

    return _preexec


@functools.cache
def device_name() -> str:
    """This machine's name as the gateway reports it (``$CODESWITCH_DEVICE``, else the host
    name), at most 64 characters."""
    name = os.environ.get("CODESWITCH_DEVICE") or socket.gethostname() or "localhost"
    return name.strip()[:64] or "localhost"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def private_umask() -> None:
    """Files this process (and its children: nats-server, DuckDB, logs) creates are readable
    by this user only."""
    os.umask(0o077)


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file atomically with mode 0600 (a reader never sees half of it)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, raw)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def set_title(title: str, short: str | None = None) -> None:
    """Show this process as ``title`` in ps (``codeswitch worker router``) and as ``short``
    (15 bytes at most, e.g. ``cs-router``) where only the short name shows (top, ps -o comm)."""
    try:
        import setproctitle
    except ImportError:
        setproctitle = None  # type: ignore[assignment]
    if setproctitle is not None:
        setproctitle.setproctitle(title)
    libc = _load_libc()
    if libc is not None:
        name = (short or title).encode()[:15]
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


# The hook's classes are duck-typed, not subclasses of importlib.abc's: importing importlib.abc
# (importlib.resources, tempfile, shutil, bz2, lzma, random: 2 MB) in every process for it,
# the supervisor included, would cost more than some of what it saves.
class _NoWebsocketLoader:
    """Runs nats-py's transport module with ``import aiohttp`` failing (see below)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        module: types.ModuleType | None = self.inner.create_module(spec)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        if "aiohttp" in sys.modules:  # this process uses aiohttp anyway: nothing to save
            self.inner.exec_module(module)
            return
        sys.modules["aiohttp"] = None  # type: ignore[assignment]  # import aiohttp -> error
        try:
            self.inner.exec_module(module)
        finally:
            del sys.modules["aiohttp"]


class _NoWebsocketFinder:
    def find_spec(self, name: str, path: Any, target: Any = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if name != "nats.aio.transport":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _NoWebsocketLoader(spec.loader)  # type: ignore[assignment]
        return spec


def skip_nats_websocket() -> None:
    """Keep nats-py from importing aiohttp: it does so on import, when aiohttp is installed,
    for ``ws://`` server URLs, which codeswitch does not use. That import costs ~10 MB of RSS
    and 0.1 s in every process that does not use aiohttp itself (all but the router). This
    installs an import hook: nothing is imported now, and a process that never imports nats
    pays nothing; ``import aiohttp`` later (the router) works as usual."""
    if "nats.aio.transport" in sys.modules or any(
            isinstance(f, _NoWebsocketFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _NoWebsocketFinder())
