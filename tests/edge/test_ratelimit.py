"""The rate-limit core (edge/ratelimit.py), pure: windows, RPM/TPM with estimates settled by
the real usage, the stricter of user and key, concurrency with other edges' counts and the
forgetting of a dead edge, notes folded (edge/ratelimit_bus.py without NATS), the models
list cut to a key's allow-list."""

from __future__ import annotations

import asyncio
import json
import re
import time

import msgspec
import pytest

from edge.auth import Directory, Principal
from edge.model_list import allowed_models
from edge.ratelimit import SPAN_S, InFlight, Limiter, RateLimited, RateTable, Window
from edge.ratelimit_bus import RateLimits, _Done, _note_dec
from schemas.errors import GatewayError
from schemas.events import Usage
from schemas.ratelimit import RateNote
from schemas.users import Key, Limits, User

T0 = 1_700_000_000.0


def test_window_counts_the_last_minute_and_says_when_it_admits() -> None:
    w = Window()
    w.add(int(T0), 3)
    w.add(int(T0) + 10, 2)
    assert w.count(T0 + 10) == 5
    assert w.count(T0 + 59.9) == 5
    assert w.count(T0 + 60) == 2  # the first second left the window
    assert w.count(T0 + 70) == 0
    w.add(int(T0) + 100, 1)
    w.add(int(T0) + 130, 1)
    # at 130.5: falls to 1 when second 100 leaves (at 160), to 0 at 190
    assert w.wait(T0 + 130.5, 1) == pytest.approx(29.5)
    assert w.wait(T0 + 130.5, 0) == pytest.approx(59.5)
    assert w.wait(T0 + 130.5, 2) == 0.0
    assert not w.add(int(T0) + 60, 5)  # before the window: not counted
    assert w.add(int(T0) + 120, -1) and w.count(T0 + 130) == 1  # a settled estimate
    assert w.count(T0 + 1000) == 0


def _limits(**kw: int) -> Limits:
    return Limits(**kw)  # type: ignore[arg-type]


def test_rpm_refuses_at_the_limit_with_retry_after_and_admits_after() -> None:
    lim = Limiter()
    key = ("k_1", "API key 'laptop'", _limits(rpm=5))
    for i in range(5):
        lim.admit(f"r{i}", None, key, 100, T0 + i)
    with pytest.raises(RateLimited) as err:
        lim.admit("r5", None, key, 100, T0 + 10.2)
    e = err.value
    assert isinstance(e, GatewayError) and e.status == 429
    assert e.retry_after == "50" and e.retry_after_s == 50  # the first leaves at T0+60
    assert "API key 'laptop' allows 5 requests per minute" in e.message
    assert e.code == "rate_limit_exceeded" and e.key_id == "k_1"
    assert (b"retry-after", b"50") in e.http_headers()
    assert lim.rates.requests_in("k:k_1", T0 + 11) == 5  # the refusal was not counted
    lim.admit("r6", None, key, 100, T0 + 60.0)  # the first left: admitted again


def test_stricter_of_user_and_key_wins() -> None:
    lim = Limiter()
    user = ("u_1", "user alice", _limits(rpm=3))
    loose = ("k_1", "API key 'a'", _limits(rpm=100))
    other = ("k_2", "API key 'b'", Limits())
    lim.admit("r0", user, loose, 10, T0)
    lim.admit("r1", user, other, 10, T0)
    lim.admit("r2", user, loose, 10, T0)
    with pytest.raises(RateLimited, match="user alice allows 3 requests per minute"):
        lim.admit("r3", user, other, 10, T0 + 1)
    # the key's own limit when it is the stricter
    lim2 = Limiter()
    for i in range(2):
        lim2.admit(f"r{i}", ("u_1", "user alice", _limits(rpm=10)),
                   ("k_1", "API key 'a'", _limits(rpm=2)), 10, T0)
    with pytest.raises(RateLimited, match="API key 'a' allows 2"):
        lim2.admit("r2", ("u_1", "user alice", _limits(rpm=10)),
                   ("k_1", "API key 'a'", _limits(rpm=2)), 10, T0)


