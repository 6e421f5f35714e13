"""Budgets end to end: real nats-server, two edges and two routers, the quota worker, fake
providers. A token budget admits requests until it is spent, then every edge refuses in the
client's dialect (403 budget_exhausted, 400 for Codex); a key's budget and its user's both
apply; a day boundary in the configured zone resets the spend (an injected clock: no
sleeping); a replay of the event log gives the same spend; the soft threshold is one fact per
period and fires an alert rule; ``codeswitch quota show``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import msgspec
import pytest

from codeswitch import admin as cs_admin
from codeswitch import users as u
from codeswitch.audit import AdminLog
from runtime import bus, names
from runtime.natsd import EmbeddedNats
from schemas.config import GatewaySettings
from schemas.events import AlertFired, QuotaUsed
from schemas.quota import Spend
from tests.e2e.conftest import provider_for
from tests.e2e.gateway import EdgeThread, RouterThread, _LoopThread, events, run_nats
from tests.fakes.upstream import FakeUpstream
from tests.users.conftest import ledger as ledger  # a fixture
from tests.users.test_cli import Cli
from tests.users.test_edge import DIALECTS, call, error_kind, headers, request
from workers.alerts.rules import Channel, Rule
from workers.quota.service import QuotaService, hold_lease

ZONE = "America/New_York"


class Clock:
    """The edges' clock: the wall clock moved by ``offset`` seconds (ahead only: the routers
    compare the pickup deadline with their own wall clock)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class QuotaThread:
    """The quota worker on its own event loop, as the `workers` process runs it."""

    def __init__(self, url: str, home: Path, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.stop_event = asyncio.Event()
        self.service = QuotaService(url, home, **kwargs)
        self.thread = threading.Thread(target=self.loop.run_until_complete,
                                       args=(self._main(),), daemon=True)
        self.ready = threading.Event()
        self.thread.start()
        assert self.ready.wait(20), "quota worker did not start"

    async def _main(self) -> None:
        self.stop_event = asyncio.Event()
        leader = None
        try:
            await self.service.startup()
            leader = asyncio.create_task(hold_lease(self.service, self.stop_event))
            self.ready.set()
            await self.service.main_loop(self.stop_event)
        finally:
            if leader is not None:
                await leader
            await self.service.shutdown()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(20)


class World:
    def __init__(self, url: str, tmp: Path) -> None:
        self.url = url
        self.tmp = tmp
        self.clock = Clock()
        self.fakes = {d: FakeUpstream(d).start() for d in DIALECTS}
        run_nats(url, lambda nc: cs_admin.put_settings(nc, GatewaySettings(timezone=ZONE)))
        self.quota = QuotaThread(url, tmp / "workers")
        self.routers = [RouterThread(url), RouterThread(url)]
        self.edges = [EdgeThread(url, GatewaySettings(), clock=self.clock),
                      EdgeThread(url, GatewaySettings(), clock=self.clock)]
        for fake in self.fakes.values():
            run_nats(url, lambda nc, f=fake: cs_admin.put_provider(nc, provider_for(f)))
        deadline = time.monotonic() + 5
        while not all(len(r.router.table.providers) == 4 for r in self.routers):
            assert time.monotonic() < deadline
            time.sleep(0.01)

    def admin(self, fn: Any) -> Any:
        return run_nats(self.url, lambda nc: fn(nc, AdminLog(nc)))

    def until(self, ok: Callable[[], bool], what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            assert time.monotonic() < deadline, what
            time.sleep(0.005)

    def edge_spend(self, scope: str, ident: str) -> list[Spend | None]:
        return [(e.app.spend.users if scope == "user" else e.app.spend.keys).get(ident)
                for e in self.edges]

    def day_tokens(self, scope: str, ident: str, edge: int = 0) -> int:
        rec = self.edge_spend(scope, ident)[edge]
        day = rec.day if rec else None
        return day.tokens if day else 0

    def wait_tokens(self, scope: str, ident: str, at_least: int) -> None:
        self.until(lambda: all(self.day_tokens(scope, ident, i) >= at_least
                               for i in range(len(self.edges))),
                   f"edges did not see {scope} {ident} spend {at_least}")

    def wait_directory(self, ok: Callable[[Any], bool]) -> None:
        self.until(lambda: all(ok(e.app.directory) for e in self.edges),
                   "edges did not see the user change")

    def stop(self) -> None:
        for e in self.edges:
            e.stop()
        for r in self.routers:
            r.stop()
        self.quota.stop()
        for f in self.fakes.values():
            f.stop()


@pytest.fixture
def world(nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[World]:
    w = World(nats_server.url, tmp_path)
    try:
        yield w
    finally:
        w.stop()


def kv_spend(url: str) -> dict[str, Spend]:
    async def read(nc: Any) -> dict[str, Spend]:
        kv = await nc.jetstream().key_value(names.QUOTA_BUCKET)
        return {k: msgspec.json.decode(v, type=Spend)
                for k, (v, _) in (await bus.read_bucket(kv)).items()
                if k.startswith(("user.", "key."))}  # not the lease

    return run_nats(url, read)


WANT_403 = {"anthropic": "permission_error", "openai-chat": "permission_denied/budget_exhausted",
            "openai-responses": "permission_denied/budget_exhausted",
            "gemini": "PERMISSION_DENIED"}


def test_token_budget_admits_until_spent_then_every_edge_refuses(world: World) -> None:
    edges = [e.url for e in world.edges]
    for n, dialect in enumerate(DIALECTS):
        name = f"user{n}"
        user = world.admin(lambda nc, a, name=name: u.add_user(nc, a, name))
        _, secret = world.admin(lambda nc, a, name=name: u.create_key(nc, a, name,
                                                                       name="laptop"))
        world.wait_directory(lambda d, uid=user.id: uid in d.users and any(
            k.user == uid for k in d.keys.values()))
        first = call(edges[0], dialect, secret)
        assert first.status_code == 200, first.text
        world.wait_tokens("user", user.id, 1)
        per_request = world.day_tokens("user", user.id)
        # 2.5 requests' worth: the third is admitted (2 spent < 2.5), the fourth is not
        budget = f"{int(per_request * 2.5)}tokens/day"
        limits = u.limits_from(budget=budget)
        world.admin(lambda nc, a, name=name, limits=limits: u.update_user(nc, a, name,
                                                                         limits=limits))
        world.wait_directory(lambda d, uid=user.id: d.users[uid].limits.budget is not None)
        for i in (1, 2):
            r = call(edges[i % 2], dialect, secret)
            assert r.status_code == 200, (dialect, i, r.text)
        world.wait_tokens("user", user.id, 3 * per_request)
        served = len(world.fakes[dialect].requests)
        for edge in edges:
            r = call(edge, dialect, secret)
            status, kind, message = error_kind(dialect, r)
            assert (status, kind) == (403, WANT_403[dialect]), (dialect, r.text)
            assert r.headers["x-should-retry"] == "false"
            assert (f"budget exhausted: user {name} has spent {3 * per_request:,} tokens of "
                    f"its {int(per_request * 2.5):,} tokens this day") in message, message
            assert "it resets at " in message and f"({ZONE})" in message, message
            assert secret not in r.text
        assert len(world.fakes[dialect].requests) == served  # nothing reached a provider
    # Codex retries a 403: it gets the same refusal as a 400
    path, body = request("openai-responses")
    r = httpx.post(edges[1] + path, json=body, timeout=30,
                   headers={**headers("openai-responses", secret), "originator": "codex_cli_rs"})
    assert r.status_code == 400 and "budget exhausted" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "budget_exhausted"
    # the refusals are facts with the user and the key, and cost nothing
    def refused_facts() -> list[Any]:  # the edge publishes its facts in the background
        return [e for _, _, e in events(world.url, 1, subject="llm.response")
                if getattr(e, "error_class", None) == "budget_exhausted"]

    world.until(lambda: len(refused_facts()) >= 2 * len(DIALECTS) + 1, "refusal facts")
    refused = refused_facts()
    assert len(refused) == 2 * len(DIALECTS) + 1
    assert all(e.user_id and e.key_id and e.usage is None for e in refused)  # type: ignore[union-attr]


def test_key_budget_and_user_budget_both_apply(world: World) -> None:
    url = world.edges[0].url
    user = world.admin(lambda nc, a: u.add_user(nc, a, "alice"))
    key, small = world.admin(lambda nc, a: u.create_key(nc, a, "alice", name="small"))
    _, big = world.admin(lambda nc, a: u.create_key(nc, a, "alice", name="big"))
    world.wait_directory(lambda d: len([k for k in d.keys.values() if k.user == user.id]) == 2)
    assert call(url, "anthropic", small).status_code == 200
    world.wait_tokens("key", key.id, 1)
    t = world.day_tokens("key", key.id)
    # the key: one request's worth a day; the user: three requests' worth a week
    world.admin(lambda nc, a: u.update_key(nc, a, key.id,
                                           limits=u.limits_from(budget=f"{t}tokens/day")))
    world.admin(lambda nc, a: u.update_user(
        nc, a, "alice", limits=u.limits_from(budget=f"{3 * t}tokens/week")))
    world.wait_directory(lambda d: d.keys[key.id].limits.budget is not None
                         and d.users[user.id].limits.budget is not None)
    r = call(url, "anthropic", small)
    assert r.status_code == 403 and "API key 'small'" in r.json()["error"]["message"]
    assert call(url, "anthropic", big).status_code == 200  # the user's budget is not spent
    assert call(url, "anthropic", big).status_code == 200
    world.wait_tokens("user", user.id, 3 * t)
    # both spent: the user's week resets after the key's day, so the week is named
    msg = call(url, "anthropic", small).json()["error"]["message"]
    assert "user alice has spent" in msg and "this week" in msg, msg
    assert "user alice" in call(url, "anthropic", big).json()["error"]["message"]


def test_day_boundary_in_the_zone_resets_the_spend(world: World) -> None:
    zone = ZoneInfo(ZONE)
    now = dt.datetime.now(zone)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), zone)
    # the edges' clock: 30 s before the next midnight in New York
    world.clock.offset = midnight.timestamp() - 30 - time.time()
    user = world.admin(lambda nc, a: u.add_user(nc, a, "bob"))
    _, secret = world.admin(lambda nc, a: u.create_key(nc, a, "bob"))
    world.wait_directory(lambda d: user.id in d.users and len(d.keys) >= 1)
    url = world.edges[1].url
    assert call(url, "gemini", secret).status_code == 200
    world.wait_tokens("user", user.id, 1)
    t = world.day_tokens("user", user.id)
    world.admin(lambda nc, a: u.update_user(nc, a, "bob",
                                            limits=u.limits_from(budget=f"{t}tokens/day")))
    world.wait_directory(lambda d: d.users[user.id].limits.budget is not None)
    r = call(url, "gemini", secret)
    message = error_kind("gemini", r)[2]
    assert r.status_code == 403
    want = f"it resets at {midnight:%Y-%m-%d} 00:00 {midnight.tzname()} ({ZONE})"
    assert want in message, message
    day = world.edge_spend("user", user.id)[1].day  # type: ignore[union-attr]
    assert day is not None and day.end == midnight.timestamp()
    # one minute later it is the next day there: the edge admits at once (the period ended),
    # and the worker folds the request into the new day
    world.clock.offset += 60
    assert call(url, "gemini", secret).status_code == 200
    world.until(lambda: (world.edge_spend("user", user.id)[0] or Spend(
        scope="user", id="", user="")).day is not None and world.edge_spend(
        "user", user.id)[0].day.start == midnight.timestamp(),  # type: ignore[union-attr]
        "the new day never reached the edge")
    rec = world.edge_spend("user", user.id)[0]
    assert rec is not None and rec.day is not None and rec.day.tokens == t
    assert rec.week is not None and rec.total is not None and rec.total.tokens == 2 * t
    assert call(url, "gemini", secret).status_code == 403  # spent again, in the new day


def test_replay_gives_the_same_spend_and_soft_threshold_alerts(world: World,
                                                              tmp_path: Path) -> None:
    from tests.alerts.conftest import Receiver
    from tests.alerts.test_service import Worker, put_rule

    receiver = Receiver()
    receiver.thread.start()
    alerts = Worker(world.url, tmp_path / "alerts")

    async def start_alerts(nc: Any) -> None:
        await put_rule(nc, Rule(name="quota-soft", metric="quota_used_pct", threshold=50,
                                scope="user:carol", channels=[Channel(url=receiver.url())]))
        await alerts.start(nc)

    lt = _LoopThread("alerts")  # the alerts worker runs while the test waits
    nc = lt.run(bus.connect(world.url, name="alerts-test"))
    try:
        lt.run(start_alerts(nc))
        user = world.admin(lambda nc_, a: u.add_user(nc_, a, "carol"))
        _, secret = world.admin(lambda nc_, a: u.create_key(nc_, a, "carol"))
        world.wait_directory(lambda d: user.id in d.users and any(
            k.user == user.id for k in d.keys.values()))
        edge = world.edges[0].url
        assert call(edge, "openai-chat", secret).status_code == 200
        world.wait_tokens("user", user.id, 1)
        t = world.day_tokens("user", user.id)
        world.admin(lambda nc_, a: u.update_user(nc_, a, "carol", limits=u.limits_from(
            budget=f"{10 * t}tokens/month", soft="50%")))
        world.wait_directory(lambda d: d.users[user.id].limits.soft_pct == 50)
        for i in range(6):  # 7 requests: 70 % of the month's budget
            assert call(world.edges[i % 2].url, "openai-chat", secret).status_code == 200
        world.wait_tokens("user", user.id, 7 * t)
        world.until(lambda: len(receiver.bodies()) >= 1, "the soft alert never fired", 15)
        quota_facts = [e for _, _, e in events(world.url, 1, subject=f"user.{user.id}.quota")]
        assert all(isinstance(e, QuotaUsed) for e in quota_facts)
        crossed = [e for e in quota_facts if isinstance(e, QuotaUsed) and e.crossed]
        assert [(e.crossed, e.used) for e in crossed] == [("soft", 5 * t)]
        assert crossed[0].name == "carol" and crossed[0].limit == 10 * t
        fired = [e for _, _, e in events(world.url, 1, subject="alert.fired.")]
        assert len(fired) == 1 and isinstance(fired[0], AlertFired)
        assert fired[0].rule == "quota-soft" and fired[0].message.endswith("(user carol)")
    finally:
        lt.run(alerts.halt())
        lt.run(nc.close())
        lt.close()
        receiver.server.shutdown()
        receiver.server.server_close()
    # the replay: a worker on a fresh data directory folds the whole event log again
    live = kv_spend(world.url)
    world.quota.stop()
    facts_before = len(events(world.url, 1, subject="user."))
    replay = QuotaThread(world.url, tmp_path / "fresh")
    try:
        fold = replay.service.fold
        assert fold is not None
        last = max(s.seq for s in live.values())
        world.until(lambda: fold.seq >= last, "the replay did not reach the end")
        # the same spend (the live records also list the requests they folded last, for
        # the edges' early counts; a replay lists none)
        assert {k: fold.record(k) for k in fold.scopes} == {
            k: msgspec.structs.replace(v, ids=[]) for k, v in live.items()}
        assert len(live) >= 2
        assert len(events(world.url, 1, subject="user.")) == facts_before  # nothing again
    finally:
        replay.stop()
    world.quota = QuotaThread(world.url, tmp_path / "workers")  # for the fixture's stop


def test_quota_show(world: World, tmp_path: Path) -> None:
    dave = world.admin(lambda nc, a: u.add_user(nc, a, "dave", limits=u.limits_from(
        budget="1000000tokens/week")))
    key, secret = world.admin(lambda nc, a: u.create_key(
        nc, a, "dave", name="ci", limits=u.limits_from(budget="5usd/total")))
    world.admin(lambda nc, a: u.add_user(nc, a, "erin"))
    world.wait_directory(lambda d: key.id in d.keys)
    assert call(world.edges[0].url, "anthropic", secret).status_code == 200
    world.wait_tokens("key", key.id, 1)
    t = world.day_tokens("key", key.id)
    cs = Cli(world.url, tmp_path / "cli-home", tmp_path)
    rows = cs.json("quota", "show", "--json")
    by = {(r["user"], r["key"]): r for r in rows}
    assert set(by) == {("dave", None), ("dave", "ci"), ("erin", None)}
    week = by[("dave", None)]
    zone = ZoneInfo(ZONE)
    monday = dt.datetime.now(zone).date() - dt.timedelta(days=dt.datetime.now(zone).weekday())
    next_monday = dt.datetime.combine(monday + dt.timedelta(days=7), dt.time(), zone)
    assert (week["budget"], week["spent"], week["limit"], week["period"], week["unit"]) == (
        "1000000tokens/week", t, 1_000_000, "week", "tokens")
    assert week["resets_at"] == next_monday.timestamp() and week["zone"] == ZONE
    assert week["resets_at_local"] == next_monday.isoformat()
    ci = by[("dave", "ci")]
    assert (ci["period"], ci["resets_at"], ci["unit"]) == ("total", None, "usd")
    assert ci["spent"] > 0 and ci["spend"]["day"]["tokens"] == t  # the fake model is priced
    assert by[("erin", None)]["budget"] is None
    only = cs.json("quota", "show", "--user", "erin", "--json")
    assert [r["user"] for r in only] == ["erin"]
    text = cs("quota", "show").stdout
    assert "1000000tokens/week" in text and f"{next_monday:%Y-%m-%d} 00:00" in text
    assert "never" in text and "dave" in text and "erin" in text
    bad = cs("quota", "show", "--user", "nobody", ok=False)
    assert bad.exit_code == 1 and "no user named 'nobody'" in bad.output
    assert json.dumps(rows).count(secret) == 0 and dave.id


def test_two_quota_workers_one_writes_and_the_other_takes_over(world: World,
                                                               tmp_path: Path) -> None:
    """A cluster runs a `workers` process per node: each quota worker has its own consumer and
    folds every fact; the lease holder alone writes KV and publishes, so a crossing is one
    fact; when it stops, the other takes over and the edges keep seeing the spend."""
    second = QuotaThread(world.url, tmp_path / "second")
    try:
        world.until(lambda: world.quota.service.active, "the first worker never led")
        assert not second.service.active
        user = world.admin(lambda nc, a: u.add_user(nc, a, "frank"))
        _, secret = world.admin(lambda nc, a: u.create_key(nc, a, "frank"))
        world.wait_directory(lambda d: any(k.user == user.id for k in d.keys.values()))
        assert call(world.edges[0].url, "anthropic", secret).status_code == 200
        world.wait_tokens("user", user.id, 1)
        t = world.day_tokens("user", user.id)
        world.admin(lambda nc, a: u.update_user(
            nc, a, "frank", limits=u.limits_from(budget=f"{4 * t}tokens/day", soft="50%")))
        world.wait_directory(lambda d: d.users[user.id].limits.soft_pct == 50)
        assert call(world.edges[1].url, "anthropic", secret).status_code == 200
        world.wait_tokens("user", user.id, 2 * t)
        fold = second.service.fold
        assert fold is not None
        world.until(lambda: fold.record(f"user.{user.id}").day is not None
                    and fold.record(f"user.{user.id}").day.tokens == 2 * t,  # type: ignore[union-attr]
                    "the standby did not fold")
        world.quota.stop()  # a clean stop hands the lease over at once
        world.until(lambda: second.service.active, "the standby never took over", 15)
        assert call(world.edges[0].url, "anthropic", secret).status_code == 200
        world.wait_tokens("user", user.id, 3 * t)
        crossed = [e for _, _, e in events(world.url, 1, subject=f"user.{user.id}.quota")
                   if isinstance(e, QuotaUsed) and e.crossed]
        assert [e.crossed for e in crossed] == ["soft"]  # once, not once per worker
    finally:
        second.stop()
        world.quota = QuotaThread(world.url, tmp_path / "workers")  # for the fixture's stop


def test_a_deleted_session_still_counts_live_and_in_a_replay(
        world: World, ledger: tuple[str, Path], tmp_path: Path) -> None:
    """The ledger deletes a session for real (its facts erased from the event log) and
    publishes the tombstone with its bill: the spend does not move, and a worker folding the
    event log again (where only the bill is left) gets the same spend."""
    from tests.ledger.conftest import ask
    from tests.users.conftest import caught_up

    user = world.admin(lambda nc, a: u.add_user(nc, a, "gina"))
    _, secret = world.admin(lambda nc, a: u.create_key(nc, a, "gina"))
    world.wait_directory(lambda d: any(k.user == user.id for k in d.keys.values()))
    path, body = request("anthropic")
    for n in range(3):
        session = "sess-gone" if n < 2 else "sess-kept"
        r = httpx.post(world.edges[n % 2].url + path, json=body, timeout=30, headers={
            **headers("anthropic", secret), "x-codeswitch-session": session})
        assert r.status_code == 200, r.text
    fold = world.quota.service.fold
    assert fold is not None
    world.until(lambda: len([c for c in fold.recent.values() if c.user == user.id]) == 3,
                "the worker did not fold the three requests")
    t = next(c.tokens for c in fold.recent.values() if c.user == user.id)
    world.wait_tokens("user", user.id, 3 * t)
    before = kv_spend(world.url)[f"user.{user.id}"]
    asyncio.run(caught_up(world.url))

    async def delete(nc: Any) -> Any:
        return await ask(nc, "session_delete", {"session": "sess-gone", "force": True},
                         timeout=60)

    run_nats(world.url, delete)
    async def tombstones(nc: Any) -> int:  # the log has gaps now (the erased facts)
        js = nc.jetstream()
        info = await js.stream_info(names.EVENTS_STREAM)
        found = 0
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(names.EVENTS_STREAM, seq)
            except Exception:
                continue
            found += msg.subject == "session.deleted"
        return found

    assert run_nats(world.url, tombstones) == 1
    world.until(lambda: fold.seq >= max(s.seq for s in kv_spend(world.url).values())
                and not any(c.session for c in fold.recent.values()
                            if c.user == user.id and c.session and c.session != _h("sess-kept")),
                "the worker never folded the tombstone")
    live = {k: v for k, v in kv_spend(world.url).items() if k.endswith(user.id)}
    after = fold.record(f"user.{user.id}")
    assert (after.day, after.total) == (before.day, before.total)
    # the replay: the session's facts are gone from the log, only the bill is left
    world.quota.stop()
    replay = QuotaThread(world.url, tmp_path / "fresh")
    try:
        rfold = replay.service.fold
        assert rfold is not None
        world.until(lambda: rfold.seq >= fold.seq, "the replay did not reach the end")
        again = rfold.record(f"user.{user.id}")
        assert (again.day, again.total) == (before.day, before.total)
        assert again.day is not None and again.day.tokens == 3 * t
        # what it folded: the kept session's request, and the deleted one's bill
        assert [c.session for c in rfold.recent.values() if c.user == user.id] == [
            _h("sess-kept")]
        assert live  # the KV record the edges read
    finally:
        replay.stop()
    world.quota = QuotaThread(world.url, tmp_path / "workers")


def _h(session: str) -> bytes:
    import hashlib

    return hashlib.sha256(session.encode()).digest()


def test_every_edge_counts_a_request_at_once_and_the_record_replaces_the_count(
        world: World, tmp_path: Path) -> None:
    """Early counts: with the quota worker stopped, each edge still counts every request's
    spend from its fact, so the budget is refused on both edges; when the worker is back its
    records (listing those requests) replace the early counts: the spend is counted once."""
    from schemas.users import Budget

    edges = [e.url for e in world.edges]
    user = world.admin(lambda nc, a: u.add_user(nc, a, "erin"))
    _, secret = world.admin(lambda nc, a: u.create_key(nc, a, "erin"))
    world.wait_directory(lambda d: user.id in d.users and any(
        k.user == user.id for k in d.keys.values()))
    assert call(edges[0], "anthropic", secret).status_code == 200
    world.wait_tokens("user", user.id, 1)
    t = world.day_tokens("user", user.id)
    budget = Budget(amount=int(t * 2.5), unit="tokens", period="day")
    world.admin(lambda nc, a: u.update_user(nc, a, "erin", limits=u.limits_from(
        budget=f"{int(t * 2.5)}tokens/day")))
    world.wait_directory(lambda d: d.users[user.id].limits.budget is not None)
    world.quota.stop()  # no records from here on: only the edges' own counts

    def spent(edge: int) -> float:
        view = world.edges[edge].app.spend
        return view.spent(view.users.get(user.id), view.early_users.get(user.id), budget,
                          time.time())[0]

    assert call(edges[0], "anthropic", secret).status_code == 200
    world.until(lambda: all(spent(i) == 2 * t for i in range(2)), "early counts (2)")
    assert call(edges[1], "anthropic", secret).status_code == 200  # 2t < 2.5t
    world.until(lambda: all(spent(i) == 3 * t for i in range(2)), "early counts (3)")
    assert all(world.day_tokens("user", user.id, i) == t for i in range(2))  # no record
    for edge in edges:  # refused on both edges with the worker away
        r = call(edge, "anthropic", secret)
        assert r.status_code == 403, r.text
        assert f"user erin has spent {3 * t:,} tokens" in r.json()["error"]["message"]
    world.quota = QuotaThread(world.url, tmp_path / "workers")  # back: it folds the two
    world.wait_tokens("user", user.id, 3 * t)
    world.until(lambda: all(user.id not in e.app.spend.early_users for e in world.edges),
                "the records did not replace the early counts")
    assert all(spent(i) == 3 * t for i in range(2))  # once, not 5t
    assert kv_spend(world.url)[f"user.{user.id}"].day.tokens == 3 * t  # type: ignore[union-attr]
