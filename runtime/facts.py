"""Publishing facts to the event log off the request path, without losing them to a crash.

``FactPublisher.emit`` never blocks and never raises: events go into an in-memory queue that a
background task publishes to JetStream with ``Nats-Msg-Id`` = event id (so a retry after a lost
ack is de-duplicated by the server). While NATS is away the queue holds them and the task keeps
retrying.

With ``wal=<dir>`` (every part that ``codeswitch up`` runs) each emitted fact is also appended
to a write-ahead file in that directory before ``emit`` returns (one ``os.write`` of a line,
no fsync: a process killed with SIGKILL loses nothing, the kernel keeps what was written; a
machine that loses power can lose the last seconds). ``intent(key, facts)`` writes facts that
are published *only if the process dies* before ``emit(..., resolves=key)``: the router writes
one before each upstream call ("this call may be billed: if I die, record it as lost").

Files: ``<dir>/<name>.<n>.wal`` segments and ``<dir>/<name>.lock`` (an ``flock`` held while the
process lives). A segment is deleted once every fact in it is acknowledged by JetStream and
every intent in it resolved (oldest first). A process that finds another name's lock free
(its owner died) adopts that name's segments: it publishes their facts again (JetStream drops
the ones it already has inside its duplicate window; the ledger folds by event and request id
beyond it), publishes the facts of unresolved intents, then deletes the files.

Line format (facts are JSON without raw newlines):
    F <subject> <event id> <resolves or -> <json>\n
    I <key> <subject> <event id> <json>\n      one line per fact of an intent (same key)
    X <key>\n                                   the intent was dropped without a fact
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from nats.aio.client import Client as NATS

from runtime.outbox import SPOOLED
from schemas.events import Event, encode_event

__all__ = ["FactPublisher", "WriteAhead", "read_segments"]

log = logging.getLogger("codeswitch.facts")

# a segment is closed (and a new one started) past this size
SEGMENT_BYTES = 1 << 20
# how often a running publisher looks for the files of a dead process
ADOPT_EVERY_S = 10.0


class _Pending:
    """One queued fact: subject, event id, JSON, and the WAL segment holding it."""

    __slots__ = ("data", "event_id", "segment", "subject")

    def __init__(self, subject: str, event_id: str, data: bytes, segment: int) -> None:
        self.subject = subject
        self.event_id = event_id
        self.data = data
        self.segment = segment


def read_segments(paths: Iterable[Path]) -> tuple[list[tuple[str, str, bytes]],
                                                  list[tuple[str, str, bytes]]]:
    """Parse WAL segments (in order). Returns (facts, facts of unresolved intents), each as
    (subject, event id, json). A torn last line (no newline) is ignored."""
    facts: list[tuple[str, str, bytes]] = []
    intents: dict[str, list[tuple[str, str, bytes]]] = {}
    fresh: set[str] = set()  # intent keys whose lines since the last resolve are collected
    for path in paths:
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        end = raw.rfind(b"\n")
        for line in raw[:end + 1].splitlines():
            kind = line[:2]
            if kind == b"F ":
                parts = line.split(b" ", 4)
                if len(parts) != 5:
                    continue
                _, subject, event_id, resolves, data = parts
                facts.append((subject.decode(), event_id.decode(), data))
                if resolves != b"-":
                    intents.pop(resolves.decode(), None)
                    fresh.discard(resolves.decode())
            elif kind == b"I ":
                parts = line.split(b" ", 4)
                if len(parts) != 5:
                    continue
                _, key_b, subject, event_id, data = parts
                key = key_b.decode()
                if key not in fresh:  # a new intent for this key replaces the previous one
                    intents[key] = []
                    fresh.add(key)
                intents[key].append((subject.decode(), event_id.decode(), data))
            elif kind == b"X ":
                key = line[2:].decode()
                intents.pop(key, None)
                fresh.discard(key)
            elif kind == b"- ":  # separator written between two intents of one key
                fresh.discard(line[2:].decode())
    orphaned = [fact for group in intents.values() for fact in group]
    return facts, orphaned


class WriteAhead:
    """The append-only files behind a FactPublisher (see the module docstring)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.name, self._lock_fd = self._claim(name)
        self._set_aside_leftovers()
        self._segments: dict[int, int] = {}  # segment -> items not yet settled
        self._intents: dict[str, int] = {}  # key -> segment of its live intent
        self._current = 0
        self._fd = -1
        self._size = 0
        self._open(1)

    def _claim(self, name: str) -> tuple[str, int]:
        for attempt in range(100):
            candidate = name if attempt == 0 else f"{name}-{attempt}"
            fd = os.open(self.dir / f"{candidate}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            return candidate, fd
        raise RuntimeError(f"no free write-ahead name for {name} in {self.dir}")

    def _set_aside_leftovers(self) -> None:
        """Files under our name from a previous process of the same name (it died): renamed
        to an unlocked name of their own, so that they are adopted like any orphan."""
        leftovers = self.segments_of(self.name)
        if not leftovers:
            return
        orphan = f"{self.name}~{time.time_ns()}"
        for path in leftovers:
            path.rename(self.dir / f"{orphan}{path.name[len(self.name):]}")
        os.close(os.open(self.dir / f"{orphan}.lock", os.O_CREAT | os.O_RDWR, 0o600))

    def _path(self, segment: int) -> Path:
        return self.dir / f"{self.name}.{segment}.wal"

    def _open(self, segment: int) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._current = segment
        self._fd = os.open(self._path(segment), os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size
        self._segments.setdefault(segment, 0)

    def _write(self, line: bytes, items: int) -> int:
        if self._size > SEGMENT_BYTES:
            self._open(self._current + 1)
        os.write(self._fd, line)
        self._size += len(line)
        self._segments[self._current] += items
        return self._current

    def fact(self, subject: str, event_id: str, data: bytes, resolves: str | None) -> int:
        segment = self._write(
            b"F %s %s %s %s\n" % (subject.encode(), event_id.encode(),
                                  (resolves or "-").encode(), data), 1)
        if resolves is not None:
            self._settle_intent(resolves)
        return segment

    def intent(self, key: str, facts: list[tuple[str, str, bytes]]) -> None:
        k = key.encode()
        lines = [b"- %s\n" % k] if key in self._intents else []
        lines += [b"I %s %s %s %s\n" % (k, s.encode(), i.encode(), d) for s, i, d in facts]
        self._settle_intent(key)
        self._intents[key] = self._write(b"".join(lines), 1)

    def drop_intent(self, key: str) -> None:
        if key in self._intents:
            self._write(b"X %s\n" % key.encode(), 0)
            self._settle_intent(key)

    def _settle_intent(self, key: str) -> None:
        segment = self._intents.pop(key, None)
        if segment is not None:
            self.settled(segment)

    def settled(self, segment: int, n: int = 1) -> None:
        """``n`` items of ``segment`` need the file no more; delete what is fully settled."""
        self._segments[segment] -= n
        self._collect()

    def _collect(self) -> None:
        for segment in sorted(self._segments):
            if self._segments[segment] > 0:
                return
            if segment == self._current:
                if self._size > 64 * 1024:  # all settled: start the current one afresh
                    os.ftruncate(self._fd, 0)
                    self._size = 0
                return
            del self._segments[segment]
            with contextlib.suppress(OSError):
                self._path(segment).unlink()

    def orphans(self) -> list[tuple[str, int]]:
        """Names in the directory whose owner is gone, each with its lock fd (held)."""
        found = []
        for lock in sorted(self.dir.glob("*.lock")):
            name = lock.name[:-5]
            if name == self.name:
                continue
            try:
                fd = os.open(lock, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            found.append((name, fd))
        return found

    def segments_of(self, name: str) -> list[Path]:
        def number(path: Path) -> int:
            try:
                return int(path.name[len(name) + 1:-4])
            except ValueError:
                return 0
        return sorted(self.dir.glob(f"{name}.*.wal"), key=number)

    def forget(self, name: str, fd: int, paths: list[Path]) -> None:
        """An adopted name is fully published: remove its files and its lock."""
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            (self.dir / f"{name}.lock").unlink()
        os.close(fd)

    def close(self, *, clean: bool) -> None:
        """``clean``: everything settled, the files go; otherwise they stay for adoption."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if clean:
            for path in self.segments_of(self.name):
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                (self.dir / f"{self.name}.lock").unlink()
        os.close(self._lock_fd)


class FactPublisher:
    def __init__(self, nc: NATS, *, max_queue: int = 200_000, linger: float = 0.02,
                 wal: Path | None = None, name: str = "part") -> None:
        self._js = nc.jetstream()
        self._queue: deque[_Pending] = deque()
        self._max = max_queue
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._linger = linger  # wait this long to batch: fewer wake-ups at low load
        self.published = 0
        self.recovered = 0  # facts published from the files of a dead process
        self.wal = WriteAhead(wal, name) if wal is not None else None
        self._last_adopt = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fact-publisher")

    def emit(self, subject: str, event: Event, *, resolves: str | None = None) -> None:
        """Queue a fact. ``resolves``: the key of an intent this fact supersedes."""
        if len(self._queue) >= self._max:
            log.error("event queue full (%d): dropping %s %s", self._max, subject, event.id)
            return
        data = encode_event(event)
        segment = self.wal.fact(subject, event.id, data, resolves) if self.wal else 0
        self._queue.append(_Pending(subject, event.id, data, segment))
        self._wake.set()

    def intent(self, key: str, facts: list[tuple[str, Event]]) -> None:
        """Facts to publish only if this process dies before ``emit(..., resolves=key)``
        (or ``drop_intent(key)``). A new intent for a key replaces the previous one."""
        if self.wal is not None:
            self.wal.intent(key, [(s, e.id, encode_event(e)) for s, e in facts])

    def drop_intent(self, key: str) -> None:
        if self.wal is not None:
            self.wal.drop_intent(key)

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def _publish(self, batch: list[tuple[str, str, bytes]]) -> None:
        await asyncio.gather(*[
            self._js.publish(subject, data, headers={"Nats-Msg-Id": event_id}, timeout=5.0)
            for subject, event_id, data in batch
        ])

    async def _adopt(self) -> None:
        """Publish what dead processes left in the write-ahead directory."""
        wal = self.wal
        if wal is None:
            return
        self._last_adopt = time.monotonic()
        for name, fd in wal.orphans():
            paths = wal.segments_of(name)
            facts, orphaned = read_segments(paths)
            todo = facts + orphaned
            try:
                for i in range(0, len(todo), 256):
                    await self._publish(todo[i:i + 256])
            except Exception as exc:
                log.warning("recovering %d facts of %s failed (%s); will retry", len(todo),
                            name, exc)
                os.close(fd)
                return
            wal.forget(name, fd, paths)
            self.recovered += len(todo)
            if todo:
                # facts spooled on purpose (runtime/outbox.py, the supervisor's) are routine;
                # another process's leftovers mean it died holding them
                level = logging.DEBUG if SPOOLED in name else logging.WARNING
                log.log(level, "published %d facts left by %s (%d of them for calls it did "
                        "not finish)", len(todo), name, len(orphaned))

    async def _run(self) -> None:
        if self.wal is not None:
            with contextlib.suppress(Exception):
                await self._adopt()
        while True:
            if self.wal is not None and time.monotonic() - self._last_adopt > ADOPT_EVERY_S:
                with contextlib.suppress(Exception):
                    await self._adopt()
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(),
                                           ADOPT_EVERY_S if self.wal is not None else None)
                if self._linger and not self._closing:
                    await asyncio.sleep(self._linger)
                continue
            batch = [self._queue[i] for i in range(min(len(self._queue), 256))]
            try:
                await self._publish([(p.subject, p.event_id, p.data) for p in batch])
            except Exception as exc:  # NATS away or slow: keep the events and retry
                log.warning("publishing %d events failed (%s); retrying", len(batch), exc)
                await asyncio.sleep(0.5)
                continue
            for _ in batch:
                self._queue.popleft()
            if self.wal is not None:
                counts: dict[int, int] = {}
                for p in batch:
                    counts[p.segment] = counts.get(p.segment, 0) + 1
                for segment, n in counts.items():
                    self.wal.settled(segment, n)
            self.published += len(batch)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Flush what is queued (bounded by ``timeout``), then stop. The write-ahead files
        are removed only when everything was published and no intent is open."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.error("%d events not published at shutdown (kept in the write-ahead "
                          "files when enabled)", len(self._queue))
                self._task.cancel()
        if self.wal is not None:
            self.wal.close(clean=not self._queue and not self.wal._intents)
            self.wal = None