def test_tpm_estimate_then_real_usage() -> None:
    lim = Limiter()
    key = ("k_1", "API key 'a'", _limits(tpm=1000))
    lim.admit("r0", None, key, 2000, T0)  # ~500 tokens estimated
    assert lim.rates.tokens_in("k:k_1", T0) == 500
    lim.rates.settle("r0", 300, ("k:k_1",), T0 + 2)  # it used 300
    assert lim.rates.tokens_in("k:k_1", T0 + 2) == 300
    lim.admit("r1", None, key, 2800, T0 + 3)  # 700: 1000 exactly
    with pytest.raises(RateLimited, match="1000 tokens per minute") as err:
        lim.admit("r2", None, key, 40, T0 + 4)
    assert err.value.retry_after_s == 56  # r0's 300 leave at T0+60: 700+10 <= 1000
    lim.rates.settle("r1", 100, ("k:k_1",), T0 + 5)  # far less than estimated
    lim.admit("r2", None, key, 40, T0 + 5)
    # an estimate alone above the limit passes on an empty window, never on a used one
    lim2 = Limiter()
    lim2.admit("big", None, key, 8000, T0)
    with pytest.raises(RateLimited):
        lim2.admit("big2", None, key, 8000, T0 + 1)


def test_usage_of_a_request_admitted_long_ago_counts_now() -> None:
    rates = RateTable()
    rates.record("r0", 100, ("k:a",), T0)
    rates.settle("r0", 400, ("k:a",), T0 + SPAN_S + 5)  # a 65 s request
    assert rates.tokens_in("k:a", T0 + SPAN_S + 5) == 400
    rates.settle("unknown", 50, ("k:a",), T0 + SPAN_S + 5)  # admitted before this edge began
    assert rates.tokens_in("k:a", T0 + SPAN_S + 5) == 450


def test_concurrency_counts_other_edges_and_forgets_a_dead_one() -> None:
    lim = Limiter()
    key = ("k_1", "API key 'a'", _limits(concurrency=2))
    a = lim.admit("r0", None, key, 10, T0)
    lim.inflight.apply("edge-b", {"k:k_1": 1}, T0)  # another edge holds one
    with pytest.raises(RateLimited, match="2 requests in flight") as err:
        lim.admit("r1", None, key, 10, T0)
    assert err.value.code == "concurrency_limit_exceeded" and err.value.retry_after == "1"
    assert lim.inflight.take_changes() == {"k:k_1": 1}
    lim.release(a)
    assert lim.inflight.take_changes() == {"k:k_1": 0}
    b = lim.admit("r2", None, key, 10, T0)
    with pytest.raises(RateLimited):
        lim.admit("r3", None, key, 10, T0)
    # edge-b dies: its count is forgotten once it has been silent long enough
    assert lim.inflight.expire(T0 + 1) == []
    assert lim.inflight.expire(T0 + 3.5) == ["edge-b"]
    lim.admit("r4", None, key, 10, T0 + 3.5)
    lim.release(b)
    assert lim.inflight.total("k:k_1") == 1


def test_inflight_absolute_counts_heal() -> None:
    f = InFlight()
    f.apply("b", {"s": 2}, T0)
    f.apply("b", {"s": 2}, T0)  # repeated: no double count
    f.apply("c", {"s": 1, "t": 1}, T0)
    assert (f.total("s"), f.total("t")) == (3, 1)
    f.apply("c", {"t": 0}, T0, full=True)  # c's full list: s is gone too
    assert (f.total("s"), f.total("t")) == (2, 0)
    f.forget("b")
    assert f.total("s") == 0


def _directory(key_limits: Limits, user_limits: Limits = Limits(),
               models: list[str] | None = None) -> Directory:
    enc = msgspec.json.Encoder()
    d = Directory()
    d.apply_user("u_1", enc.encode(User(id="u_1", name="alice", limits=user_limits)))
    d.apply_key("k_1", enc.encode(Key(id="k_1", name="laptop", user="u_1", hash="a" * 64,
                                      prefix="cs-Abcd", limits=key_limits,
                                      models=models or [])))
    return d


