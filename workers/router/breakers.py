"""The I/O side of the circuit breakers (``breaker.py`` is the pure core; whether an open
circuit moves a provider last is planned in ``plan.py``): admitting an attempt (the half-open
probe), what each result does to the shared state, and the failure notes routers send each
other.

Failures while a breaker is closed are counted in memory from the notes every router sends on
``cs.breaker.fail.<key>`` (core NATS, fire and forget); the transition to open, the half-open
probe and its result are compare-and-set writes to KV (``shared.CircuitTable``), so exactly one
router makes each transition and publishes its ``CircuitChanged`` fact. Nothing here is awaited
on the request path except the rare probe admission.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from runtime.facts import FactPublisher
from schemas.events import CircuitChanged, new_id
from schemas.subjects import BREAKER_FAIL_PREFIX, circuit_subject
from workers.router.attempt import Attempt
from workers.router.breaker import TRANSPORT_ERRORS, BreakerState, allow, breaker_key, record
from workers.router.plan import Candidate
from workers.router.shared import CircuitTable, SettingsView

__all__ = ["Breakers"]

_enc = msgspec.json.Encoder()


class _FailureNote(msgspec.Struct):
    key: str
    provider: str
    ts: float
    router: str
    model: str | None = None
    reason: str | None = None


_note_decoder = msgspec.json.Decoder(_FailureNote)


class Breakers:
    def __init__(self, table: CircuitTable, settings: SettingsView, router_id: str) -> None:
        self.table = table
        self.settings = settings
        self.router_id = router_id
        self.nc: NATS | None = None
        self.facts: FactPublisher | None = None
        # failures inside the window while a breaker is closed, from every router's notes
        self._local: dict[str, BreakerState] = {}
        self._bg: set[asyncio.Future[Any]] = set()

    async def admit(self, cand: Candidate) -> bool:
        """Check both breakers; an expired open breaker lets exactly one router probe."""
        now = time.time()
        policy = self.settings.routing.breaker
        for key, model in ((breaker_key(cand.provider.name), None),
                           (breaker_key(cand.provider.name, cand.upstream_model),
                            cand.upstream_model)):
            st = self.table.get(key)
            if st is None or st.state == "closed":
                continue
            ok, probe = allow(st, now, policy)
            if not ok:
                return False
            if probe is not None:
                def start_probe(cur: BreakerState | None) -> BreakerState | None:
                    return allow(cur, now, policy)[1]

                won = await self.table.swap(key, start_probe,
                                               self._transition_cb(cand.provider.name, model))
                if not won:
                    return False
        return True

    def judge(self, att: Attempt) -> None:
        """Feed the attempt's result to the breakers. Failures in the closed state are
        counted locally (no KV traffic, nothing on the request path); only a transition —
        closed -> open here, or the result of a half-open probe — is written to KV, in the
        background, where every router sees it."""
        if att.outcome == "cancelled":
            return
        ok = att.outcome == "ok" and att.error_class is None
        p, model = att.candidate.provider.name, att.candidate.upstream_model
        transport = att.error_class in TRANSPORT_ERRORS
        counted = att.status in self.settings.routing.failover_statuses \
            or att.error_class == "stream_error"
        now = time.time()
        policy = self.settings.routing.breaker
        reason = att.error_class
        targets: list[tuple[str, str | None]] = []
        if ok or transport:
            targets.append((breaker_key(p), None))
        if ok or (counted and not transport):
            targets.append((breaker_key(p, model), model))
        for key, m in targets:
            shared = self.table.get(key)
            if shared is None or shared.state == "closed":
                if not ok:
                    self.count_failure(key, p, m, now, reason)
                    self.spawn(self._announce_failure(key, p, m, now, reason))
            elif record(shared, ok, now, policy, reason) is not None:
                self.spawn(self.table.swap(
                    key, lambda cur: record(cur, ok, now, policy, reason),
                    self._transition_cb(p, m)))

    def count_failure(self, key: str, provider: str, model: str | None, ts: float,
                       reason: str | None) -> None:
        """One failure seen by any router (ours directly, others' via cs.breaker.fail.>)."""
        policy = self.settings.routing.breaker
        local = record(self._local.get(key), False, ts, policy, reason)
        if local is None:
            return
        if local.state == "closed":
            self._local[key] = local
            return
        self._local.pop(key, None)
        shared = self.table.get(key)
        if shared is not None and shared.state != "closed":
            return

        def to_open(cur: BreakerState | None, opened: BreakerState = local) \
                -> BreakerState | None:
            return opened if cur is None or cur.state == "closed" else None

        self.spawn(self.table.swap(key, to_open, self._transition_cb(provider, model)))

    async def _announce_failure(self, key: str, provider: str, model: str | None, ts: float,
                                reason: str | None) -> None:
        assert self.nc is not None
        note = _enc.encode({"key": key, "provider": provider, "model": model, "ts": ts,
                            "reason": reason, "router": self.router_id})
        try:
            await self.nc.publish(f"{BREAKER_FAIL_PREFIX}.{key}", note)
        except Exception:
            pass

    async def on_failure_note(self, msg: Msg) -> None:
        try:
            note = _note_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if note.router == self.router_id:
            return  # counted when it happened
        self.count_failure(note.key, note.provider, note.model, note.ts, note.reason)

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def _transition_cb(self, provider: str, model: str | None) -> Any:
        def on_change(old: BreakerState | None, new: BreakerState) -> None:
            before = old.state if old else "closed"
            if new.state == before or self.facts is None:
                return
            self.facts.emit(circuit_subject(provider, new.state), CircuitChanged(
                id=new_id(), ts=time.time(), provider=provider, model=model,
                state=new.state, previous=before,
                failures=len(old.failures) + 1 if old and new.state == "open" and
                before == "closed" else 0,
                reason=new.reason, router=self.router_id))
        return on_change

