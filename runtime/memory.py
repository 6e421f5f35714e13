"""Memory hygiene for a long-running part process: what a burst of traffic allocated is given
back once the process is quiet again (Linux with glibc; a no-op elsewhere).

    limit_arenas()   at start-up, before threads: at most 2 malloc arenas (glibc gives each
                     thread that allocates its own, up to 8 per core, and keeps what they freed)
    IdleTrimmer      malloc_trim(0) once the process has gone quiet after some work; the first
                     time also gc.freeze() (start-up is over: what it built lives on, and the
                     collector stops walking it)
    start(stop)      the trimmer as a task, once per process (a process running several parts
                     starts it once)

Why: CPython frees its small objects into pymalloc arenas (given back when empty) but larger
blocks (message bytes, lists, dict tables) and everything a C library allocates go through
glibc's malloc, which keeps freed memory in its heaps and returns only the top of each heap on
its own. ``malloc_trim(0)`` releases every free page of every arena (``madvise``), so a process
idle after a burst is back near its idle size. Measured in docs/architecture.md ("Bounded
memory").

Knobs: ``CODESWITCH_MEMORY_TRIM`` = seconds of quiet before a trim (5; 0 = never);
``CODESWITCH_MALLOC_ARENA_MAX`` (2; 0 = glibc's default).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["IdleTrimmer", "TrimStats", "limit_arenas", "rss_bytes", "start", "trim"]

log = logging.getLogger("codeswitch.memory")

_M_ARENA_MAX = -8  # mallopt parameter numbers from glibc's malloc.h
_libc: ctypes.CDLL | None = None
_started: asyncio.Task[None] | None = None
trimmer: IdleTrimmer | None = None  # this process's, once started


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            _libc = libc
    return _libc


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default


def limit_arenas(arenas: int | None = None) -> bool:
    """Cap glibc's malloc arenas (``MALLOC_ARENA_MAX``); call before the process starts
    threads. False when not on glibc or turned off."""
    n = int(_env_float("CODESWITCH_MALLOC_ARENA_MAX", 2) if arenas is None else arenas)
    libc = _glibc()
    if n <= 0 or libc is None:
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, n))


def rss_bytes() -> int:
    """Resident set size of this process (0 when /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def trim() -> bool:
    """``malloc_trim(0)``: give every free page of the malloc heaps back. True when glibc
    released something."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


@dataclass
class TrimStats:
    trims: int = 0
    seconds: float = 0.0  # wall time spent in gc + malloc_trim, all trims
    released: int = 0  # RSS bytes given back, all trims
    frozen: int = 0  # objects moved to the permanent generation by gc.freeze()


class IdleTrimmer:
    """Trims once the process has used less than ``idle_cpu`` of a core for ``idle_s`` seconds
    after having done at least ``min_work_s`` seconds of CPU work since the last trim: one trim
    per burst, none while busy (a trim takes the malloc locks) and none while idle."""

    def __init__(self, *, idle_s: float = 5.0, check_s: float = 1.0, idle_cpu: float = 0.02,
                 min_work_s: float = 0.5, freeze: bool = True) -> None:
        self.idle_s = idle_s
        self.check_s = check_s
        self.idle_cpu = idle_cpu
        self.min_work_s = min_work_s
        self.freeze = freeze
        self.stats = TrimStats()
        self._samples: deque[tuple[float, float]] = deque()  # (monotonic, process CPU)
        # start-up (imports, connecting, reading the buckets) counts as the first burst: the
        # first trim (and gc.freeze) comes once the new part is quiet, not after its first
        # traffic; what start-up left in malloc's heaps is not kept for the gateway's life
        self._cpu_at_trim = 0.0
        # ... after a shorter quiet spell: a part that has started is quiet at once (nothing
        # waits on it yet), and an idle gateway should not carry start-up's heap for seconds
        self.first_idle_s = min(idle_s, 2.0)

    def due(self, now: float, cpu: float) -> bool:
        """Record a sample; True when a trim is due now."""
        samples = self._samples
        samples.append((now, cpu))
        idle_s = self.idle_s if self.stats.trims else self.first_idle_s
        while len(samples) > 1 and samples[1][0] <= now - idle_s:
            samples.popleft()
        first_t, first_cpu = samples[0]
        if now - first_t < idle_s * 0.99:
            return False  # not watched long enough yet
        quiet = cpu - first_cpu <= self.idle_cpu * (now - first_t)
        return quiet and cpu - self._cpu_at_trim >= self.min_work_s

    def run_once(self) -> None:
        start = time.perf_counter()
        before = rss_bytes()
        gc.collect()
        if self.freeze and not self.stats.frozen:
            gc.freeze()
            self.stats.frozen = gc.get_freeze_count()
        trim()
        took = time.perf_counter() - start
        released = max(0, before - rss_bytes())
        self.stats.trims += 1
        self.stats.seconds += took
        self.stats.released += released
        self._cpu_at_trim = time.process_time()
        log.info("memory: trimmed %.1f MB in %.1f ms (RSS %.1f MB)", released / 1e6,
                 took * 1e3, rss_bytes() / 1e6)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        while stop is None or not stop.is_set():
            await asyncio.sleep(self.check_s)
            if self.due(time.monotonic(), time.process_time()):
                self.run_once()


def start(stop: asyncio.Event | None = None) -> asyncio.Task[None] | None:
    """Start the idle trimmer in this process's event loop (once: later calls return the same
    task). None when turned off (``CODESWITCH_MEMORY_TRIM=0``) or not on glibc."""
    global _started, trimmer
    if _started is not None and not _started.done():
        return _started
    idle_s = _env_float("CODESWITCH_MEMORY_TRIM", 5.0)
    if idle_s <= 0 or _glibc() is None:
        return None
    trimmer = IdleTrimmer(idle_s=idle_s)
    _started = asyncio.create_task(trimmer.run(stop), name="memory-trim")
    return _started