def test_notes_from_another_edge_count_and_facts_settle_tokens() -> None:
    d = _directory(_limits(rpm=3, tpm=1000))
    here = RateLimits(d)
    here.edge_id = "a"
    p = Principal("a" * 64, "u_1", "k_1")
    now = time.time()
    # no NATS: decided here at once
    assert asyncio.run(here.admit(p, "r0", 400)) is not None
    # edge b admitted two: this edge counts them at its own clock
    here.fold(RateNote(e="b", a=[("r1", 100, ["k:k_1"]), ("r2", 100, ["k:k_1"])]), now)
    with pytest.raises(RateLimited, match="3 requests per minute"):
        asyncio.run(here.admit(p, "r3", 400))
    assert here.core.rates.tokens_in("k:k_1", now) == 300
    here.settle(_Done(request_id="r1", user_id="u_1", key_id="k_1",
                      usage=Usage(input_tokens=500, output_tokens=100)), now)
    assert here.core.rates.tokens_in("k:k_1", now) == 800
    # a request without limits costs nothing: no admission
    free = RateLimits(_directory(Limits()))
    assert asyncio.run(free.admit(p, "x", 10)) is None
    assert asyncio.run(RateLimits(Directory()).admit(Principal(None), "x", 10)) is None


def test_every_edge_decides_the_same_in_the_order_of_the_notes() -> None:
    """Edges a and b each admitted one request at the same instant with one room left: the
    first in the notes' order is counted, the second is not, on both edges alike."""
    edges = {}
    for name in ("a", "b"):
        edges[name] = RateLimits(_directory(_limits(rpm=3)))
        edges[name].edge_id = name
    p = Principal("a" * 64, "u_1", "k_1")
    now = time.time()
    for e in edges.values():  # two requests counted already everywhere
        e.fold(RateNote(e="c", a=[("r0", 10, ["k:k_1"]), ("r1", 10, ["k:k_1"])]), now)
    results: dict[str, object] = {}

    async def both() -> None:
        loop = asyncio.get_running_loop()
        for e in edges.values():
            e.nc = _Connected()  # type: ignore[assignment]
        tasks = {n: loop.create_task(e.admit(p, f"from-{n}", 40)) for n, e in edges.items()}
        await asyncio.sleep(0)  # both passed the check (2 < 3) and wait for their notes
        assert all(not t.done() for t in tasks.values())
        notes = [RateNote(e=n, a=[(r, est, list(s)) for r, est, s in e.core.outbox])
                 for n, e in edges.items()]
        for e in edges.values():
            for note in notes:  # the server's order: a's note, then b's
                e.fold(note, now)
        for n, t in tasks.items():
            try:
                results[n] = await t
            except RateLimited as exc:
                results[n] = exc

    asyncio.run(both())
    assert not isinstance(results["a"], RateLimited)
    assert isinstance(results["b"], RateLimited)
    assert "no room left" in results["b"].message or "3 requests" in results["b"].message
    for e in edges.values():
        assert e.core.rates.requests_in("k:k_1", now) == 3


class _Connected:
    is_connected = True


def test_models_list_cut_to_the_allow_list() -> None:
    allow = re.compile(r"(?:claude-.*)\Z").match
    openai = json.dumps({"object": "list", "data": [{"id": "gpt-5"}, {"id": "claude-x"}]})
    assert [m["id"] for m in json.loads(allowed_models(openai.encode(), allow))["data"]] \
        == ["claude-x"]
    anthropic = json.dumps({"data": [{"id": "claude-a"}, {"id": "gpt-5"}, {"id": "claude-b"}],
                            "has_more": False, "first_id": "claude-a", "last_id": "claude-b"})
    doc = json.loads(allowed_models(anthropic.encode(), allow))
    assert [m["id"] for m in doc["data"]] == ["claude-a", "claude-b"]
    assert (doc["first_id"], doc["last_id"]) == ("claude-a", "claude-b")
    gemini = json.dumps({"models": [{"name": "models/gemini-2.5-pro"},
                                    {"name": "models/claude-y"}]})
    assert json.loads(allowed_models(gemini.encode(), allow))["models"] == [
        {"name": "models/claude-y"}]
    assert allowed_models(b"not json", allow) == b"not json"


