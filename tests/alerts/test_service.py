"""The worker against a real NATS and a real webhook receiver: fire once, stay silent,
resolve once; rules changed in KV without a restart; failed deliveries recorded without
blocking evaluation; a restart in the middle of a firing alert sends nothing twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api as js_api

from runtime import names
from runtime.natsd import EmbeddedNats
from schemas.events import (
    AlertFired,
    AlertResolved,
    CircuitChanged,
    Event,
    QuotaUsed,
    RequestCompleted,
    Usage,
    decode_event,
    encode_event,
)
from schemas.prices import PRICES_KV_KEY
from schemas.subjects import quota_subject, response_subject
from workers.alerts import service
from workers.alerts.notify import Notifier
from workers.alerts.rules import Channel, Rule

from .conftest import Receiver, load_events


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


class Worker:
    """The alerts worker as a task, as `codeswitch worker alerts` runs it."""

    def __init__(self, url: str, home: Path) -> None:
        self.url, self.home = url, home
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self, nc: NATS) -> None:
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(service.run(
            self.url, self.home, self.stop, tick_s=0.2, notifier=Notifier(backoff_base=0.05)))
        js = nc.jetstream()

        async def ready() -> bool:
            try:
                await js.consumer_info(names.EVENTS_STREAM, names.ALERTS_NOTIFY_DURABLE)
                return True
            except Exception:
                return False

        async def pulling() -> bool:  # warm-up done: the main loop waits for events
            info = await js.consumer_info(names.EVENTS_STREAM, names.ALERTS_EVAL_DURABLE)
            return bool(info.num_waiting)

        deadline = time.monotonic() + 10
        while not await ready() or not await pulling():
            assert time.monotonic() < deadline and not self.task.done()
            await asyncio.sleep(0.05)

    async def halt(self) -> None:
        assert self.task is not None
        self.stop.set()
        await asyncio.wait_for(self.task, 15)


async def publish(nc: NATS, events: list[Event]) -> None:
    js = nc.jetstream()
    for ev in events:
        if isinstance(ev, RequestCompleted):
            subject = response_subject(ev.dialect, ev.provider)
        elif isinstance(ev, CircuitChanged):
            subject = f"provider.circuit.{ev.provider}.{ev.state}"
        elif isinstance(ev, QuotaUsed):
            subject = quota_subject(ev.user)
        else:
            raise AssertionError(ev)
        await js.publish(subject, encode_event(ev), headers={"Nats-Msg-Id": ev.id})


async def put_rule(nc: NATS, rule: Rule) -> None:
    kv = await nc.jetstream().key_value(names.RULES_BUCKET)
    await kv.put(rule.name, msgspec.json.encode(rule))


async def alert_facts(nc: NATS) -> list[Msg]:
    msgs: list[Msg] = []

    async def collect(msg: Msg) -> None:
        msgs.append(msg)

    await nc.subscribe("alert.>", cb=collect)
    return msgs


def restart_sequence() -> dict[str, list[Event]]:
    events = load_events("alerts_restart.jsonl", shift=time.time())
    phases: dict[str, list[Event]] = {}
    for ev in events:
        phases.setdefault(ev.id.split("-")[0], []).append(ev)
    return phases


def error_rule(receiver: Receiver, path: str = "/hook", **kw: object) -> Rule:
    base: dict[str, object] = {
        "name": "main-errors", "metric": "error_rate", "threshold": 50.0,
        "scope": "provider:main", "window_s": 60.0, "min_samples": 3, "cooldown_s": 3600.0,
        "channels": [Channel(url=receiver.url(path), retries=3)],
    }
    base.update(kw)
    return msgspec.convert(base, Rule)


async def test_fires_once_then_resolves_once(
    nats_server: EmbeddedNats, nc: NATS, receiver: Receiver, tmp_path: Path
) -> None:
    facts = await alert_facts(nc)
    await put_rule(nc, error_rule(receiver))
    worker = Worker(nats_server.url, tmp_path)
    await worker.start(nc)
    phases = restart_sequence()
    await publish(nc, phases["burst"] + phases["still"])
    await until(lambda: len(receiver.bodies()) == 1)
    await asyncio.sleep(0.6)  # several ticks while still firing: nothing more
    assert len(receiver.bodies()) == 1
    fired = receiver.bodies()[0]
    assert (fired["kind"], fired["rule"], fired["value"]) == ("fired", "main-errors", 100.0)
    await publish(nc, phases["recover"])
    await until(lambda: len(receiver.bodies()) == 2)
    resolved = receiver.bodies()[1]
    assert resolved["kind"] == "resolved" and resolved["fired_id"] == fired["alert_id"]
    await worker.halt()
    assert [m.subject for m in facts] == ["alert.fired.main-errors", "alert.resolved.main-errors"]
    assert [m.headers["Nats-Msg-Id"] for m in facts] == [fired["alert_id"], resolved["alert_id"]]
    assert decode_event(facts[0].data).id == fired["alert_id"]


async def test_restart_in_the_middle_of_a_firing_alert_sends_nothing_twice(
    nats_server: EmbeddedNats, nc: NATS, receiver: Receiver, tmp_path: Path
) -> None:
    facts = await alert_facts(nc)
    await put_rule(nc, error_rule(receiver))
    phases = restart_sequence()
    worker = Worker(nats_server.url, tmp_path)
    await worker.start(nc)
    await publish(nc, phases["burst"])
    await until(lambda: len(receiver.bodies()) == 1)
    await worker.halt()

    await publish(nc, phases["still"])  # more errors while the worker is down
    worker = Worker(nats_server.url, tmp_path)
    await worker.start(nc)
    await asyncio.sleep(1.0)  # it has caught up and ticked several times
    assert len(receiver.bodies()) == 1
    await worker.halt()  # and once more, while still firing
    await worker.start(nc)
    await asyncio.sleep(0.5)
    assert len(receiver.bodies()) == 1

    await publish(nc, phases["recover"])
    await until(lambda: len(receiver.bodies()) == 2)
    await asyncio.sleep(0.5)
    await worker.halt()
    kinds = [b["kind"] for b in receiver.bodies()]
    assert kinds == ["fired", "resolved"]
    assert receiver.bodies()[1]["fired_id"] == receiver.bodies()[0]["alert_id"]
    assert [m.subject.split(".")[1] for m in facts] == ["fired", "resolved"]


async def test_rule_changes_apply_without_restart(
    nats_server: EmbeddedNats, nc: NATS, receiver: Receiver, tmp_path: Path
) -> None:
    facts = await alert_facts(nc)
    worker = Worker(nats_server.url, tmp_path)
    await worker.start(nc)
    phases = restart_sequence()
    await publish(nc, phases["burst"])
    await asyncio.sleep(0.3)
    assert receiver.bodies() == []
    await put_rule(nc, error_rule(receiver))  # the window it sees includes the past burst
    await until(lambda: len(receiver.bodies()) == 1)
    await put_rule(nc, error_rule(receiver, threshold=100.0))  # 100% is not > 100%
    await until(lambda: len(receiver.bodies()) == 2)
    assert [b["kind"] for b in receiver.bodies()] == ["fired", "resolved"]
    await put_rule(nc, error_rule(receiver, threshold=10.0, cooldown_s=0.0))
    await until(lambda: len(receiver.bodies()) == 3)
    kv = await nc.jetstream().key_value(names.RULES_BUCKET)
    await kv.delete("main-errors")  # removing a firing rule resolves it, to its channels
    await until(lambda: len(receiver.bodies()) == 4)
    assert receiver.bodies()[3]["message"] == "rule removed"
    await worker.halt()
    assert len(facts) == 4


async def test_failed_delivery_is_a_fact_and_never_blocks_evaluation(
    nats_server: EmbeddedNats, nc: NATS, receiver: Receiver, tmp_path: Path
) -> None:
    facts = await alert_facts(nc)
    receiver.status["/down"] = 500
    receiver.delay["/slow"] = 1.5
    rule = error_rule(receiver, channels=[
        Channel(url=receiver.url("/down"), retries=1, name="down"),
        Channel(url=receiver.url("/slow"), timeout_s=5, name="slow"),
    ])
    await put_rule(nc, rule)
    worker = Worker(nats_server.url, tmp_path)
    await worker.start(nc)
    phases = restart_sequence()
    await publish(nc, phases["burst"])
    await until(lambda: len(facts) == 1)
    started = time.monotonic()
    await publish(nc, phases["recover"])
    await until(lambda: any(m.subject.startswith("alert.resolved") for m in facts))
    assert time.monotonic() - started < 1.2  # resolved while the slow webhook still hangs
    await until(lambda: len(receiver.bodies("/slow")) == 2, timeout=15)
    await until(lambda: sum(m.subject.startswith("alert.delivery_failed") for m in facts) == 2)
    await worker.halt()
    failed = [decode_event(m.data) for m in facts if "delivery_failed" in m.subject]
    assert {(f.channel, f.attempts, f.error) for f in failed} == {("down", 2, "HTTP 500")}
    assert {f.alert_id for f in failed} == {decode_event(m.data).id for m in facts[:2]}
    assert len(receiver.bodies("/down")) == 4  # 2 attempts x (fired, resolved)


async def test_circuit_open_through_the_worker(
    nats_server: EmbeddedNats, nc: NATS, receiver: Receiver, tmp_path: Path
) -> None:
    await put_rule(nc, Rule(name="cb", metric="circuit_open", scope="provider:backup",
                            channels=[Channel(url=receiver.url(), format="slack")]))
    worker = Worker(nats_server.url, tmp_path)
    await worker.start(nc)
    now = time.time()
    await publish(nc, [CircuitChanged(id="c1", ts=now, provider="backup", state="open",
                                      previous="closed", failures=5)])
    await until(lambda: len(receiver.bodies()) == 1)
    await publish(nc, [CircuitChanged(id="c2", ts=now + 0.1, provider="backup",
                                      state="closed", previous="half_open")])
    await until(lambda: len(receiver.bodies()) == 2)
    await worker.halt()
    texts = [b["text"] for b in receiver.bodies()]
    assert texts[0].startswith("[FIRING] cb (warning)") and texts[1].startswith("[RESOLVED] cb")


async def test_quota_used_pct_through_the_worker_and_across_a_restart(
    nats_server: EmbeddedNats, nc: NATS, receiver: Receiver, tmp_path: Path
) -> None:
    """QuotaUsed facts on user.<user>.quota fire and resolve a rule; after a restart the level
    of each user is rebuilt from the log (and a consumer made by an older version, without the
    quota subject in its filter, is widened)."""
    js = nc.jetstream()
    await js.add_consumer(names.EVENTS_STREAM, js_api.ConsumerConfig(  # as an old version made it
        durable_name=names.ALERTS_EVAL_DURABLE, ack_policy=js_api.AckPolicy.ALL,
        deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=1,
        filter_subjects=["llm.response.>", "provider.circuit.>"]))
    facts = await alert_facts(nc)
    await put_rule(nc, Rule(name="quota", metric="quota_used_pct", threshold=80,
                            channels=[Channel(url=receiver.url())]))
    worker = Worker(nats_server.url, tmp_path)
    await worker.start(nc)
    info = await js.consumer_info(names.EVENTS_STREAM, names.ALERTS_EVAL_DURABLE)
    assert sorted(info.config.filter_subjects or []) == sorted(service.INPUT_SUBJECTS)
    now = time.time()

    def q(n: int, user: str, used: float) -> QuotaUsed:
        return QuotaUsed(id=f"q{n}", ts=now + n / 10, user=user, used=used, limit=20.0)

    await publish(nc, [q(1, "alice", 10.0)])  # 50%
    bob = q(2, "bob", 17.0)  # 85%
    last = (await js.publish(quota_subject("bob"), encode_event(bob),
                             headers={"Nats-Msg-Id": bob.id})).seq
    await until(lambda: len(receiver.bodies()) == 1)
    # everything acked before the restart: bob's 85% can only come back through the replay
    # of the latest level per user, not through a redelivery
    deadline = time.monotonic() + 10
    while (await js.consumer_info(names.EVENTS_STREAM, names.ALERTS_EVAL_DURABLE)).ack_floor \
            .stream_seq < last:
        assert time.monotonic() < deadline, "the worker never acked the quota facts"
        await asyncio.sleep(0.05)
    await worker.halt()
    await worker.start(nc)  # restart while firing
    await publish(nc, [q(3, "alice", 12.0)])  # 60%: bob's 85% (from before) still holds it
    await asyncio.sleep(0.6)
    assert len(facts) == 1 and len(receiver.bodies()) == 1
    await publish(nc, [q(4, "bob", 2.0)])  # 10%: now the max is alice's 60%
    await until(lambda: len(receiver.bodies()) == 2)
    await worker.halt()
    fired, resolved = (decode_event(m.data) for m in facts)
    assert isinstance(fired, AlertFired) and isinstance(resolved, AlertResolved)
    assert [m.subject for m in facts] == ["alert.fired.quota", "alert.resolved.quota"]
    assert (fired.metric, fired.value, fired.threshold) == ("quota_used_pct", 85.0, 80.0)
    assert fired.message.endswith("(user bob)")
    assert (resolved.fired_id, resolved.value) == (fired.id, 60.0)
    assert [b["kind"] for b in receiver.bodies()] == ["fired", "resolved"]


async def test_cost_uses_the_users_price_overrides_from_the_file_and_kv(
    nats_server: EmbeddedNats, nc: NATS, receiver: Receiver, tmp_path: Path
) -> None:
    """The cost metric prices with the ledger's book and the user's overrides: prices.toml in
    the data directory on start, then the KV document ledger.prices as soon as it changes."""
    (tmp_path / "prices.toml").write_text('[models."my-finetune"]\ninput = 2.0\noutput = 8.0\n')
    facts = await alert_facts(nc)
    for name, model in (("finetune", "my-finetune"), ("inhouse", "inhouse-1")):
        await put_rule(nc, Rule(name=name, metric="cost", threshold=0.0, scope=f"model:{model}",
                                window_s=600, channels=[Channel(url=receiver.url())]))
    worker = Worker(nats_server.url, tmp_path)
    await worker.start(nc)
    now = time.time()
    big = Usage(input_tokens=100_000, output_tokens=50_000)

    def request(n: int, model: str) -> RequestCompleted:
        return RequestCompleted(id=f"p{n}", ts=now + n / 100, request_id=f"r{n}",
                                dialect="openai_chat", model=model, provider="corp",
                                status=200, duration_ms=10.0, usage=big)

    await publish(nc, [request(0, "my-finetune")])  # unknown to the built-in table
    await until(lambda: len(facts) == 1)
    fired = decode_event(facts[0].data)
    assert isinstance(fired, AlertFired) and fired.rule == "finetune"
    assert fired.value == pytest.approx(100_000 * 2.0 / 1e6 + 50_000 * 8.0 / 1e6)

    await publish(nc, [request(1, "inhouse-1")])  # no price anywhere yet: costs 0
    await asyncio.sleep(0.6)
    assert len(facts) == 1
    kv = await nc.jetstream().key_value(names.SETTINGS_BUCKET)
    await kv.put(PRICES_KV_KEY, b'{"models": {"inhouse-1": {"input": 1.0, "output": 1.0}}}')
    n = 2
    while len(facts) == 1:  # requests until one is priced with the new document
        assert n < 200, "the KV price overrides were never applied"
        await publish(nc, [request(n, "inhouse-1")])
        n += 1
        await asyncio.sleep(0.05)
    await worker.halt()
    inhouse = decode_event(facts[1].data)
    assert isinstance(inhouse, AlertFired) and inhouse.rule == "inhouse"
    # fired on the first request priced with it; the earlier ones had cost 0
    assert inhouse.value == pytest.approx(150_000 * 1.0 / 1e6)


async def test_a_delivery_lost_in_transit_is_judged_all_the_same(
    nats_server: EmbeddedNats, nc: NATS, receiver: Receiver, tmp_path: Path
) -> None:
    """A delivery the worker never receives (lost while NATS reconnects, or with a cluster
    node) must not be acked by the acks of what follows (AckPolicy ALL): the worker sees the
    gap in the consumer's sequence and reads again from after the last fact it judged. Here
    the delivery is taken by another subscriber that never acks it; the rule fires only when
    every request's tokens are counted (20 x 10 >= 200)."""
    rule = msgspec.convert({
        "name": "all-tokens", "metric": "tokens", "threshold": 200.0, "comparison": ">=",
        "window_s": 600.0, "cooldown_s": 3600.0,
        "channels": [{"url": receiver.url("/hook"), "retries": 1}]}, Rule)
    await put_rule(nc, rule)
    worker = Worker(nats_server.url, tmp_path)
    await worker.start(nc)
    js = nc.jetstream()
    thief = await js.pull_subscribe_bind(names.ALERTS_EVAL_DURABLE, names.EVENTS_STREAM)
    now = time.time()
    events = [RequestCompleted(
        id=f"tok-{i:02d}", ts=now, request_id=f"tok-{i:02d}", dialect="anthropic",
        operation="generate", model="m", provider="main", stream=False, status=200,
        received_at=now, usage=Usage(input_tokens=5, output_tokens=5)) for i in range(20)]
    stolen: list[Msg] = []
    await publish(nc, events[:3])  # taken by the worker
    sent = 3
    try:
        for _ in range(5):
            # the thief's pull request waits behind the worker's; when that one expires
            # (tick_s, 0.2 s) the thief's is first in line for the next message
            theft = asyncio.ensure_future(thief.fetch(1, timeout=3))
            await asyncio.sleep(0.5)
            await publish(nc, events[sent:sent + 1])
            sent += 1
            try:
                stolen = await theft
            except Exception:
                stolen = []
            if stolen:
                break
        assert stolen, "the thief got no delivery"
        await publish(nc, events[sent:])
        await until(lambda: len(receiver.bodies()) == 1, timeout=15)
        fired = receiver.bodies()[0]
        assert (fired["kind"], fired["rule"], fired["value"]) == ("fired", "all-tokens", 200.0)
    finally:
        await thief.unsubscribe()
        await worker.halt()
