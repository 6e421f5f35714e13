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
"""

from __future__ import annotations

import argparse
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
from schemas.config import GatewaySettings
from schemas.errors import GatewayError
from schemas.users import Key, User, hash_secret, new_secret


def build(users: int, keys: int) -> tuple[Directory, list[str], str]:
    """A directory as an edge holds it after the KV watch: records applied one by one."""
    enc = msgspec.json.Encoder()
    d = Directory()
    for i in range(users):
        d.apply_user(f"u_{i:06d}", enc.encode(User(id=f"u_{i:06d}", name=f"user{i}")))
    secrets: list[str] = []
    revoked = ""
    for i in range(keys):
        secret = new_secret()
        key = Key(id=f"k_{i:06d}", name=f"key{i}", user=f"u_{i % users:06d}",
                  hash=hash_secret(secret), prefix=secret[:7],
                  models=["claude-*", "gpt-5*"] if i % 2 else [],
                  revoked=time.time() if i == keys - 1 else None)
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
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    directory, secrets, revoked = build(args.users, args.keys)
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

    rows = {
        "no users (today)": per_call_us(without_users, args.n, args.rounds),
        f"{args.users:,} users, {args.keys:,} keys": per_call_us(with_users, args.n,
                                                               args.rounds),
        "unknown key (401)": per_call_us(refused("cs-not-a-key"), args.n // 4, args.rounds),
        "revoked key (403)": per_call_us(refused(revoked), args.n // 4, args.rounds),
    }
    base = rows["no users (today)"][0]
    print(f"python {platform.python_version()} on {platform.machine()}; directory of "
          f"{args.users:,} users and {args.keys:,} keys built in {built:.2f} s; "
          f"{args.n:,} calls x {args.rounds} rounds")
    print(f"{'':32} {'best µs':>9} {'median µs':>10} {'added µs':>9}")
    for name, (best, median) in rows.items():
        print(f"{name:32} {best:9.2f} {median:10.2f} {best - base:9.2f}")
    if args.json:
        args.json.write_text(json.dumps({
            "users": args.users, "keys": args.keys, "python": platform.python_version(),
            "results_us": {k: {"best": b, "median": m} for k, (b, m) in rows.items()}},
            indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
