"""Sliding windows over request samples: pure, exact, O(1) per sample and watched threshold.

A window holds the samples whose timestamp ``ts`` satisfies ``now - span < ts <= now``, where
``now`` is the evaluation clock (the largest event ``ts`` seen, or a wall-clock tick). A sample
exactly ``span`` seconds old is out. Samples are expected in (roughly) timestamp order, as the
event log delivers them; a sample already older than the window when it arrives is dropped.

Percentiles are exact, by the nearest-rank definition: the p-th percentile of n values is the
value at rank ``ceil(p * n / 100)`` of the sorted window (always an observed value, never an
interpolation or an estimate). See ``QuantileWindow`` for how a verdict stays O(1) per sample.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

__all__ = [
    "CountWindow",
    "QuantileWindow",
    "Sample",
    "SumWindow",
    "Window",
    "nearest_rank",
]


class Sample(NamedTuple):
    """What the alert metrics need from one completed request."""

    ts: float
    provider: str
    model: str
    user: str
    dialect: str
    error: bool
    duration_ms: float
    ttfb_ms: float | None
    cost_nano: int  # cost in nano-USD, an integer so that window sums are exact
    tokens: int


def nearest_rank(sorted_values: list[float], p: int) -> float:
    """The exact p-th percentile (nearest rank) of an ascending, non-empty list."""
    n = len(sorted_values)
    rank = -(-p * n // 100)  # ceil(p * n / 100) in integers
    return sorted_values[max(rank, 1) - 1]


class CountWindow:
    """Request count and error count: error rate (%) and request rate (per minute)."""

    __slots__ = ("errors", "items", "n", "span")

    def __init__(self, span: float) -> None:
        self.span = span
        self.items: deque[tuple[float, bool]] = deque()
        self.n = 0
        self.errors = 0

    def add(self, s: Sample, now: float) -> None:
        cutoff = now - self.span
        items = self.items
        if s.ts > cutoff:
            items.append((s.ts, s.error))
            self.n += 1
            self.errors += s.error
        if items and items[0][0] <= cutoff:  # inline check: add() is the hot path
            self.evict(now)

    def evict(self, now: float) -> None:
        cutoff = now - self.span
        items = self.items
        while items and items[0][0] <= cutoff:
            _, error = items.popleft()
            self.n -= 1
            self.errors -= error

    def error_rate(self) -> float:
        return 100.0 * self.errors / self.n if self.n else 0.0

    def request_rate(self) -> float:
        return self.n * 60.0 / self.span


class SumWindow:
    """A running integer sum of one sample field (cost in nano-USD, or tokens)."""

    __slots__ = ("field", "items", "n", "span", "total")

    def __init__(self, span: float, field: str) -> None:
        self.span = span
        self.field = Sample._fields.index(field)
        self.items: deque[tuple[float, int]] = deque()
        self.n = 0
        self.total = 0

    def add(self, s: Sample, now: float) -> None:
        cutoff = now - self.span
        items = self.items
        if s.ts > cutoff:
            value: int = s[self.field]  # type: ignore[assignment]  # no cast(): hot path
            items.append((s.ts, value))
            self.n += 1
            self.total += value
        if items and items[0][0] <= cutoff:
            self.evict(now)

    def evict(self, now: float) -> None:
        cutoff = now - self.span
        items = self.items
        while items and items[0][0] <= cutoff:
            _, value = items.popleft()
            self.n -= 1
            self.total -= value


class QuantileWindow:
    """Every value of one sample field in the window (samples whose field is None, e.g. no first
    byte, are not counted), with exact percentile verdicts in O(1) per sample.

    The nearest-rank p-th percentile v of n values is above T exactly when fewer than
    r = ceil(p n / 100) values are <= T. So for each threshold a rule compares against, the
    window keeps the number of values < T and <= T, and a verdict never sorts anything. The
    value itself (for a notification) is computed exactly by sorting, only when it is asked for.
    """

    __slots__ = ("counts", "field", "items", "n", "span")

    def __init__(self, span: float, field: str) -> None:
        self.span = span
        self.field = Sample._fields.index(field)
        self.items: deque[tuple[float, float]] = deque()
        self.counts: dict[float, list[int]] = {}  # threshold -> [values < T, values <= T]
        self.n = 0

    def watch(self, threshold: float) -> None:
        """Start counting against ``threshold`` (a rule was bound to this window)."""
        if threshold not in self.counts:
            self.counts[threshold] = [
                sum(1 for _, v in self.items if v < threshold),
                sum(1 for _, v in self.items if v <= threshold),
            ]

    def add(self, s: Sample, now: float) -> None:
        value: float | None = s[self.field]  # type: ignore[assignment]  # no cast()
        cutoff = now - self.span
        items = self.items
        if value is not None and s.ts > cutoff:
            items.append((s.ts, value))
            self.n += 1
            for threshold, c in self.counts.items():
                if value <= threshold:
                    c[1] += 1
                    if value < threshold:
                        c[0] += 1
        if items and items[0][0] <= cutoff:
            self.evict(now)

    def evict(self, now: float) -> None:
        cutoff = now - self.span
        items = self.items
        while items and items[0][0] <= cutoff:
            _, value = items.popleft()
            self.n -= 1
            for threshold, c in self.counts.items():
                if value <= threshold:
                    c[1] -= 1
                    if value < threshold:
                        c[0] -= 1

    def percentile(self, p: int) -> float:
        return nearest_rank(sorted(v for _, v in self.items), p) if self.items else 0.0


Window = CountWindow | SumWindow | QuantileWindow