def test_a_note_that_never_comes_back_is_decided_here() -> None:
    """NATS took the note but it did not come back in time (a reconnect): after
    ECHO_TIMEOUT_S the edge decides alone; when the note turns up later it is not counted
    again, nor counted at all when the decision was a refusal."""
    from edge.ratelimit_bus import ECHO_TIMEOUT_S

    sent: list[bytes] = []

    class _Lost:
        is_connected = True

        async def publish(self, subject: str, data: bytes) -> None:
            sent.append(data)

    lim = RateLimits(_directory(_limits(rpm=2)))
    lim.edge_id = "a"
    p = Principal("a" * 64, "u_1", "k_1")

    def counted() -> int:
        return lim.core.rates.requests_in("k:k_1", time.time())

    async def main() -> None:
        lim.nc = _Lost()  # type: ignore[assignment]
        sender = asyncio.get_running_loop().create_task(lim._sender())
        t0 = time.monotonic()
        assert await lim.admit(p, "r0", 40) is not None  # decided alone: admitted
        assert ECHO_TIMEOUT_S <= time.monotonic() - t0 < ECHO_TIMEOUT_S + 1
        assert counted() == 1
        lim.fold(_note_dec.decode(sent[-1]), time.time())  # the note turns up: once only
        assert counted() == 1
        waiting = asyncio.get_running_loop().create_task(lim.admit(p, "r1", 40))
        await asyncio.sleep(0.05)  # r1 passed the check (1 < 2) and waits for its note
        lim.fold(RateNote(e="b", a=[("rb", 10, ["k:k_1"])]), time.time())  # b took the room
        with pytest.raises(RateLimited):
            await waiting  # decided alone after the timeout: no room
        assert counted() == 2
        lim.fold(_note_dec.decode(sent[-1]), time.time())  # r1's note turns up: not counted
        assert counted() == 2
        assert lim.core.inflight.local == {}
        sender.cancel()

    asyncio.run(main())


def test_ample_room_is_counted_at_once_and_by_every_edge_then_the_notes_decide() -> None:
    """rpm 160: a request is counted at once (no wait for its note) while the window has room
    for it plus max(16, rpm/8) = 20 more; every edge counts such admissions unconditionally
    (``n``). Past that the request waits for its note (``a``), and small limits always do."""
    edges = {}
    for name in ("a", "b"):
        edges[name] = RateLimits(_directory(_limits(rpm=160)))
        edges[name].edge_id = name
        edges[name].nc = _Connected()  # type: ignore[assignment]
    p = Principal("a" * 64, "u_1", "k_1")
    a, b = edges["a"], edges["b"]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for i in range(140):  # with 139 counted, the 140th leaves room for 20: ample
            adm = await a.admit(p, f"r{i}", 40)
            assert adm is not None and adm.decided
        assert a.core.rates.requests_in("k:k_1", time.time()) == 140
        assert [r for r, _, _ in a.core.counted_out] == [f"r{i}" for i in range(140)]
        assert a.core.outbox == []
        late = loop.create_task(a.admit(p, "r140", 40))  # would leave 19: waits
        await asyncio.sleep(0)
        assert not late.done() and [r for r, _, _ in a.core.outbox] == ["r140"]
        note = _note_dec.decode(msgspec.json.encode(RateNote(
            e="a", a=a.core.outbox, n=a.core.counted_out)))
        for e in edges.values():  # b counts all of them, a counts the one it waited for
            e.fold(note, time.time())
        adm = await late
        assert adm is not None
        for e in edges.values():
            assert e.core.rates.requests_in("k:k_1", time.time()) == 141
        b.fold(note, time.time())  # a note seen twice: nothing counted twice
        assert b.core.rates.requests_in("k:k_1", time.time()) == 141

    asyncio.run(run())
    small = RateLimits(_directory(_limits(rpm=100)))  # 100 - 1 - 16 = 83 ample, then waits
    small.nc = _Connected()  # type: ignore[assignment]
    never = RateLimits(_directory(_limits(rpm=5)))
    never.nc = _Connected()  # type: ignore[assignment]

    async def first() -> None:
        t = asyncio.get_running_loop().create_task(never.admit(p, "x", 10))
        await asyncio.sleep(0)
        assert not t.done() and never.core.counted_out == []  # rpm 5: the notes decide
        t.cancel()
        adm = await small.admit(p, "y", 10)
        assert adm is not None and adm.decided

    asyncio.run(first())
