"""One active worker among several: a lease in a KV bucket, for the parts whose work must not
run twice at once (the alerts worker: one evaluation, one notification per transition).

The holder writes the key every ``renew_s`` with a compare-and-set on the revision it last
wrote; a standby watches the key and takes it over (compare-and-set on the revision it saw)
once the revision has not moved for ``ttl_s`` by its own monotonic clock, so no two hosts'
wall clocks are ever compared. A holder that fails a renewal (another took over, or NATS was
unreachable for longer than the lease) sets ``lost`` and must stop its work at once.

    lease = Lease(kv, "alerts.leader", holder="host:1234")
    await lease.acquire(stop)         # returns when held (or stop was set)
    ... run, and stop when lease.lost is set ...
    await lease.release()             # a clean stop hands over at once
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from runtime.presence import device_name

__all__ = ["Lease"]

log = logging.getLogger("codeswitch.lease")


class Lease:
    def __init__(self, kv: KeyValue, key: str, *, holder: str | None = None,
                 ttl_s: float = 6.0, renew_s: float = 1.5) -> None:
        if renew_s * 2 >= ttl_s:
            raise ValueError("renew at least twice per lease period")
        self.kv = kv
        self.key = key
        # "<device>:<pid>": a standby on the same device takes over at once from a holder
        # process that no longer exists (a kill -9 and a restart by the supervisor)
        self.holder = holder or f"{device_name()}:{os.getpid()}"
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self.revision = 0  # of our last write while we hold it
        self.lost = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None

    def _value(self) -> bytes:
        return json.dumps({"holder": self.holder, "at": time.time()}).encode()

    async def acquire(self, stop: asyncio.Event, poll_s: float = 0.5) -> bool:
        """Until the lease is ours (True) or ``stop`` is set (False)."""
        seen_rev, seen_at, said = -1, time.monotonic(), False
        while not stop.is_set():
            try:
                entry = await self.kv.get(self.key)
            except KeyNotFoundError:
                entry = None
            except Exception as exc:  # NATS away, a stream without a leader: look again
                log.debug("lease %s: %s", self.key, exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll_s)
                continue
            try:
                if entry is None or entry.value in (None, b""):
                    # never held, or released: create it (update over a delete marker)
                    if entry is None:
                        self.revision = await self.kv.create(self.key, self._value())
                    else:
                        self.revision = await self.kv.update(self.key, self._value(),
                                                             last=entry.revision)
                    break
                rev = entry.revision or 0
                if rev != seen_rev:
                    seen_rev, seen_at = rev, time.monotonic()
                    if not said:
                        said = True
                        log.info("standing by: %s holds %s", _holder(entry.value), self.key)
                elif time.monotonic() - seen_at >= self.ttl_s or _gone(entry.value):
                    self.revision = await self.kv.update(self.key, self._value(), last=rev)
                    log.warning("took over %s from %s (silent for %.1f s)", self.key,
                                _holder(entry.value), time.monotonic() - seen_at)
                    break
            except (KeyWrongLastSequenceError, Exception) as exc:
                # another standby won the race, or NATS is away: look again
                log.debug("lease %s: %s", self.key, exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_s)
        else:
            return False
        self.lost.clear()
        self._renewer = asyncio.create_task(self._renew(), name=f"lease-{self.key}")
        return True

    async def _renew(self) -> None:
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.renew_s)
            try:
                self.revision = await self.kv.update(self.key, self._value(),
                                                     last=self.revision)
                last_ok = time.monotonic()
            except KeyWrongLastSequenceError:
                log.error("lease %s taken over by another worker: stopping", self.key)
                self.lost.set()
                return
            except Exception as exc:
                # NATS away: a standby cannot take over either unless this lasts a lease
                if time.monotonic() - last_ok >= self.ttl_s - self.renew_s:
                    log.error("lease %s not renewed for %.1f s (%s): stopping", self.key,
                              time.monotonic() - last_ok, exc)
                    self.lost.set()
                    return

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renewer
            self._renewer = None
        if self.revision and not self.lost.is_set():
            with contextlib.suppress(Exception):
                await self.kv.delete(self.key, last=self.revision)
        self.revision = 0


def _holder(value: bytes | None) -> str:
    try:
        return str(json.loads(value or b"{}").get("holder", "?"))
    except ValueError:
        return "?"


def _gone(value: bytes | None) -> bool:
    """The holder is a process of this device that no longer runs."""
    device, _, pid = _holder(value).rpartition(":")
    if device != device_name() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
