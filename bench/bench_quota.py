"""Spend propagation: from a request's completion to every edge seeing the new spend.

    .venv/bin/python bench/bench_quota.py                          # 200 req/s, 20 s, 2 edges
    .venv/bin/python bench/bench_quota.py --rate 1000 --duration 20 --json out.json

What runs, as under ``codeswitch up``: an embedded nats-server; the ``workers`` process as the
supervisor starts it (``python -m runtime.launch ledger,quota,alerts`` at nice 10; ``--parts
quota --nice 0`` runs the quota worker alone at the normal priority, for comparison); N
"edge" processes, each following KV ``cs_quota`` (and the users and keys) with
``bus.follow_bucket`` and the edge's own ``edge.quota.SpendView`` (what an edge runs, without
HTTP): the worker's records, and the early counts from the facts the edge subscribes to
(``--kv-only``: the records alone, as before the early counts), recording the user's spend on
each change; and this process as the routers: ``RequestCompleted`` facts published through
``runtime.facts.FactPublisher`` (the routers' publisher, its 20 ms linger included) at a fixed
rate, spread over U users and their keys, each with a known number of tokens. A fact's
latency on an edge is the first moment that edge's spend of its user reaches the user's
total after that fact, minus the fact's ``ts`` (the moment the router wrote it, after
the answer); "every edge" is the slowest edge per fact. All on one machine, one clock.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import bus, names
from runtime.facts import FactPublisher
from runtime.natsd import EmbeddedNats
from schemas.events import RequestCompleted, Usage, new_id
from schemas.subjects import response_subject

ROOT = Path(__file__).resolve().parents[1]

WATCHER = r"""
import asyncio, json, sys, time
sys.path.insert(0, sys.argv[3])
from runtime import bus, names
from edge.auth import Directory
from edge.done import done_decoder
from edge.quota import SpendView
from schemas.users import Budget

DAY = Budget(amount=1e12, unit="tokens", period="day")

async def main(url, out, early):
    nc = await bus.connect(url, name="bench-edge")
    view = SpendView()
    directory = Directory()
    seen = []
    def note(kind, ident, what):
        if kind != "user":
            return
        used, _ = view.spent(view.users.get(ident), view.early_users.get(ident), DAY,
                             time.time())
        seen.append((time.time(), "user." + ident, used, what))
    def apply(key, value, revision):
        view.apply(key, value, revision)
        kind, _, ident = key.partition(".")
        rec = (view.users if kind == "user" else view.keys).get(ident)
        note(kind, ident, ["record", rec.seq, rec.ids] if rec is not None else None)
    async def on_fact(msg):  # what the edge runs (edge/ratelimit_bus.py _on_fact)
        if b'"key_id"' not in msg.data:
            return
        done = done_decoder.decode(msg.data)
        view.observe(done, directory, None)
        note("user", done.user_id, ["fact", done.request_id])
    js = nc.jetstream()
    tasks, loads = [], []
    for bucket, fn in ((names.USERS_BUCKET, directory.apply_user),
                       (names.KEYS_BUCKET, directory.apply_key),
                       (names.QUOTA_BUCKET, apply)):
        loaded = asyncio.Event()
        loads.append(loaded)
        tasks.append(asyncio.create_task(bus.follow_bucket(await js.key_value(bucket), fn,
                                                           loaded)))
    for e in loads:
        await e.wait()
    if early == "1":
        await nc.subscribe("llm.response.>", cb=on_fact, pending_msgs_limit=1_000_000)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for task in tasks:
        task.cancel()
    with open(out, "w") as f:
        json.dump(seen, f)
    await nc.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[4]))
