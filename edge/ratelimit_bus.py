"""The NATS side of the rate limits (``edge/ratelimit.py`` is the pure core): counting across
all edges, the way the routers count circuit-breaker failures.

- Every edge counts what it admits in its own windows and tells the others on core NATS
  (``cs.rate.note``, fire and forget, no ack): a note carries every admission since the last
  one (request id, prompt estimate, subjects) and this edge's requests in flight that changed.
  Admissions near a limit wait for their note to come back and are decided in the notes'
  order (``a``); those with ample room were counted at once and every edge counts them
  (``n``).
  A note goes out as soon as the event loop comes round (an ``asyncio.Event`` wakes the sender;
  under load one note carries many admissions). The others fold it in at their own clock
  (no timestamps travel, so clock skew between edges does not matter).
- Every edge subscribes to ``llm.response.>``, the ``RequestCompleted`` facts the routers and
  edges already publish (JetStream-stored subjects reach core subscribers too), and settles
  each request's token estimate with its real usage. Every edge reads the same facts, so no
  note is needed for the tokens.
- Requests in flight are announced as absolute counts, again every second while any is in
  flight; an edge not heard for ``INFLIGHT_STALE_S`` is forgotten (a dead edge's requests are
  no longer held against anyone), and an edge that stops says 0 for all.

Nothing here is awaited on the request path: :meth:`RateLimits.admit` and :meth:`release`
are synchronous and O(1) in the number of users and keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from edge.auth import Directory, Principal
from edge.done import Done, done_decoder
from edge.ratelimit import Admission, Limiter, Plan
from schemas.ratelimit import RateNote
from schemas.subjects import RATE_NOTE, RESPONSE_PREFIX
from schemas.users import Key, Limits, User

__all__ = ["RateLimits"]

log = logging.getLogger("codeswitch.edge.ratelimit")

_note_enc = msgspec.json.Encoder()
_note_dec = msgspec.json.Decoder(RateNote)
HEARTBEAT_S = 1.0
# how long an admission waits for its own note to come back before it is decided alone
ECHO_TIMEOUT_S = 0.25


# the fact's part read here (edge/done.py); the old names stay for the bench and the tests
_Done = Done
_done_dec = done_decoder


def _rated(limits: Limits) -> bool:
    return limits.rpm is not None or limits.tpm is not None or limits.concurrency is not None


class RateLimits:
    """One per edge: ``admit`` on the request path, ``release`` when the request ends."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self.core = Limiter()
        self.edge_id = ""
        self.nc: NATS | None = None
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        # key id -> (its record, its user's record, their plan): rebuilt when either changes
        self._plans: dict[str, tuple[Key | None, User | None, Plan | None]] = {}
        # this edge's admissions waiting for their note to come back, and those decided
        # without it (refused: not counted when it comes)
        self._pending: dict[str, tuple[asyncio.Future[bool], Admission]] = {}
        self._late: set[str] = set()
        self.notes_sent = 0
        self.notes_folded = 0
        self._own = b"\x00"  # how this edge's notes start (set by start)
        # also told of each fact of a user's request (the edge's budgets, edge/quota.py)
        self.on_done: Callable[[Done, float], None] | None = None

    async def start(self, nc: NATS, edge_id: str) -> None:
        self.nc, self.edge_id = nc, edge_id
        self._own = _note_enc.encode(RateNote(e=edge_id))[:-1]  # b'{"e":"<id>"'
        self._subs = [
            await nc.subscribe(RATE_NOTE, cb=self._on_note, pending_msgs_limit=1_000_000),
            await nc.subscribe(f"{RESPONSE_PREFIX}.>", cb=self._on_fact,
                               pending_msgs_limit=1_000_000),
        ]
        self._tasks = [asyncio.create_task(self._sender()),
                       asyncio.create_task(self._heartbeat())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        nc = self.nc
        if nc is not None and nc.is_connected and self.core.inflight.local:
            with contextlib.suppress(Exception):  # this edge holds nothing any more
                await nc.publish(RATE_NOTE, _note_enc.encode(RateNote(e=self.edge_id,
                                                                      full=True)))
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # -- the request path -----------------------------------------------------------------
    async def admit(self, principal: Principal, request_id: str, body_bytes: int
                    ) -> Admission | None:
        """Count the request, or raise ``RateLimited`` (429 with retry-after). None: nothing
        limits it (no users, or neither its key nor its user has a rate limit).

        Refused at once when the windows are full. Otherwise, with an rpm or tpm limit, the
        request is counted in the order of the notes: it goes out in this edge's next note
        and is decided when that note comes back from NATS (one round trip, ~1 ms), after
        every note the server delivered before it, so two edges admitting at the same
        instant do not both take the last room (``ECHO_TIMEOUT_S`` without the note: decided
        here alone)."""
        kid = principal.key_id
        if kid is None:
            return None
        d = self.directory
        key = d.keys.get(kid)
        user = d.users.get(principal.user_id or "")
        cached = self._plans.get(kid)
        if cached is None or cached[0] is not key or cached[1] is not user:
            cached = self._plan(kid, key, user)
        plan = cached[2]
        if plan is None:
            return None
        core = self.core
        adm = core.check(plan, request_id, body_bytes, time.time(), count=False, fast=True)
        if adm.decided:  # nothing to count, or counted at once (ample room): announced
            if adm.held or adm.counted:
                self._wake.set()
            return adm
        if adm.held:
            self._wake.set()
        nc = self.nc
        try:
            if nc is None or not nc.is_connected:
                ok = core.decide(request_id, adm.estimate, adm.counted, time.time(),
                                 self._limits_of)
            else:
                fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                self._pending[request_id] = (fut, adm)
                core.outbox.append((request_id, adm.estimate, adm.counted))
                self._wake.set()
                try:
                    ok = await fut  # the sender sets a timer per note (_echo_late)
                finally:
                    self._pending.pop(request_id, None)
        except BaseException:  # cancelled while waiting (the server stopping)
            core.release(adm)
            raise
        if not ok:
            core.release(adm)
            raise core.refusal(plan, adm.estimate, time.time())
        return adm

    def _echo_late(self, request_ids: list[str]) -> None:
        """This edge's note did not come back in time (NATS slow or away): its admissions
        still waiting are decided here."""
        for rid in request_ids:
            waiting = self._pending.get(rid)
            if waiting is None or waiting[0].done():
                continue
            fut, adm = waiting
            ok = self.core.decide(rid, adm.estimate, adm.counted, time.time(),
                                  self._limits_of)
            if not ok:  # when the note comes back after all, it is not counted
                if len(self._late) > 10_000:
                    self._late.clear()
                self._late.add(rid)
            fut.set_result(ok)

    def _limits_of(self, subject: str) -> tuple[int | None, int | None] | None:
        """(rpm, tpm) of ``k:<key id>`` / ``u:<user id>`` as this edge knows them."""
        d = self.directory
        rec: Key | User | None = (d.keys.get(subject[2:]) if subject[0] == "k"
                                  else d.users.get(subject[2:]))
        if rec is None:
            return None
        return rec.limits.rpm, rec.limits.tpm

    def _plan(self, kid: str, key: Key | None, user: User | None
              ) -> tuple[Key | None, User | None, Plan | None]:
        """The rules of a key and its user, made again when either record changed."""
        plan = None
        if key is not None and user is not None:
            plan = self.core.plan(
                (user.id, f"user {user.name}", user.limits),
                (key.id, f"API key {key.name!r} ({key.prefix}…) of user {user.name}",
                 key.limits))
        if len(self._plans) > 2 * max(len(self.directory.keys), 1024):
            self._plans.clear()  # keys removed meanwhile
        entry = self._plans[kid] = (key, user, plan)
        return entry

    def release(self, admission: Admission | None) -> None:
        if admission is not None and admission.held:
            self.core.release(admission)
            self._wake.set()

    # -- notes ------------------------------------------------------------------------------
    async def _sender(self) -> None:
        """Send what was counted since the last note, whenever there is something."""
        core = self.core
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            admitted, counted = core.outbox, core.counted_out
            core.outbox, core.counted_out = [], []
            changed = core.inflight.take_changes() if core.inflight.changed else {}
            if not admitted and not counted and not changed:
                continue
            note = RateNote(e=self.edge_id, a=admitted, n=counted, c=changed)
            await self._send(note)
            if admitted:  # one timer per note: admissions whose note does not come back
                loop.call_later(ECHO_TIMEOUT_S, self._echo_late, [a[0] for a in admitted])

    async def _send(self, note: RateNote) -> None:
        nc = self.nc
        if nc is None or not nc.is_connected:
            return  # the others miss these admissions (see docs/architecture.md)
        try:
            await nc.publish(RATE_NOTE, _note_enc.encode(note))
            self.notes_sent += 1
        except Exception as exc:
            log.debug("rate note not sent: %s", exc)

    async def _heartbeat(self) -> None:
        """Every second: this edge's requests in flight again (while it holds any), and the
        other edges that went silent forgotten."""
        was_holding = False
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            local = self.core.inflight.local
            if local or was_holding:
                await self._send(RateNote(e=self.edge_id, c=dict(local), full=True))
            was_holding = bool(local)
            gone = self.core.inflight.expire(time.time())
            if gone:
                log.info("rate limits: forgot the requests in flight of silent edge(s) %s",
                         ", ".join(gone))

    async def _on_note(self, msg: Msg) -> None:
        data = msg.data
        own = self._own
        if data.startswith(own) and not data.startswith(b',"a":', len(own)):
            return  # this edge's own note with nothing to decide (the common case)
        try:
            note = _note_dec.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return
        self.fold(note, time.time())

    def fold(self, note: RateNote, now: float) -> None:
        """A note (another edge's, or this edge's own come back), decided in its order at
        this edge's clock."""
        core = self.core
        own = note.e == self.edge_id
        if not own:
            for rid, estimate, subjects in note.n:
                core.force(rid, estimate, subjects, now)
        for rid, estimate, subjects in note.a:
            if own and rid in self._late:
                self._late.discard(rid)
                continue
            ok = core.decide(rid, estimate, subjects, now, self._limits_of)
            if own:
                waiting = self._pending.get(rid)
                if waiting is not None and not waiting[0].done():
                    waiting[0].set_result(ok)
        if own:
            return  # its own requests in flight are counted as they happen
        if note.c or note.full:
            self.core.inflight.apply(note.e, note.c, now, full=note.full)
        self.notes_folded += 1

    async def _on_fact(self, msg: Msg) -> None:
        # no users, or a fact of no user's request (the edge's own 401s): nothing to settle
        if not self.directory.users or b'"key_id"' not in msg.data:
            return
        try:
            done = _done_dec.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return
        now = time.time()
        self.settle(done, now)
        if self.on_done is not None:
            self.on_done(done, now)

    def settle(self, done: Done, now: float) -> None:
        if done.key_id is None:
            return
        tokens = done.usage.total_tokens if done.usage is not None else 0
        rates = self.core.rates
        if done.request_id in rates._reserved:  # admitted here or noted: counted on those
            rates.settle(done.request_id, tokens, (), now)
            return
        if not tokens:
            return
        subjects: list[str] = []  # for a request this edge never saw admitted
        d = self.directory
        key, user = d.keys.get(done.key_id), d.users.get(done.user_id or "")
        if key is not None and key.limits.tpm is not None:
            subjects.append("k:" + key.id)
        if user is not None and user.limits.tpm is not None:
            subjects.append("u:" + user.id)
        if subjects:
            rates.settle(done.request_id, tokens, tuple(subjects), now)
