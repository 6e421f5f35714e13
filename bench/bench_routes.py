#!/usr/bin/env python3
"""What route rules cost per request (CPU, one thread; workers/router/rules.py).

    .venv/bin/python bench/bench_routes.py [--rounds 7] [--n 100000]

- match: 10 and 20 compiled rules against the features of a recorded Claude Code request, the
  last rule matching (so every rule's first key is tried) and none matching; the rules mix
  model globs, client, thinking, tools, min_input_tokens, header and subagent keys;
- features: the envelope's part (no body) and the body's (``body_features`` over the decoded
  document) for the recorded requests of tests/fixtures/clients;
- decode: ``translator.parse_request`` of the same bodies, the one decode the router makes
  when a rule reads the body (shared with a translated attempt).

Best round of ``--rounds``, microseconds per call.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schemas.routes import RouteMatch, RouteRule  # noqa: E402
from workers import translator  # noqa: E402
from workers.router.rules import (  # noqa: E402
    Features,
    body_features,
    compile_rules,
    features,
    match,
)

FX = ROOT / "tests" / "fixtures" / "clients"
BODIES = {
    "claude main turn (85 KB)": ("claude_code_2.1.197_first_turn.json", "anthropic"),
    "claude haiku title (2 KB)": ("claude_code_2.1.197_haiku_title.json", "anthropic"),
    "claude subagent (54 KB)": ("claude_code_2.1.197_subagent.json", "anthropic"),
    "codex turn 2": ("codex_0.171.0_recorded.json", "openai-responses"),
    "gemini cli turn 2": ("gemini_cli_0.61.0_recorded.json", "gemini"),
}


def rules(n: int, hit: bool) -> list[RouteRule]:
    kinds: list[dict[str, Any]] = [
        {"model": "*haiku*"}, {"client": "codex", "thinking": True},
        {"model": ["gpt-5*", "o3*"], "min_input_tokens": 60000},
        {"tools": ["web_search"], "client": "gemini-cli"},
        {"header": {"x-project": "billing-*"}}, {"dialect": "gemini", "image": True},
        {"user": "ops-*"}, {"model": "*sonnet*", "session_turn": "first"},
        {"key": "ci/*"}, {"model": "deepseek-*", "subagent": False},
    ]
    out = [RouteRule(name=f"r{i}", to=["p"], match=RouteMatch(**kinds[i % len(kinds)]))
           for i in range(n - 1)]
    last = RouteMatch(client="claude-code", subagent=True) if hit else RouteMatch(
        model="never-*")
    return [*out, RouteRule(name="last", to=["p"], match=last)]


def best(fn: Callable[[], Any], n: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    return min(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--n", type=int, default=100_000)
    a = ap.parse_args()
    print(f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; best of {a.rounds}")
    raw = (FX / "claude_code_2.1.197_subagent.json").read_bytes()
    doc = translator.parse_request(raw)
    f = features(model="claude-opus-4-8", dialect="anthropic", client="claude-code",
                 headers={"x-project": "web"}, doc=doc, body_size=len(raw))
    for n in (10, 20):
        for hit in (True, False):
            compiled = compile_rules(rules(n, hit))
            assert (match(compiled, f) is not None) is hit
            us = best(lambda c=compiled: match(c, f), a.n, a.rounds)
            print(f"match {n} rules, {'last matches' if hit else 'none matches'}: {us:.2f} µs")
    print(f"features without the body: "
          f"{best(lambda: features(model='m', dialect='anthropic', client='claude-code'), a.n, a.rounds):.2f} µs")  # noqa: E501
    for label, (file, dialect) in BODIES.items():
        body = (FX / file).read_bytes()
        d = translator.parse_request(body)
        k = max(200, a.n // 100)
        dec = best(lambda b=body: translator.parse_request(b), k, a.rounds)
        feat = best(lambda d=d, dl=dialect, s=len(body): body_features(
            Features(model="m", dialect=dl), d, s), k * 10, a.rounds)
        print(f"{label}: body features {feat:.2f} µs; the decode they need {dec:.1f} µs")


if __name__ == "__main__":
    main()