"""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[max(0, min(len(s) - 1, round(p / 100 * len(s)) - 1))]


async def publish(url: str, rate: float, duration: float, users: int,
                  keys_per_user: int, linger: float = 0.02) -> list[tuple[float, str, int, str]]:
    """The routers' facts; returns (completion ts, user scope, user's total after it)."""
    nc = await bus.connect(url, name="bench-router")
    facts = FactPublisher(nc, name="bench", linger=linger)  # in memory: no write-ahead file
    facts.start()
    rng = random.Random(1)
    totals: dict[str, int] = {}
    sent: list[tuple[float, str, int, str]] = []
    interval = 1.0 / rate
    start = time.perf_counter()
    n = 0
    while True:
        due = start + n * interval
        now = time.perf_counter()
        if now - start >= duration:
            break
        if due > now:
            await asyncio.sleep(due - now)
        u = rng.randrange(users)
        tokens = rng.randrange(100, 5000)
        ts = time.time()
        ev = RequestCompleted(
            id=new_id(), ts=ts, request_id=new_id(), dialect="anthropic",
            model="claude-sonnet-4-5", provider="p", status=200, received_at=ts - 0.5,
            usage=Usage(input_tokens=tokens - 50, output_tokens=50),
            user_id=f"u_{u:05d}", key_id=f"k_{u:05d}_{rng.randrange(keys_per_user)}")
        facts.emit(response_subject("anthropic", "p"), ev)
        scope = f"user.u_{u:05d}"
        totals[scope] = totals.get(scope, 0) + tokens
        sent.append((ts, scope, totals[scope], ev.request_id))
        n += 1
    await facts.aclose()
    await nc.close()
    return sent


def latencies(sent: list[tuple[float, str, int, str]], seen: list[list[Any]]) -> list[float]:
    """Per fact: when this edge first saw its user's total reach the fact's total."""
    by_scope: dict[str, list[tuple[float, int]]] = {}
    for t, key, tokens, _ in seen:
        by_scope.setdefault(key, []).append((t, tokens))
    out = []
    for ts, scope, total, _ in sent:
        arrivals = by_scope.get(scope, [])
        hit = next((t for t, tok in arrivals if tok >= total), None)
        out.append(float("inf") if hit is None else (hit - ts) * 1000)
    return out


def over(sent: list[tuple[float, str, int, str]], seen: list[list[Any]]) -> int:
    """Users whose spend on this edge ever went past their final total (double counting)."""
    final: dict[str, int] = {}
    for _, scope, total, _ in sent:
        final[scope] = total
    peak: dict[str, float] = {}
    for _, scope, tokens, _ in seen:
        peak[scope] = max(peak.get(scope, 0), tokens)
    return sum(1 for scope, top in peak.items() if top > final.get(scope, 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="requests completed per second")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--keys-per-user", type=int, default=2)
    ap.add_argument("--edges", type=int, default=2)
    ap.add_argument("--parts", default="ledger,quota,alerts",
                    help="the process the quota worker runs in (default: `workers`, as "
                    "`codeswitch up` starts it)")
    ap.add_argument("--nice", type=int, default=10,
                    help="the worker process's nice (the `workers` process runs at 10)")
    ap.add_argument("--linger", type=float, default=0.02,
                    help="the publisher's linger (the routers': 0.02 s)")
    ap.add_argument("--kv-only", action="store_true",
                    help="edges that see spend only in the quota worker's KV records (no "
                    "early counts from the facts: the edge before them)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-quota-"))
    server = EmbeddedNats(tmp / "nats", log_file=tmp / "nats.log")
    server.start()
    procs: list[subprocess.Popen[str]] = []
    try:
        asyncio.run(_ensure(server.url, args.users, args.keys_per_user))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        worker = subprocess.Popen(
            [sys.executable, "-m", "runtime.launch", args.parts, "--nats-url", server.url,
             "--home", str(tmp / "home")], cwd=ROOT, env=env, text=True,
            preexec_fn=lambda: os.nice(args.nice))
        procs.append(worker)
        edges = []
        for i in range(args.edges):
            p = subprocess.Popen([sys.executable, "-c", WATCHER, server.url,
                                  str(tmp / f"edge{i}.json"), str(ROOT),
                                  "0" if args.kv_only else "1"], env=env, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            procs.append(p)
            edges.append(p)
        for p in edges:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(2.0)  # the worker: connected, consumer in place
        load_before = os.getloadavg()[0]
        sent = asyncio.run(publish(server.url, args.rate, args.duration, args.users,
                                   args.keys_per_user, args.linger))
        time.sleep(2.0)  # the last facts
        (tmp / "sent.json").write_text(json.dumps(sent))
        load_after = os.getloadavg()[0]
        per_edge = []
        overcounted = 0
        for i, p in enumerate(edges):
            assert p.stdin is not None
            p.stdin.write("\n")
            p.stdin.flush()
            p.wait(30)
            seen = json.loads((tmp / f"edge{i}.json").read_text())
            per_edge.append(latencies(sent, seen))
            overcounted += over(sent, seen)
        every = [max(values) for values in zip(*per_edge, strict=True)]
        result: dict[str, Any] = {
            "rate": args.rate, "duration_s": args.duration, "facts": len(sent),
            "users": args.users, "keys_per_user": args.keys_per_user, "edges": args.edges,
            "worker_process": args.parts, "worker_nice": args.nice,
            "edges_count_early": not args.kv_only, "linger_s": args.linger,
            "load_1m_before": round(load_before, 2),
            "load_1m_after": round(load_after, 2), "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "every_edge_ms": {"p50": round(statistics.median(every), 2),
                              "p90": round(pct(every, 90), 2), "p99": round(pct(every, 99), 2),
                              "max": round(max(every), 2)},
            "per_edge_p99_ms": [round(pct(v, 99), 2) for v in per_edge],
            "never_seen": sum(1 for v in every if v == float("inf")),
            # a spend an edge saw above the user's true total at that point (counted twice)
            "overcounted_users": overcounted,
        }
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        server.stop()


async def _ensure(url: str, users: int, keys_per_user: int) -> None:
    """Streams and buckets, and the users and keys, each with a budget it never reaches (so
    the worker publishes a QuotaUsed per user and key that changed, as it would)."""
    import msgspec

    from schemas.users import Budget, Key, Limits, User

    nc = await bus.connect(url, name="bench-setup")
    js = nc.jetstream()
    await bus.ensure_all(js)
    ukv, kkv = await js.key_value(names.USERS_BUCKET), await js.key_value(names.KEYS_BUCKET)
    limits = Limits(budget=Budget(amount=1e12, unit="tokens", period="day"), soft_pct=80)
    for u in range(users):
        uid = f"u_{u:05d}"
        await ukv.put(uid, msgspec.json.encode(User(id=uid, name=f"user{u}", limits=limits)))
        for k in range(keys_per_user):
            kid = f"k_{u:05d}_{k}"
            await kkv.put(kid, msgspec.json.encode(Key(
                id=kid, name=f"key{k}", user=uid, hash=f"{u * 10 + k:064x}",
                limits=Limits(budget=Budget(amount=1e6, unit="usd", period="month")))))
    await nc.close()


if __name__ == "__main__":
    main()
