"""runtime/memory.py: when the idle trimmer trims (once per burst, never while busy or idle
all along), and that a trim runs."""

from __future__ import annotations

import asyncio
import sys

import pytest

from runtime import memory


def feed(t: memory.IdleTrimmer, points: list[tuple[float, float]]) -> list[bool]:
    return [t.due(now, cpu) for now, cpu in points]


def test_start_up_is_the_first_burst_trimmed_after_2_s_of_quiet() -> None:
    t = memory.IdleTrimmer(idle_s=5.0, min_work_s=0.5)
    # a part that used 0.9 s of CPU to start (imports, connecting) and is now quiet
    verdicts = feed(t, [(100.0 + s, 0.9 + 0.001 * s) for s in range(6)])
    assert verdicts[:2] == [False, False] and verdicts[2]  # after 2 s, not 5
    t.run_once()
    t.stats.frozen = 1
    # then the usual: a burst, then 5 s of quiet
    busy = [(106.0 + s, t._cpu_at_trim + 0.8 * s) for s in range(1, 5)]
    quiet = [(110.0 + s, busy[-1][1] + 0.001 * s) for s in range(1, 8)]
    verdicts = feed(t, busy + quiet)
    assert not any(verdicts[:4 + 4]) and any(verdicts[4 + 4:])


def test_trims_once_after_a_burst_then_quiet() -> None:
    t = memory.IdleTrimmer(idle_s=5.0, min_work_s=0.5)
    t._cpu_at_trim = 0.0
    t.stats.trims = 1  # past the start-up trim (2 s of quiet): the 5 s rule
    busy = [(float(s), 0.8 * s) for s in range(10)]  # 80 % of a core for 10 s
    assert not any(feed(t, busy))
    quiet = [(10.0 + s, 7.2 + 0.001 * s) for s in range(1, 8)]
    verdicts = feed(t, quiet)
    assert verdicts[:3] == [False] * 3  # the window still holds busy seconds (to t=9)
    assert any(verdicts)
    t._cpu_at_trim = quiet[-1][1]  # what run_once records
    more = [(18.0 + s, 7.21 + 0.001 * s) for s in range(1, 30)]
    assert not any(feed(t, more))  # quiet all along: nothing new to give back


def test_never_while_busy_and_not_without_work() -> None:
    t = memory.IdleTrimmer(idle_s=5.0, min_work_s=0.5)
    t._cpu_at_trim = 0.0
    t.stats.trims = 1
    assert not any(feed(t, [(float(s), 0.5 * s) for s in range(60)]))  # steady 50 %
    idle = memory.IdleTrimmer(idle_s=5.0, min_work_s=0.5)
    idle._cpu_at_trim = 0.0
    assert not any(feed(idle, [(float(s), 0.001 * s) for s in range(60)]))  # never worked


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_run_once_trims_and_freezes_once() -> None:
    t = memory.IdleTrimmer()
    junk = [bytes(4096) for _ in range(20_000)]  # ~80 MB through malloc, then freed
    del junk
    t.run_once()
    t.run_once()
    assert t.stats.trims == 2
    assert t.stats.frozen > 0  # gc.freeze() after the first quiet moment only
    assert memory.rss_bytes() > 0


async def test_start_is_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODESWITCH_MEMORY_TRIM", "5")
    monkeypatch.setattr(memory, "_started", None)
    first = memory.start()
    try:
        if first is None:  # not glibc
            return
        assert memory.start() is first
    finally:
        if first is not None:
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
    monkeypatch.setenv("CODESWITCH_MEMORY_TRIM", "0")
    monkeypatch.setattr(memory, "_started", None)
    assert memory.start() is None
