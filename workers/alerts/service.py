"""The alerts worker: the only part of workers/alerts that touches NATS.

    CS_EVENTS (llm.response.>, provider.circuit.>, user.*.quota) ──durable "alerts"──▶ Engine
        ──▶ alert.fired.<rule> / alert.resolved.<rule>            (facts, back on CS_EVENTS)
    CS_EVENTS (alert.fired.>, alert.resolved.>) ──durable "alerts-notify"──▶ webhooks
        failures ──▶ alert.delivery_failed.<rule>

Evaluation and delivery are two consumers, so a slow or dead webhook never holds up
evaluation, and a notification is driven by the fact on the log (an outbox): a crash before a
delivery is acked redelivers the fact, and per-channel "sent" markers (KV cs_alert_state,
``sent.<alert id>``) stop a channel that already got it from getting it twice.

Restart safety: every rule's AlertState (firing, fired id, cool-down anchors) is persisted in
KV cs_alert_state after its fact is published, and alert ids are deterministic, so the replay of
unacked events after a crash re-creates the same facts, which JetStream de-duplicates. Windows
are rebuilt on start by reading the recent part of the stream up to the consumer's ack floor
without evaluating ("warm-up"), plus the latest circuit transition and quota level of each
breaker and user however old; the first tick then evaluates everything.

Prices: the ``cost`` metric prices requests with the ledger's price book and the user's
overrides (``<home>/prices.toml``, KV cs_settings ``ledger.prices``), loaded before the warm-up
and watched like the ledger does (``runtime.prices.LivePrices``), so both agree on a cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import (
    KeyNotFoundError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from runtime import bus, names
from runtime.lease import Lease
from runtime.prices import LivePrices
from runtime.pull import BatchPuller, ConsumerGoneError, before_gap, parse_reply
from schemas.events import (
    AlertFired,
    AlertNotificationFailed,
    AlertResolved,
    Event,
    decode_event,
    encode_event,
)
from schemas.prices import PriceBook
from schemas.subjects import safe_token
from workers.alerts.notify import Notifier, notification_of
from workers.alerts.rules import AlertState, Engine, Rule, Transition

__all__ = [
    "INPUT_SUBJECTS",
    "AlertsService",
    "alert_subject",
    "run",
]

log = logging.getLogger("codeswitch.alerts")

INPUT_SUBJECTS = ["llm.response.>", "provider.circuit.>", "user.*.quota"]
ALERT_SUBJECTS = ["alert.fired.>", "alert.resolved.>"]
_rule_decoder = msgspec.json.Decoder(Rule)
_state_decoder = msgspec.json.Decoder(AlertState)
_encoder = msgspec.json.Encoder()


def alert_subject(event: AlertFired | AlertResolved | AlertNotificationFailed) -> str:
    kind = {AlertFired: "fired", AlertResolved: "resolved"}.get(type(event), "delivery_failed")
    return f"alert.{kind}.{safe_token(event.rule)}"


class AlertsService:
    """startup / main loops / shutdown, in the shape of uvicorn's Server."""

    def __init__(
        self,
        nc: NATS,
        *,
        tick_s: float = 1.0,
        batch: int = 1024,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
        max_deliveries: int = 32,
        home: Path | None = None,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.engine = Engine()
        # the cost metric's prices: the ledger's book, built-in + <home>/prices.toml + KV
        # ledger.prices, watched (each new book goes to the engine)
        self.prices = LivePrices(home, on_change=self._use_prices, log=log)
        self.tick_s = tick_s
        self.batch = batch
        self.notifier = notifier or Notifier()
        self.clock = clock
        self._lock = asyncio.Lock()  # engine changes and their facts go out in order
        self._retired: dict[str, Rule] = {}  # removed rules, so a final "resolved" reaches them
        self._deliveries: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_deliveries)
        self._rules_kv: KeyValue
        self._state_kv: KeyValue
        self._watcher: KeyValue.KeyWatcher | None = None
        self._rule_revs: dict[str, int] = {}  # revisions read at start (already applied)

    # -- startup ----------------------------------------------------------------------------

    async def startup(self) -> None:
        await bus.ensure_all(self.js)
        await self.prices.load(self.js)  # before the warm-up prices the recent requests
        self._rules_kv = await self.js.key_value(names.RULES_BUCKET)
        self._state_kv = await self.js.key_value(names.ALERT_STATE_BUCKET)
        self.engine.restore(await self._load_states())
        floor = await self._ensure_consumers()
        # Start watching first (no change is missed), then read the current rules directly:
        # nats-py's "initial values done" marker can arrive before the initial values (it
        # compares consumer_info with what the callback has seen so far), and starting with
        # no rules would resolve every restored alert as "rule removed".
        self._watcher = await self._rules_kv.watchall()
        rules = await self._load_rules()
        async with self._lock:
            await self._emit(self.engine.set_rules(rules, self.clock()))
        await self._warm_up(floor)
        log.info("alerts: %d rules, warm-up to seq %d", len(rules), floor)

    def _use_prices(self, book: PriceBook) -> None:
        self.engine.prices = book

    async def watch_prices(self, stop: asyncio.Event) -> None:
        """Apply changes of the KV price overrides as they happen, until ``stop``."""
        await self.prices.watch(self.js, stop)

    async def _load_rules(self) -> list[Rule]:
        rules = []
        for key, (value, revision) in (await bus.read_bucket(self._rules_kv)).items():
            self._rule_revs[key] = revision
            rule = self._decode_rule(key, value)
            if rule is not None:
                rules.append(rule)
        return rules

    async def _load_states(self) -> list[AlertState]:
        return [_state_decoder.decode(value)
                for key, (value, _) in (await bus.read_bucket(self._state_kv)).items()
                if not key.startswith(("sent.", "lease."))]

    async def _ensure_consumers(self) -> int:
        """Create the two durables on first start (from the end of the stream, never from its
        beginning: history does not page anyone). Returns the evaluation consumer's ack floor."""
        last = (await self.js.stream_info(names.EVENTS_STREAM)).state.last_seq
        specs = [
            (names.ALERTS_EVAL_DURABLE, INPUT_SUBJECTS, js_api.AckPolicy.ALL, self.batch * 8,
             30.0),
            (names.ALERTS_NOTIFY_DURABLE, ALERT_SUBJECTS, js_api.AckPolicy.EXPLICIT, 256,
             NOTIFY_ACK_WAIT_S),
        ]
        floor = 0
        for durable, subjects, ack, pending, ack_wait in specs:
            try:
                info = await self.js.consumer_info(names.EVENTS_STREAM, durable)
            except NotFoundError:
                info = await self.js.add_consumer(
                    names.EVENTS_STREAM,
                    js_api.ConsumerConfig(
                        durable_name=durable,
                        deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
                        opt_start_seq=last + 1,
                        ack_policy=ack,
                        ack_wait=ack_wait,
                        max_ack_pending=pending,
                        filter_subjects=subjects,
                    ),
                )
            else:
                config = info.config
                had = config.filter_subjects or [config.filter_subject or ""]
                if sorted(had) != sorted(subjects) or config.ack_wait != ack_wait:
                    # created by an older version (before quota facts, with a 30 s ack wait
                    # for notifications): widen its filter, shorten its wait
                    config.filter_subject = None
                    config.filter_subjects = subjects
                    config.ack_wait = ack_wait
                    info = await self.js.add_consumer(names.EVENTS_STREAM, config)
                    log.info("alerts: consumer %s now filters %s, ack wait %.0f s", durable,
                             subjects, ack_wait)
            if durable == names.ALERTS_EVAL_DURABLE:
                acked = info.ack_floor.stream_seq if info.ack_floor else 0
                floor = max(acked, (info.config.opt_start_seq or 1) - 1)
        return floor

    async def _eval_floor(self) -> int:
        info = await self.js.consumer_info(names.EVENTS_STREAM, names.ALERTS_EVAL_DURABLE)
        return info.ack_floor.stream_seq if info.ack_floor else 0

    async def _reposition_eval(self, start_seq: int) -> None:
        """The evaluation consumer again, delivering from ``start_seq`` (its config kept)."""
        info = await self.js.consumer_info(names.EVENTS_STREAM, names.ALERTS_EVAL_DURABLE)
        config = info.config
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(names.EVENTS_STREAM, names.ALERTS_EVAL_DURABLE)
        config.deliver_policy = js_api.DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = start_seq
        config.opt_start_time = None
        await self.js.add_consumer(names.EVENTS_STREAM, config)

    async def _warm_up(self, floor: int) -> None:
        """Feed the recent stream up to ``floor`` into the windows without evaluating."""
        if floor <= 0:
            return
        span = max([r.span for r in self.engine.rules.values()] + [60.0])
        start = datetime.fromtimestamp(self.clock() - span, UTC)
        await self._replay(
            js_api.ConsumerConfig(
                deliver_policy=js_api.DeliverPolicy.BY_START_TIME,
                opt_start_time=start,
                filter_subjects=["llm.response.>"],
            ),
            floor,
        )
        await self._replay(  # circuits: the latest transition of each, however old
            js_api.ConsumerConfig(
                deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
                filter_subjects=["provider.circuit.>"],
            ),
            floor,
        )
        await self._replay(  # quota: the latest level of each user, however old
            js_api.ConsumerConfig(
                deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
                filter_subjects=["user.*.quota"],
            ),
            floor,
        )

    async def _replay(self, config: js_api.ConsumerConfig, floor: int) -> None:
        config.ack_policy = js_api.AckPolicy.NONE
        config.inactive_threshold = 30.0
        config.mem_storage = True
        sub = await self.js.pull_subscribe("", stream=names.EVENTS_STREAM, config=config)
        try:
            while True:
                try:
                    msgs = await sub.fetch(256, timeout=0.5)
                except TimeoutError:  # nats raises both its own and the builtin one
                    return
                for msg in msgs:
                    if msg.metadata.sequence.stream > floor:
                        return
                    event = _decode(msg)
                    if event is not None:
                        self.engine.observe(event, evaluate=False)
                if msgs[-1].metadata.num_pending == 0:
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
                await self.js.delete_consumer(names.EVENTS_STREAM, sub._consumer)

    # -- evaluation -------------------------------------------------------------------------

    async def evaluate_loop(self, stop: asyncio.Event) -> None:
        # the shared batch puller: the server streams the next batch while this one is judged
        def open_puller() -> Awaitable[BatchPuller]:
            return BatchPuller(self.nc, names.EVENTS_STREAM, names.ALERTS_EVAL_DURABLE,
                               batch=self.batch, expires=self.tick_s).start()

        puller = await open_puller()
        last_tick = 0.0
        engine = self.engine
        # the consumer sequence of the last delivery judged (None: not known for a durable
        # bound again after a restart; 0: a consumer just created)
        cseq: int | None = None
        try:
            while True:
                draining = stop.is_set()
                try:
                    # on stop: what is still in flight is judged too (never acked unseen)
                    msgs = await (puller.drain() if draining else puller.fetch())
                except ConsumerGoneError as exc:  # deleted under us: put it back, go on
                    log.warning("alerts: evaluation consumer gone (%s); re-creating it", exc)
                    await puller.close()
                    await self._ensure_consumers()
                    puller = await open_puller()
                    continue
                caught_up = True
                taken, cseq = before_gap(msgs, cseq)
                if taken:
                    judged = msgs[:taken]
                    async with self._lock:
                        for msg in judged:
                            event = _decode(msg)
                            if event is not None:
                                found = engine.observe(event)
                                if found:
                                    await self._emit(found)
                        await self._persist()
                    await judged[-1].ack()  # AckPolicy.ALL: acks the whole batch
                    caught_up = judged[-1].metadata.num_pending == 0
                if taken < len(msgs):
                    # a delivery lost in transit: acking what follows would ack it for good
                    # (AckPolicy ALL); read again from after the last fact judged
                    resume = (parse_reply(msgs[taken - 1].reply)[0] + 1 if taken
                              else await self._eval_floor() + 1)
                    log.warning("alerts: a delivery of %s was lost in transit; reading again "
                                "from seq %d", names.ALERTS_EVAL_DURABLE, resume)
                    await puller.close()
                    await self._reposition_eval(resume)
                    puller = await open_puller()
                    cseq = 0  # a new consumer counts its deliveries from 1
                    continue
                if draining:
                    break
                if stop.is_set():
                    continue  # one more round, to drain
                # tick only when caught up: a backlog replayed after downtime must not be
                # judged against the wall clock (it would look like silence, then traffic)
                now = self.clock()
                if caught_up and now - last_tick >= self.tick_s:
                    last_tick = now
                    async with self._lock:
                        await self._emit(engine.tick(now))
        finally:
            await puller.close()

    async def rules_loop(self) -> None:
        """Apply rule changes from KV as they happen."""
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is None or (entry.revision or 0) <= self._rule_revs.get(entry.key, 0):
                continue  # the marker, or a value read at start
            async with self._lock:
                now = self.clock()
                if entry.operation in (KV_DEL, KV_PURGE):
                    rule = self.engine.rules.get(entry.key)
                    if rule is not None:
                        self._retired[entry.key] = rule
                    await self._emit(self.engine.remove_rule(entry.key, now))
                    continue
                rule = self._decode_rule(entry.key, entry.value or b"")
                if rule is not None:
                    self._retired.pop(rule.name, None)
                    await self._emit(self.engine.put_rule(rule, now))
                    log.info("alerts: rule %s updated", rule.name)

    def _decode_rule(self, key: str, data: bytes) -> Rule | None:
        try:
            rule = _rule_decoder.decode(data)
        except msgspec.DecodeError as exc:
            log.warning("alerts: rule %s ignored: %s", key, exc)
            return None
        if rule.name != key:
            log.warning("alerts: rule key %s holds rule %s; using the key", key, rule.name)
            rule = msgspec.structs.replace(rule, name=key)
        return rule

    async def _emit(self, transitions: list[Transition]) -> None:
        """Publish facts, then persist the states they moved (ids are deterministic, so a crash
        between the two republishes the same ids and JetStream drops the duplicates)."""
        for event in transitions:
            await self._publish(event)
            log.info("alerts: %s", event.message)
        await self._persist()

    async def _publish(self, event: AlertFired | AlertResolved | AlertNotificationFailed) -> None:
        await self.js.publish(
            alert_subject(event), encode_event(event), headers={"Nats-Msg-Id": event.id}
        )

    async def _persist(self) -> None:
        engine = self.engine
        while engine.dirty:
            name = engine.dirty.pop()
            state = engine.states.get(name)
            if state is not None:
                await self._state_kv.put(name, _encoder.encode(state))
            else:
                with contextlib.suppress(KeyNotFoundError, NotFoundError):
                    await self._state_kv.delete(name)

    # -- notification -----------------------------------------------------------------------

    async def notify_loop(self, stop: asyncio.Event) -> None:
        sub = await self.js.pull_subscribe_bind(names.ALERTS_NOTIFY_DURABLE,
                                                stream=names.EVENTS_STREAM)
        while not stop.is_set():
            try:
                msgs = await sub.fetch(32, timeout=self.tick_s)
            except TimeoutError:  # nats raises both its own and the builtin one
                continue
            for msg in msgs:
                await self._slots.acquire()
                task = asyncio.create_task(self._notify(msg))
                self._deliveries.add(task)
                task.add_done_callback(self._delivery_done)

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        self._deliveries.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("alerts: delivery task failed", exc_info=task.exception())

    async def _notify(self, msg: Msg) -> None:
        event = _decode(msg)
        if not isinstance(event, AlertFired | AlertResolved):
            await msg.ack()
            return
        rule = self.engine.rules.get(event.rule) or self._retired.get(event.rule)
        if rule is None or not rule.channels:
            await msg.ack()
            return
        note = notification_of(event, rule)
        marker = f"sent.{event.id}"
        sent: set[str] = set()
        if msg.metadata.num_delivered > 1:
            with contextlib.suppress(KeyNotFoundError):
                sent = set(msgspec.json.decode((await self._state_kv.get(marker)).value or b"[]"))
        keepalive = asyncio.create_task(_keep_in_progress(msg))
        try:
            todo = [ch for ch in rule.channels if ch.label not in sent]
            results = await asyncio.gather(*(self.notifier.deliver(ch, note) for ch in todo))
            for channel, result in zip(todo, results, strict=True):
                if result.ok:
                    sent.add(channel.label)
                    continue
                log.warning("alerts: %s -> %s failed: %s", event.id, channel.label, result.error)
                fid = hashlib.blake2b(f"{event.id}\x00{channel.label}".encode(), digest_size=12)
                await self._publish(
                    AlertNotificationFailed(
                        id=fid.hexdigest(),
                        ts=self.clock(),
                        rule=event.rule,
                        channel=channel.label,
                        alert_id=event.id,
                        attempts=result.attempts,
                        error=result.error,
                    )
                )
            if len(rule.channels) > 1 or sent:
                await self._state_kv.put(marker, _encoder.encode(sorted(sent)))
        finally:
            keepalive.cancel()
        await msg.ack()
        with contextlib.suppress(Exception):
            await self._state_kv.purge(marker)

    # -- shutdown ---------------------------------------------------------------------------

    async def shutdown(self, grace_s: float = 10.0) -> None:
        if self._deliveries:
            await asyncio.wait(set(self._deliveries), timeout=grace_s)
        for task in set(self._deliveries):
            task.cancel()  # unacked: redelivered after a restart
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]
        await self.notifier.aclose()


