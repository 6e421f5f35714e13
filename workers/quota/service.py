"""The quota worker: spend per user and per key per period, folded from the event log
(``llm.response.>``, ``session.deleted``) as the facts arrive, kept in KV ``cs_quota`` for the
edges and published as ``QuotaUsed`` on ``user.<id>.quota``.

It runs in the ``workers`` process next to the ledger, but apart from it: the ledger commits
batches to DuckDB (tens of ms, pauses of 0.1-0.3 s when it reopens its file), and the edges
must see a budget's crossing within milliseconds. Here each fact is folded in memory
(``fold.QuotaFold``, pure) the moment it arrives (an eager pull consumer, no acks: the position
is this worker's own), and each batch of changes is one KV write per scope that changed and one
``QuotaUsed`` per scope with a budget.

The fold's state (spend, the last requests for de-duplication and session deletes, the
crossings) is saved to ``<home>/quota/state.msgpack`` every few seconds and on stop; a start
resumes from it. Without it (first start, or ``--replay``) the worker folds the event log from
its first fact: the facts it folds again do not publish again (every record in ``cs_quota``
carries the sequence it was published at), and KV is rewritten once the fold has passed that
point, so the edges never see a half-replayed spend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from runtime import bus, names
from runtime.facts import FactPublisher
from runtime.lease import Lease
from runtime.presence import device_name
from runtime.prices import LivePrices, nano_usd
from runtime.pull import BatchPuller, ConsumerGoneError, before_gap
from schemas.config import GatewaySettings
from schemas.events import QuotaUsed, RequestCompleted, SessionDeleted, Usage, decode_event, new_id
from schemas.quota import Spend, resolve_zone, zone_name
from schemas.subjects import RESPONSE_PREFIX, SESSION_DELETED, quota_subject
from schemas.users import Key, Limits, User
from workers.quota.fold import QuotaFold, State

__all__ = ["INPUT_SUBJECTS", "QuotaService", "run"]

log = logging.getLogger("codeswitch.quota")

INPUT_SUBJECTS = [f"{RESPONSE_PREFIX}.>", SESSION_DELETED]
SAVE_EVERY_S = 30.0  # a save of a full state (~6 MB) takes 0.1-0.2 s of the loop
# at most one QuotaUsed per user or key this often (a crossing goes at once): the level is
# what the alerts need, and a fact per request would add a fact per request to the event log
FACT_EVERY_S = 1.0
# a record lists the requests folded into its scope in the last LIST_S seconds (the edges
# keep an early count that long, edge/quota.py PENDING_S), at most RECORD_IDS of them
LIST_S = 5.0
RECORD_IDS = 512
_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(State)
_spend_decoder = msgspec.json.Decoder(Spend)
_json = msgspec.json.Encoder()
_user_decoder = msgspec.json.Decoder(User)
_key_decoder = msgspec.json.Decoder(Key)
_settings_decoder = msgspec.json.Decoder(GatewaySettings)


def state_path(home: Path) -> Path:
    return Path(home) / "quota" / "state.msgpack"


class QuotaService:
    def __init__(self, nats_url: str, home: Path, *, durable: str | None = None,
                 replay: bool = False, batch: int = 512, expires: float = 5.0) -> None:
        self.nats_url = nats_url
        self.home = Path(home)
        # its own consumer per data directory: quota workers side by side (a cluster) never
        # share or delete one another's
        self.durable = durable or names.quota_durable(device_name(),
                                                      str(self.home.resolve()))
        # several quota workers: one writes KV and publishes (runtime/lease.py), the others
        # fold the same facts and stand by
        self.active = False
        self.replay = replay
        self.batch = batch
        self.expires = expires  # of each pull request
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.kv: KeyValue | None = None
        self.facts: FactPublisher | None = None
        self.puller: BatchPuller | None = None
        self._cseq = 0  # the consumer sequence of the last delivery folded (0: none yet)
        self.live_prices = LivePrices(self.home, log=log)
        self.users: dict[str, User] = {}
        self.keys: dict[str, Key] = {}
        self.zone_setting: str | None = None
        self.fold: QuotaFold | None = None
        self.published_upto = 0  # facts up to here were published (before a replay)
        self._held: set[str] = set()  # scopes changed while catching up to published_upto
        # scope -> the requests folded into it in the last LIST_S seconds, oldest first: each
        # record lists them (an edge drops its early count of those, edge/quota.py); not only
        # those since the previous record: an edge whose watch lags may never see a record
        # the next one replaced (the bucket keeps one per key)
        self._ids: dict[str, deque[tuple[float, str]]] = {}
        self._saved_seq = -1
        self._saved_at = 0.0
        self._tasks: list[asyncio.Task[Any]] = []
        self._last_fact: dict[str, float] = {}  # scope -> monotonic time of its last QuotaUsed
        self._due: dict[str, QuotaUsed] = {}  # scope -> its latest level not published yet
        self.applied = asyncio.Event()  # set after each batch (tests, bench)

    # -- lifecycle --------------------------------------------------------------------------

    async def startup(self) -> None:
        self.nc = await bus.connect(self.nats_url, name="codeswitch-quota")
        await bus.wait_ready(self.nc)
        self.js = js = self.nc.jetstream()
        await bus.ensure_all(js)
        await self.live_prices.load(js)
        loads: list[asyncio.Event] = []
        for bucket, apply in ((names.USERS_BUCKET, self._apply_user),
                              (names.KEYS_BUCKET, self._apply_key),
                              (names.SETTINGS_BUCKET, self._apply_settings)):
            loaded = asyncio.Event()
            loads.append(loaded)
            kv = await js.key_value(bucket)
            self._tasks.append(asyncio.create_task(bus.follow_bucket(kv, apply, loaded)))
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in loads)), 30)
        self.kv = await js.key_value(names.QUOTA_BUCKET)
        records = await bus.read_bucket(self.kv)
        self.published_upto = max((_spend_decoder.decode(v).seq for k, (v, _) in records.items()
                                   if k.startswith(("user.", "key."))), default=0)
        self.fold = await self._restore()
        self.facts = FactPublisher(self.nc, wal=self.home / "outbox", name="quota")
        self.facts.start()
        await self._position_consumer()
        log.info("quota ready at seq %d (zone %s)", self.fold.seq, zone_name(self.fold.zone))

    def _zone(self) -> Any:
        try:
            return resolve_zone(self.zone_setting)
        except ValueError as exc:
            log.error("%s: using the machine's zone", exc)
            return resolve_zone(None)

    async def _restore(self) -> QuotaFold:
        assert self.js is not None
        zone = self._zone()
        path = state_path(self.home)
        if self.replay:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        try:
            state = _state_decoder.decode(path.read_bytes())
        except FileNotFoundError:
            return QuotaFold(zone)
        except (msgspec.DecodeError, msgspec.ValidationError, OSError) as exc:
            log.error("quota state %s unreadable (%s): folding the event log again", path, exc)
            return QuotaFold(zone)
        last = (await self.js.stream_info(names.EVENTS_STREAM)).state.last_seq
        if state.seq > last:  # CS_EVENTS was recreated: its sequences mean nothing here
            log.error("quota state at seq %d is beyond CS_EVENTS' last %d: starting over",
                      state.seq, last)
            return QuotaFold(zone)
        self._saved_seq = state.seq
        return QuotaFold.restore(state, zone)

    async def _position_consumer(self) -> None:
        assert self.js is not None and self.fold is not None and self.nc is not None
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(names.EVENTS_STREAM, self.durable)
        start = self.fold.seq + 1
        await self.js.add_consumer(names.EVENTS_STREAM, js_api.ConsumerConfig(
            durable_name=self.durable,
            description="codeswitch quota (position from <home>/quota/state.msgpack)",
            deliver_policy=(js_api.DeliverPolicy.BY_START_SEQUENCE if start > 1
                            else js_api.DeliverPolicy.ALL),
            opt_start_seq=start if start > 1 else None,
            ack_policy=js_api.AckPolicy.NONE,
            filter_subjects=INPUT_SUBJECTS,
            max_waiting=16,
            inactive_threshold=7 * 86400.0,  # a data directory gone for good leaves none
        ))
        if self.puller is not None:
            await self.puller.close()
        self._cseq = 0  # a new consumer counts its deliveries from 1
        self.puller = await BatchPuller(self.nc, names.EVENTS_STREAM, self.durable,
                                        batch=self.batch, expires=self.expires, eager=True).start()

    async def main_loop(self, stop: asyncio.Event) -> None:
        assert self.js is not None
        self._tasks.append(asyncio.create_task(self.live_prices.watch(self.js, stop)))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await self._loop(stop, stopped)
        finally:
            stopped.cancel()

    async def _loop(self, stop: asyncio.Event, stopped: asyncio.Future[Any]) -> None:
        while not stop.is_set():
            assert self.puller is not None
            try:
                fetch = asyncio.ensure_future(self.puller.fetch(
                    timeout=FACT_EVERY_S / 4 if self._due or (self.active and self._held)
                    else None))
                await asyncio.wait([fetch, stopped], return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():  # told to stop while idle
                    fetch.cancel()
                    break
                msgs = fetch.result()
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                if stop.is_set():
                    break
                raise
            except ConsumerGoneError:
                log.warning("quota consumer vanished; recreating")
                await self._position_consumer()
                continue
            except nats.errors.Error as exc:
                log.warning("quota fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if msgs:
                # no acks here (the position is the fold's): a delivery lost in transit (NATS
                # reconnecting, a cluster node lost) would never come again, and its spend
                # would be missing. It shows as a jump in the consumer sequence: fold what
                # precedes it, then read again from the fold's position.
                taken, cseq = before_gap(msgs, self._cseq)
                if taken:
                    await self.apply(msgs[:taken])
                    self._cseq = cseq or 0
                if taken < len(msgs):
                    assert self.fold is not None
                    log.warning("quota: a delivery of %s was lost in transit; reading again "
                                "from seq %d", self.durable, self.fold.seq + 1)
                    await self._position_consumer()
                    continue
            elif self.active and self._held and self.fold is not None \
                    and self.fold.seq > self.published_upto:
                await self.apply([])  # just became the active worker: write what it folded
            if self._due:
                self._publish([])
            if time.monotonic() - self._saved_at >= SAVE_EVERY_S:
                self.save()

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.puller is not None:
            with contextlib.suppress(Exception):
                await self.puller.close()
        self.save()
        if self.facts is not None:
            self._publish([], flush=True)
            await self.facts.aclose()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    def save(self) -> None:
        """The fold's state to ``<home>/quota/state.msgpack`` (atomically), if it moved."""
        fold = self.fold
        self._saved_at = time.monotonic()
        if fold is None or fold.seq == self._saved_seq:
            return
        path = state_path(self.home)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(_state_encoder.encode(fold.state()))
        os.replace(tmp, path)
        self._saved_seq = fold.seq

    # -- KV callbacks -----------------------------------------------------------------------

    def _apply_user(self, key: str, value: bytes | None, revision: int = 0) -> None:
        if value is None:
            self.users.pop(key, None)
            return
        with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
            self.users[key] = _user_decoder.decode(value)

    def _apply_key(self, key: str, value: bytes | None, revision: int = 0) -> None:
        if value is None:
            self.keys.pop(key, None)
            return
        with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
            self.keys[key] = _key_decoder.decode(value)

    def _apply_settings(self, key: str, value: bytes | None, revision: int = 0) -> None:
        if key != "gateway":
            return
        zone = None
        if value is not None:
            with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
                zone = _settings_decoder.decode(value).timezone or None
        if zone != self.zone_setting:
            self.zone_setting = zone
            if self.fold is not None:  # new periods start in the new zone
                self.fold.zone = self._zone()

    # -- folding ----------------------------------------------------------------------------

    def _nusd(self, provider: str | None, model: str, usage: Usage | None) -> int:
        return nano_usd(self.live_prices.book, provider, model, usage)

    async def apply(self, msgs: list[Any]) -> None:
        """Fold a batch, then write what changed (KV) and publish the levels (facts)."""
        fold = self.fold
        assert fold is not None
        changed: set[str] = set()
        for m in msgs:
            seq = m.metadata.sequence.stream
            if seq <= fold.seq:
                continue
            try:
                event = decode_event(m.data)
            except (msgspec.ValidationError, msgspec.DecodeError):
                fold.seq = seq
                continue
            if isinstance(event, RequestCompleted):
                scopes = fold.request(seq, event, self._nusd(
                    event.provider, event.upstream_model or event.model, event.usage))
                if scopes:
                    now = time.monotonic()
                    for scope in scopes:
                        ids = self._ids.get(scope)
                        if ids is None:
                            ids = self._ids[scope] = deque(maxlen=RECORD_IDS)
                        ids.append((now, event.request_id))
                changed |= scopes
            elif isinstance(event, SessionDeleted):
                changed |= fold.deleted(seq, event, [
                    self._nusd(d.provider, d.upstream_model or d.model, d.usage)
                    for d in event.requests])
            else:
                fold.seq = seq
        if not changed and not self._held:
            self.applied.set()
            return
        levels = self._levels(changed)
        if not self.active or fold.seq <= self.published_upto:
            # standing by, or replaying what was published before: fold, write nothing (the
            # requests are listed when the held scopes are written, as long as they are few)
            self._held |= changed
            if fold.seq <= self.published_upto:
                self._ids.clear()
            elif len(self._ids) > 1024:  # standing by: keep only what a record could list
                cutoff = time.monotonic() - LIST_S
                for scope in [k for k, v in self._ids.items() if v[-1][0] < cutoff]:
                    del self._ids[scope]
            self.applied.set()
            return
        changed |= self._held
        self._held = set()
        await self._write(changed)
        self._publish(levels)
        self.applied.set()

    def _limits(self, scope: str) -> tuple[Limits | None, User | None, Key | None]:
        kind, _, ident = scope.partition(".")
        if kind == "user":
            user = self.users.get(ident)
            return (user.limits if user else None), user, None
        key = self.keys.get(ident)
        return (key.limits if key else None), (self.users.get(key.user) if key else None), key

    def _levels(self, changed: set[str]) -> list[QuotaUsed]:
        fold = self.fold
        assert fold is not None
        out = []
        now = time.time()
        for scope in sorted(changed):
            limits, user, key = self._limits(scope)
            if limits is None or limits.budget is None:
                continue
            level = fold.level(scope, limits.budget, limits.soft_pct)
            if level is None:
                continue
            owner = user.id if user else (key.user if key else scope.partition(".")[2])
            out.append(QuotaUsed(
                id=new_id(), ts=now, user=owner, used=level.used, limit=limits.budget.amount,
                unit=limits.budget.unit, period=limits.budget.period,
                key=key.id if key else None, name=user.name if user else None,
                key_name=key.name if key else None, crossed=level.crossed,
                soft_pct=limits.soft_pct, period_start=level.period.start,
                resets_at=level.period.end))
        return out

    async def _write(self, scopes: set[str]) -> None:
        """One core-NATS publish per scope to the bucket's subject, no ack awaited (as the
        routers write session affinity): the next batch is not held by a round trip. A write
        lost while NATS is away is corrected by the scope's next change."""
        fold, nc = self.fold, self.nc
        assert fold is not None and nc is not None
        cutoff = time.monotonic() - LIST_S
        for scope in scopes:
            record = fold.record(scope)
            ids = self._ids.get(scope)
            if ids:
                while ids and ids[0][0] < cutoff:
                    ids.popleft()
                if ids:
                    record = msgspec.structs.replace(record, ids=[r for _, r in ids])
                else:
                    del self._ids[scope]
            try:
                await nc.publish(f"$KV.{names.QUOTA_BUCKET}.{scope}", _json.encode(record))
            except Exception as exc:
                log.warning("quota: %s not written: %s", scope, exc)

    def _publish(self, levels: list[QuotaUsed], *, flush: bool = False) -> None:
        """Publish the levels: a crossing at once, otherwise at most one per scope every
        FACT_EVERY_S (the latest level waits in ``_due``; ``flush``: everything now)."""
        assert self.facts is not None
        now = time.monotonic()
        for ev in levels:
            self._due[f"key.{ev.key}" if ev.key else f"user.{ev.user}"] = ev
        for scope, ev in list(self._due.items()):
            if not (flush or ev.crossed or now - self._last_fact.get(scope, -1e9)
                    >= FACT_EVERY_S):
                continue
            del self._due[scope]
            self._last_fact[scope] = now
            self.facts.emit(quota_subject(ev.user), ev)
            if ev.crossed:
                who = f"key {ev.key_name} of " if ev.key_name else ""
                log.warning("quota: %suser %s crossed its %s threshold (%g of %g %s per %s)",
                            who, ev.name or ev.user, ev.crossed, ev.used, ev.limit, ev.unit,
                            ev.period)


LEASE_KEY = "lease.quota"  # in KV cs_quota: which quota worker writes and publishes


async def hold_lease(service: QuotaService, stop: asyncio.Event) -> None:
    """Several quota workers (a cluster): the lease holder is the active one."""
    assert service.kv is not None
    lease = Lease(service.kv, LEASE_KEY)
    try:
        while not stop.is_set():
            if not await lease.acquire(stop):
                return
            service.active = True
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lease.lost.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
                service.active = False
                await lease.release()
    finally:
        service.active = False


async def run(nats_url: str, home: Path, stop: asyncio.Event, *,
              durable: str | None = None, replay: bool = False) -> None:
    """Run the quota worker until ``stop`` is set (a part of ``runtime.launch``)."""
    service = QuotaService(nats_url, home, durable=durable, replay=replay)
    leader: asyncio.Task[None] | None = None
    try:
        await service.startup()
        leader = asyncio.create_task(hold_lease(service, stop))
        await service.main_loop(stop)
    finally:
        if leader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(leader, 5)
        await service.shutdown()
