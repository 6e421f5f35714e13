"""Several devices (issue 13, phase 2): a hub and two gateways joined to it, three nats-server
processes. A's session is listed on B; a provider added on B serves A's next request with
A's own key (env: resolves on each device); with the hub stopped both keep serving and
recording, and when it is back both catch up with every request once; a session deleted on A
is erased on B."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.sync import read_state
from tests.fakes.upstream import FakeUpstream
from tests.sync.harness import Device, Hub


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, Device, Device,
                                                                      FakeUpstream]]:
    tmp = tmp_path_factory.mktemp("sync")
    fake = FakeUpstream("anthropic").start()
    hub = Hub(tmp / "hub")
    a = Device("A", tmp / "A", hub.join_url, {"SYNC_FAKE_KEY": "sk-key-of-device-A"})
    b = Device("B", tmp / "B", hub.join_url, {"SYNC_FAKE_KEY": "sk-key-of-device-B"})
    try:
        # A joins a hub that does not answer yet: it starts anyway and says so
        a.start()
        assert "does not answer: serving and recording here" in a.out.read_text()
        hub.start()
        # once the hub answers, A shares its settings through it (restarting its parts)
        until(lambda: "restarting the parts on the shared settings" in a.out.read_text(), 30,
              "A's retry of the join")
        time.sleep(1.0)
        a.wait_ready()
        b.start()
        yield hub, a, b, fake
    finally:
        for part in (a, b, hub):
            part.stop()
        fake.stop()


def until(cond: object, timeout: float, what: str) -> float:
    """Seconds until ``cond()`` is true; fails after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_sync_across_devices(world: tuple[Hub, Device, Device, FakeUpstream],
                             tmp_path: Path) -> None:
    hub, a, b, fake = world
    sent = 0
    # a provider added on B (an env: key) serves A's next request, with A's own key
    b.cli("provider", "add", "fake", "--dialect", "anthropic", "--base-url", fake.base_url,
          "--api-key", "env:SYNC_FAKE_KEY")
    t_add = time.monotonic()
    def first_ok() -> bool:
        nonlocal sent
        r = a.send("warmup-" + uuid.uuid4().hex)
        sent += r.status_code == 200
        return r.status_code == 200

    until(first_ok, 10, "B's provider used by A")
    add_lag = time.monotonic() - t_add
    assert fake.requests[-1].api_key == "sk-key-of-device-A"
    assert "fake" in a.cli("provider", "list").stdout
    # each device made its own secret.key: B is told that A's literal keys are not for it
    until(lambda: read_state(b.home).get("key_warning"), 10, "B's secret key warning")
    assert "secret key" in b.cli("sync").stdout

    # A's session listed on B within 2 s; with the body log on, its conversation too
    a.cli("body-log", "on")
    s1 = "sess-a-" + uuid.uuid4().hex
    words = f"first words of A {uuid.uuid4().hex}"
    r = a.send(s1, words)
    assert r.status_code == 200, r.text
    sent += 1
    lag = until(lambda: s1 in b.sessions(), 10, "A's session on B")
    assert lag < 2.0, f"A's session took {lag:.2f} s to be listed on B"
    listed = b.cli("sessions", "list", "--json").stdout
    assert s1 in listed
    until(lambda: words in b.cli("sessions", "show", s1).stdout, 20, "A's bodies on B")

    # hub away: both serve and record; back: both catch up, each request once on each side
    hub.stop()
    s2, s3 = "sess-a2-" + uuid.uuid4().hex, "sess-b3-" + uuid.uuid4().hex
    for _ in range(3):
        assert a.send(s2).status_code == 200
        assert b.send(s3).status_code == 200
        sent += 2
    until(lambda: s2 in a.sessions() and s3 in b.sessions(), 10, "local recording")
    refused = b.cli("provider", "remove", "fake", check=False)  # shared: needs the hub
    assert refused.returncode == 2 and "the hub does not answer" in refused.stderr, refused
    assert s2 not in b.sessions() and s3 not in a.sessions()
    hub.start()
    catch_up = until(lambda: s3 in a.sessions() and s2 in b.sessions(), 30, "catch up")
    time.sleep(1.0)  # anything doubled would have arrived by now
    for dev in (a, b):
        counts = Counter(dev.request_ids())
        doubled = {rid: n for rid, n in counts.items() if n > 1}
        assert not doubled, f"{dev.name}: requests recorded twice: {doubled}"
    assert Counter(a.request_ids()) == Counter(b.request_ids())
    for s in (s1, s2, s3):
        assert a.ask("session", {"session": s})["requests"] == \
            b.ask("session", {"session": s})["requests"]
    # requests never cross: each ran once, on its own device
    # (the model list `provider add` checks the provider with is not a request)
    assert len([q for q in fake.requests if q.method == "POST"]) == sent
    # each device's `online` lists both gateways (presence on the hub)
    # (the hub keeps heartbeats in memory: after its restart, each part's next beat, <= 5 s)
    def both_online() -> bool:
        online = json.loads(a.cli("online", "--json").stdout)
        return {"A", "B"} <= {g["device"] for g in online["gateways"]}

    until(both_online, 15, "both gateways in A's `online`")

    # a session deleted on A is erased on B (its ledger, its copy of the event log and of
    # A's bodies) and on the hub
    def clean(store: Path) -> bool:
        return not any(p.is_file() and (s1.encode() in (data := p.read_bytes())
                                        or words.encode() in data) for p in store.rglob("*"))

    stores = (a.home / "nats" / "jetstream", b.home / "nats" / "jetstream",
              hub.home / "hub" / "jetstream")
    for store in stores:  # the checks below can fail: it is there now
        assert not clean(store), f"nothing of {s1} in {store} before the delete"
    a.cli("sessions", "delete", s1, "--force", "--yes")
    gone = until(lambda: s1 not in b.sessions(), 15, "the delete on B")

    for store in stores:
        until(lambda: clean(store), 10, f"the delete in {store}")  # noqa: B023

    # a hub with another event history: a clear message, no sync, nothing lost
    hub.stop()
    shutil.rmtree(hub.home / "hub" / "jetstream")
    hub.start()
    until(lambda: read_state(a.home).get("diverged"), 20, "A notices the other history")
    assert "not the one this device synced with" in a.cli("sync").stdout
    before = len(a.request_ids())
    assert a.send("after-" + uuid.uuid4().hex).status_code == 200
    until(lambda: len(a.request_ids()) == before + 1, 10, "A records on its own")
    print(f"\nprovider on A {add_lag:.2f} s after B's add; session on B after {lag:.2f} s; "
          f"catch-up {catch_up:.2f} s; delete on B after {gone:.2f} s")