# A notification taken by a worker that then died (kill -9, a lost host) is delivered again
# by the server after this long: the new active worker sends it then. Short, because nothing
# else brings it back sooner; the living holder keeps its long deliveries (webhook retries)
# in progress every NOTIFY_ACK_WAIT_S / 3.
NOTIFY_ACK_WAIT_S = 10.0


async def _keep_in_progress(msg: Msg, every: float = NOTIFY_ACK_WAIT_S / 3) -> None:
    """Webhook retries may outlast the consumer's ack wait: tell the server we are on it."""
    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(Exception):
            await msg.in_progress()


def _decode(msg: Msg) -> Event | None:
    try:
        return decode_event(msg.data)
    except msgspec.DecodeError:  # an event type this worker does not know yet
        return None


async def run(
    nats_url: str,
    home: Path,
    stop: asyncio.Event,
    *,
    tick_s: float = 1.0,
    notifier: Notifier | None = None,
) -> None:
    """Run the alerts worker until ``stop`` is set. Its state lives in NATS (KV cs_rules,
    cs_alert_state); ``home`` only holds the user's price overrides (``prices.toml``)."""
    nc = await bus.connect(nats_url, name="alerts")
    try:
        await bus.wait_ready(nc)
        await bus.ensure_all(nc.jetstream())
        # several alerts workers (a cluster): one works, the others stand by (runtime/lease.py)
        lease = Lease(await nc.jetstream().key_value(names.ALERT_STATE_BUCKET), LEASE_KEY)
        while not stop.is_set():
            if not await lease.acquire(stop):
                break
            term = asyncio.Event()  # this worker's term: until stop, or the lease is lost
            relay = asyncio.create_task(_first_of(stop, lease.lost, then=term))
            try:
                await _serve(nc, term, home, tick_s=tick_s, notifier=notifier)
            except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError,
                    NoStreamResponseError) as exc:
                # JetStream without a leader for a moment (a cluster's election): hand the
                # lease over and stand by again rather than leave no worker at all
                log.warning("alerts: NATS not answering (%s: %s); standing by again",
                            type(exc).__name__, exc)
                await asyncio.sleep(1.0)
            finally:
                relay.cancel()
                await lease.release()
    finally:
        # flush (the last acks), then close: drain() would wait on the pull subscriptions
        with contextlib.suppress(Exception):
            await nc.flush(timeout=5)
        await nc.close()


