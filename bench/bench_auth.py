"""The edge's key check, alone: CPU per request of ``edge.auth.authenticate`` (+ the model
allow-list check) with 1,000 users and 10,000 keys, against the same call with no users.

    .venv/bin/python bench/bench_auth.py                 # 1,000 users, 10,000 keys
    .venv/bin/python bench/bench_auth.py --users 10000 --keys 100000 --json out.json

What it runs per request is what ``EdgeApp._llm`` runs: find the key in the headers, sha256
it, look the hash up in the directory (a dict), check the key and its owner, then the model
against the key's globs. Half the keys have a model allow-list (``claude-*``, ``gpt-5*``).
Measured with ``time.process_time`` over N calls (one thread: the CPU the edge's event loop
spends), best and median of R rounds. Refusals (401 unknown key, 403 revoked key) are timed
too: they raise, and the edge renders an error body after them (not included).

``--limits`` (the default) also gives every user and key an RPM, TPM and concurrency limit
and a USD budget a day (high enough never to refuse), a spend record each (KV ``cs_quota``),
and times what they add per request: the request path as ``EdgeApp._llm`` runs it (key,
budget check, model, rate-limit admission; the request's life one event-loop turn, during
which its note goes out and, when near a limit, comes back; the release), at c=1 and c=64,
against the same harness without users; and, apart, what every edge does besides: the note
that tells the other edges (one admission per note: the worst case, a note carries many under
load), another edge's note folded (one request), a request's ``RequestCompleted`` fact (its
tokens settled for TPM, its spend counted early for the budgets), a quota record arriving.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.auth import Directory, authenticate
from edge.quota import SpendView
from edge.ratelimit_bus import RateLimits, _done_dec, _note_dec, _note_enc
from schemas.config import GatewaySettings
from schemas.errors import GatewayError
from schemas.events import RequestCompleted, Usage, encode_event
from schemas.prices import PriceBook
from schemas.quota import PeriodSpend, Spend
from schemas.ratelimit import RateNote
from schemas.users import Budget, Key, Limits, User, hash_secret, new_secret

# limits that never refuse (the bench times the counting, not refusals): RPM, TPM,
# concurrency and a budget (USD a day), on every user and every key
BIG = Limits(rpm=10**9, tpm=10**12, concurrency=10**6,
             budget=Budget(amount=10**9, unit="usd", period="day"))


def build(users: int, keys: int, limits: Limits | None = None
          ) -> tuple[Directory, list[str], str]:
    """A directory as an edge holds it after the KV watch: records applied one by one."""
    enc = msgspec.json.Encoder()
    d = Directory()
    for i in range(users):
        d.apply_user(f"u_{i:06d}", enc.encode(User(id=f"u_{i:06d}", name=f"user{i}",
                                                   limits=limits or Limits())))
    secrets: list[str] = []
    revoked = ""
    for i in range(keys):
        secret = new_secret()
        key = Key(id=f"k_{i:06d}", name=f"key{i}", user=f"u_{i % users:06d}",
                  hash=hash_secret(secret), prefix=secret[:7],
                  models=["claude-*", "gpt-5*"] if i % 2 else [],
                  revoked=time.time() if i == keys - 1 else None, limits=limits or Limits())
        d.apply_key(key.id, enc.encode(key))
        if key.revoked is None:
            secrets.append(secret)
        else:
            revoked = secret
    return d, secrets, revoked


def per_call_us(fn: Callable[[], object], n: int, rounds: int) -> tuple[float, float]:
    results = []
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        results.append((time.process_time() - t0) / n * 1e6)
    return min(results), statistics.median(results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--keys", type=int, default=10000)
    ap.add_argument("-n", type=int, default=200_000, help="calls per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--no-limits", dest="limits", action="store_false",
                    help="users and keys without rate limits (phase 1's numbers)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    directory, secrets, revoked = build(args.users, args.keys, BIG if args.limits else None)
    built = time.perf_counter() - t0
    settings = GatewaySettings()
    empty = Directory()
    model = "claude-sonnet-4-5"
    # rotate over many keys so the lookups are not one hot dict slot
    headers = [{"x-api-key": s, "anthropic-version": "2023-06-01",
                "content-type": "application/json"} for s in secrets[:4096]]
    i = 0

    def with_users() -> None:
        nonlocal i
        i = (i + 1) & 4095
        authenticate(headers[i], "", settings, directory).check_model(model)

    def without_users() -> None:  # today's path: no users, any key (the hash is still taken)
        nonlocal i
        i = (i + 1) & 4095
        authenticate(headers[i], "", settings, empty).check_model(model)

    def refused(secret: str) -> Callable[[], None]:
        h = {"x-api-key": secret}

        def call() -> None:
            try:
                authenticate(h, "", settings, directory)
            except GatewayError:
                pass
        return call

    limits = RateLimits(directory)
    limits.edge_id = "bench"
    seq = 0

    limits._own = _note_enc.encode(RateNote(e="bench"))[:-1]  # as start() sets it

    class _Msg:
        def __init__(self, data: bytes) -> None:
            self.data = data

    def deliver(data: bytes) -> None:  # nats-py's callback, without nats-py
        coro = limits._on_note(_Msg(data))  # type: ignore[arg-type]
        try:
            coro.send(None)
        except StopIteration:
            pass

    class _Echo:  # NATS as the edge sees it: its own note comes back at once
        is_connected = True

        async def publish(self, subject: str, data: bytes) -> None:
            loop.call_soon(deliver, data)

    try:  # the edge runs on uvloop (edge/server.py)
        import uvloop
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    limits.nc = _Echo()  # type: ignore[assignment]
    sender = loop.create_task(limits._sender())

    # the spend of every user and key (KV cs_quota as the edge holds it), this day
    spend = SpendView()
    day0 = time.time() - 3600
    for uid in directory.users:
        spend.apply(f"user.{uid}", msgspec.json.encode(Spend(
            scope="user", id=uid, user=uid, day=PeriodSpend(start=day0, end=day0 + 86400,
                                                            tokens=10**6, nusd=10**9))))
    for kid, k in directory.keys.items():
        spend.apply(f"key.{kid}", msgspec.json.encode(Spend(
            scope="key", id=kid, user=k.user, day=PeriodSpend(start=day0, end=day0 + 86400,
                                                              tokens=10**5, nusd=10**8))))
    bare = RateLimits(empty)  # the edge without users: admit() is None at once

    async def request(n: int, users: bool) -> None:
        """What EdgeApp._llm runs for a request, the body, the relay and the facts aside:
        the key (and without users the same calls, which do nothing); the request's life
        is one turn of the event loop (its note goes out meanwhile)."""
        nonlocal i, seq
        d, lim = (directory, limits) if users else (empty, bare)
        for _ in range(n):
            i = (i + 1) & 4095
            seq += 1
            p = authenticate(headers[i], "", settings, d)
            spend.check(p, d, time.time())
            p.check_model(model)
            admission = await lim.admit(p, f"r{seq}", 2400)
            await asyncio.sleep(0)
            lim.release(admission)

    def request_us(n: int, rounds: int, concurrency: int, users: bool = True
                   ) -> tuple[float, float]:
        """``concurrency`` requests at a time."""
        results = []

        async def run() -> None:
            await asyncio.gather(*(request(n // concurrency, users)
                                   for _ in range(concurrency)))

        for _ in range(rounds):
            t0 = time.process_time()
            loop.run_until_complete(run())
            results.append((time.process_time() - t0) / n * 1e6)
        return min(results), statistics.median(results)

    principals = [authenticate(h, "", settings, directory) for h in headers]
    for n, p in enumerate(principals):  # a window per key and user, as under traffic
        plan = limits._plan(p.key_id or "", directory.keys.get(p.key_id or ""),
                            directory.users.get(p.user_id or ""))[2]
        assert plan is not None
        limits.core.release(limits.core.check(plan, f"warm{n}", 2400, time.time()))

    def note_out() -> None:  # the sender: one admission per note
        nonlocal i, seq
        i = (i + 1) & 4095
        seq += 1
        p = principals[i]
        subjects = (f"k:{p.key_id}", f"u:{p.user_id}")
        _note_enc.encode(RateNote(e="bench", a=[(f"r{seq}", 600, subjects)], c={}))

    notes = [_note_enc.encode(RateNote(e="other", a=[(f"o{n}", 600, (f"k:{p.key_id}",
                                                                      f"u:{p.user_id}"))]))
             for n, p in enumerate(principals)]

    def note_in() -> None:  # another edge's request folded in
        nonlocal i
        i = (i + 1) & 4095
        limits.fold(_note_dec.decode(notes[i]), time.time())

    facts = [encode_event(RequestCompleted(
        id=f"e{n}", ts=time.time(), request_id=f"o{n}", dialect="anthropic",
        operation="messages", model=model, stream=True, status=200, received_at=time.time(),
        duration_ms=900.0, user_id=p.user_id, key_id=p.key_id, provider="anthropic",
        usage=Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=20000)))
        for n, p in enumerate(principals)]

    book = PriceBook()

    def fact_in() -> None:  # a request's fact: its tokens settled, its spend counted early
        nonlocal i
        i = (i + 1) & 4095
        done = _done_dec.decode(facts[i])
        limits.settle(done, time.time())
        spend.observe(done, directory, book)

    records = [msgspec.json.encode(Spend(
        scope="user", id=p.user_id or "", user=p.user_id or "", ids=[f"o{n}"],
        day=PeriodSpend(start=day0, end=day0 + 86400, tokens=10**6, nusd=10**9),
        week=PeriodSpend(start=day0, end=day0 + 7 * 86400, tokens=10**6, nusd=10**9),
        month=PeriodSpend(start=day0, end=day0 + 30 * 86400, tokens=10**6, nusd=10**9),
        total=PeriodSpend(start=0, end=None, tokens=10**6, nusd=10**9)))
        for n, p in enumerate(principals)]

    def record_in() -> None:  # the worker's record of a scope (one of two per request)
        nonlocal i
        i = (i + 1) & 4095
        spend.apply(f"user.{principals[i].user_id}", records[i])

    rows = {
        "no users (today)": per_call_us(without_users, args.n, args.rounds),
        f"{args.users:,} users, {args.keys:,} keys": per_call_us(with_users, args.n,
                                                               args.rounds),
    }
    if args.limits:
        rows.update({
            "+ limits, c=1 (one at a time)": request_us(args.n // 4, args.rounds, 1),
            "+ limits, c=64": request_us(args.n, args.rounds, 64),
            "  same harness, no users, c=1": request_us(args.n // 4, args.rounds, 1, False),
            "  same harness, no users, c=64": request_us(args.n, args.rounds, 64, False),
            "  note out (per request, worst)": per_call_us(note_out, args.n, args.rounds),
            "  note in (another edge's req.)": per_call_us(note_in, args.n, args.rounds),
            "  fact in (TPM, early spend)": per_call_us(fact_in, args.n, args.rounds),
            "  record in (KV cs_quota)": per_call_us(record_in, args.n, args.rounds),
        })
    rows |= {
        "unknown key (401)": per_call_us(refused("cs-not-a-key"), args.n // 4, args.rounds),
        "revoked key (403)": per_call_us(refused(revoked), args.n // 4, args.rounds),
    }
    sender.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    base = rows["no users (today)"][0]
    print(f"python {platform.python_version()} on {platform.machine()}; directory of "
          f"{args.users:,} users and {args.keys:,} keys built in {built:.2f} s; "
          f"{args.n:,} calls x {args.rounds} rounds")
    print(f"{'':32} {'best µs':>9} {'median µs':>10} {'added µs':>9}")
    for name, (best, median) in rows.items():
        # the limits: against the same harness without users; parts: their own
        against = {"+ limits, c=1 (one at a time)": "  same harness, no users, c=1",
                   "+ limits, c=64": "  same harness, no users, c=64"}.get(name)
        ref = rows[against][0] if against else base
        added = "" if name.startswith("  ") else f"{best - ref:9.2f}"
        print(f"{name:32} {best:9.2f} {median:10.2f} {added:>9}")
    if args.json:
        args.json.write_text(json.dumps({
            "users": args.users, "keys": args.keys, "python": platform.python_version(),
            "results_us": {k: {"best": b, "median": m} for k, (b, m) in rows.items()}},
            indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
