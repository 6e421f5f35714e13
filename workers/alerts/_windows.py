"""Sliding windows over request samples: pure, exact, O(1) per sample and watched threshold.

A window holds the samples whose timestamp ``ts`` satisfies ``now - span < ts <= now``, where
``now`` is the evaluation clock (the largest event ``ts`` seen, or a wall-clock tick). A sample
exactly ``span`` seconds old is out. Samples are expected in (roughly) timestamp order, as the
event log delivers them; a sample already older than the window when it arrives is dropped.

Percentiles are exact, by the nearest-rank definition: the p-th percentile of n values is the
value at rank ``ceil(p * n / 100)`` of the sorted window (always an observed value, never an
interpolation or an estimate). See ``QuantileWindow`` for how a verdict stays O(1) per sample.

Memory: a window holds its samples packed in two ``array`` columns (timestamp, value: 9-16
bytes per sample), not as tuples (~70 bytes each, plus the floats they point to); ``History``
keeps the recent samples a new rule is seeded from in packed chunks (~45 bytes per sample
instead of ~470 for a ``Sample`` tuple with its own strings, floats and ints). What a window
or the history holds is bounded by rate x span (and the history by a sample count too).
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

__all__ = [
    "CountWindow",
    "History",
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


_COMPACT_AT = 1024  # evicted entries kept at the head of a window's columns before a compaction


class _Columns:
    """A FIFO of (timestamp, value) pairs in two arrays: ``times[head:]`` / ``values[head:]`` are
    in the window. Evicting moves ``head``; the evicted prefix is cut off (one memmove, shrinking
    the arrays) once it is at least half of them, so each entry is moved O(1) times and an idle
    window gives its memory back."""

    __slots__ = ("head", "n", "span", "times", "values")

    def __init__(self, span: float, typecode: str) -> None:
        self.span = span
        self.times: array[float] = array("d")
        self.values: array[Any] = array(typecode)
        self.head = 0
        self.n = 0  # len(times) - head

    def _compact(self) -> None:
        head = self.head
        if (head >= _COMPACT_AT and 2 * head >= len(self.times)) or (head and not self.n):
            del self.times[:head]
            del self.values[:head]
            self.head = 0

    def in_window(self) -> array[Any]:
        return self.values[self.head:]


class CountWindow(_Columns):
    """Request count and error count: error rate (%) and request rate (per minute)."""

    __slots__ = ("errors",)

    def __init__(self, span: float) -> None:
        super().__init__(span, "b")
        self.errors = 0

    def add(self, s: Sample, now: float) -> None:
        cutoff = now - self.span
        if s.ts > cutoff:
            self.times.append(s.ts)
            self.values.append(s.error)
            self.n += 1
            self.errors += s.error
        if self.n and self.times[self.head] <= cutoff:  # inline check: add() is the hot path
            self.evict(now)

    def evict(self, now: float) -> None:
        cutoff = now - self.span
        times, values, head, end = self.times, self.values, self.head, len(self.times)
        errors = 0
        while head < end and times[head] <= cutoff:
            errors += values[head]
            head += 1
        self.errors -= errors
        self.head = head
        self.n = end - head
        self._compact()

    def error_rate(self) -> float:
        return 100.0 * self.errors / self.n if self.n else 0.0

    def request_rate(self) -> float:
        return self.n * 60.0 / self.span


class SumWindow(_Columns):
    """A running integer sum of one sample field (cost in nano-USD, or tokens)."""

    __slots__ = ("field", "total")

    def __init__(self, span: float, field: str) -> None:
        super().__init__(span, "q")
        self.field = Sample._fields.index(field)
        self.total = 0

    def add(self, s: Sample, now: float) -> None:
        cutoff = now - self.span
        if s.ts > cutoff:
            value: int = s[self.field]  # type: ignore[assignment]  # no cast(): hot path
            self.times.append(s.ts)
            self.values.append(value)
            self.n += 1
            self.total += value
        if self.n and self.times[self.head] <= cutoff:
            self.evict(now)

    def evict(self, now: float) -> None:
        cutoff = now - self.span
        times, values, head, end = self.times, self.values, self.head, len(self.times)
        total = 0
        while head < end and times[head] <= cutoff:
            total += values[head]
            head += 1
        self.total -= total
        self.head = head
        self.n = end - head
        self._compact()


class QuantileWindow(_Columns):
    """Every value of one sample field in the window (samples whose field is None, e.g. no first
    byte, are not counted), with exact percentile verdicts in O(1) per sample.

    The nearest-rank p-th percentile v of n values is above T exactly when fewer than
    r = ceil(p n / 100) values are <= T. So for each threshold a rule compares against, the
    window keeps the number of values < T and <= T, and a verdict never sorts anything. The
    value itself (for a notification) is computed exactly by sorting, only when it is asked for.
    """

    __slots__ = ("counts", "field")

    def __init__(self, span: float, field: str) -> None:
        super().__init__(span, "d")
        self.field = Sample._fields.index(field)
        self.counts: dict[float, list[int]] = {}  # threshold -> [values < T, values <= T]

    def watch(self, threshold: float) -> None:
        """Start counting against ``threshold`` (a rule was bound to this window)."""
        if threshold not in self.counts:
            values = self.in_window()
            self.counts[threshold] = [
                sum(1 for v in values if v < threshold),
                sum(1 for v in values if v <= threshold),
            ]

    def add(self, s: Sample, now: float) -> None:
        value: float | None = s[self.field]  # type: ignore[assignment]  # no cast()
        cutoff = now - self.span
        if value is not None and s.ts > cutoff:
            self.times.append(s.ts)
            self.values.append(value)
            self.n += 1
            for threshold, c in self.counts.items():
                if value <= threshold:
                    c[1] += 1
                    if value < threshold:
                        c[0] += 1
        if self.n and self.times[self.head] <= cutoff:
            self.evict(now)

    def evict(self, now: float) -> None:
        cutoff = now - self.span
        times, values, head, end = self.times, self.values, self.head, len(self.times)
        counts = self.counts.items()
        while head < end and times[head] <= cutoff:
            value = values[head]
            head += 1
            for threshold, c in counts:
                if value <= threshold:
                    c[1] -= 1
                    if value < threshold:
                        c[0] -= 1
        self.head = head
        self.n = end - head
        self._compact()

    def percentile(self, p: int) -> float:
        return nearest_rank(sorted(self.in_window()), p) if self.n else 0.0


Window = CountWindow | SumWindow | QuantileWindow

_CHUNK = 4096  # samples per History chunk
_KEYS_MAX = 8192  # label tuples shared between chunks (then the table starts again)


class _Chunk:
    """Up to _CHUNK samples in columns; the four labels as an index into the chunk's own table
    of distinct (provider, model, user, dialect) tuples, dropped with the chunk (``where``, the
    look-up into it, only while the chunk is being filled)."""

    __slots__ = ("cost", "duration", "error", "label", "labels", "start", "tokens", "ts",
                 "ttfb", "where")

    def __init__(self) -> None:
        self.ts: array[float] = array("d")
        self.duration: array[float] = array("d")
        self.ttfb: array[float] = array("d")  # NaN: no first byte
        self.cost: array[int] = array("q")
        self.tokens: array[int] = array("q")
        self.error: array[int] = array("b")
        self.label: array[int] = array("H")
        self.labels: list[tuple[str, str, str, str]] = []
        self.where: dict[tuple[str, str, str, str], int] = {}
        self.start = 0  # samples before it were evicted

    def sample(self, i: int) -> Sample:
        ttfb = self.ttfb[i]
        return Sample(self.ts[i], *self.labels[self.label[i]], bool(self.error[i]),
                      self.duration[i], None if math.isnan(ttfb) else ttfb, self.cost[i],
                      self.tokens[i])


class History:
    """The samples of the last ``span`` seconds, at most ``max_samples`` of them (the oldest go
    first), kept for seeding the window of a rule added later. Packed in chunks of 4,096: ~45
    bytes per sample. Samples come back as equal ``Sample`` tuples, oldest first."""

    __slots__ = ("chunks", "keys", "max_samples", "n", "span")

    def __init__(self, span: float, max_samples: int) -> None:
        self.span = span
        self.max_samples = max_samples
        self.chunks: deque[_Chunk] = deque()
        self.n = 0
        # one tuple (and one copy of its strings) per distinct labels for all chunks: each
        # decoded event brings its own strings
        self.keys: dict[tuple[str, str, str, str], tuple[str, str, str, str]] = {}

    def __len__(self) -> int:
        return self.n

    def add(self, s: Sample, now: float) -> None:
        """Keep ``s``, then evict what ``now`` leaves out (and the oldest beyond the count)."""
        chunks = self.chunks
        if not chunks or len(chunks[-1].ts) >= _CHUNK:
            if chunks:
                chunks[-1].where = {}  # full: never looked up again
            chunks.append(_Chunk())
        c = chunks[-1]
        key: tuple[str, str, str, str] = s[1:5]  # (provider, model, user, dialect)
        where = c.where.get(key)
        if where is None:
            shared = self.keys.get(key)
            if shared is None:
                if len(self.keys) >= _KEYS_MAX:
                    self.keys.clear()
                shared = self.keys[key] = key
            where = c.where[shared] = len(c.labels)
            c.labels.append(shared)
        c.ts.append(s.ts)
        c.duration.append(s.duration_ms)
        c.ttfb.append(math.nan if s.ttfb_ms is None else s.ttfb_ms)
        c.cost.append(s.cost_nano)
        c.tokens.append(s.tokens)
        c.error.append(s.error)
        c.label.append(where)
        self.n += 1
        first = chunks[0]
        if self.n > self.max_samples or first.ts[first.start] <= now - self.span:
            self.evict(now)

    def evict(self, now: float) -> None:
        cutoff = now - self.span
        chunks = self.chunks
        while chunks:
            c = chunks[0]
            ts, i, end = c.ts, c.start, len(c.ts)
            over = self.n - self.max_samples
            while i < end and (over > 0 or ts[i] <= cutoff):
                i += 1
                over -= 1
            self.n -= i - c.start
            c.start = i
            if i < end:
                return
            chunks.popleft()
        if not chunks:
            self.keys.clear()

    def __iter__(self) -> Iterator[Sample]:
        for c in list(self.chunks):
            for i in range(c.start, len(c.ts)):
                yield c.sample(i)

    def latest(self, match: Callable[[Sample], bool]) -> Sample | None:
        """The newest sample ``match`` accepts, if any."""
        for c in reversed(self.chunks):
            for i in range(len(c.ts) - 1, c.start - 1, -1):
                s = c.sample(i)
                if match(s):
                    return s
        return None