LEASE_KEY = "lease.alerts"  # in KV cs_alert_state: which alerts worker is the active one


async def _first_of(*events: asyncio.Event, then: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        then.set()
    finally:
        for w in waits:
            w.cancel()


async def _serve(nc: NATS, stop: asyncio.Event, home: Path, *, tick_s: float,
                 notifier: Notifier | None) -> None:
    """One term of the active worker: start up (restore, warm up), then the loops."""
    service = AlertsService(nc, tick_s=tick_s, notifier=notifier, home=home)
    await service.startup()
    # not one of the loops below: a worker that cannot watch the prices keeps running
    prices = asyncio.create_task(service.watch_prices(stop), name="alerts-prices")
    tasks = [
        asyncio.create_task(service.evaluate_loop(stop), name="alerts-evaluate"),
        asyncio.create_task(service.notify_loop(stop), name="alerts-notify"),
        asyncio.create_task(service.rules_loop(), name="alerts-rules"),
    ]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    stop.set()  # a crashed loop stops the worker (the supervisor restarts it)
    await asyncio.gather(*tasks[:2], return_exceptions=True)
    tasks[2].cancel()
    prices.cancel()
    await asyncio.gather(prices, return_exceptions=True)
    await service.shutdown()
    for task in done:
        if task is not stopper and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
