"""Direct-to-upstream against through-codeswitch, side by side, in one run.

    .venv/bin/python bench/compare.py                      # anthropic, c=1,16,64, 5 s per cell
    .venv/bin/python bench/compare.py --translated --fallback --duration 3
    .venv/bin/python bench/compare.py --dialect openai-responses --concurrency 1,64
    .venv/bin/python bench/compare.py --users 1000 --keys 10000 --limits --concurrency 64

It starts the fake upstream(s) and ``codeswitch up`` as subprocesses in a temporary home,
waits for ``GET /readiness``, checks one answer per lane, warms up, then measures each cell
(mode x concurrency): the direct lane once, then every gateway lane. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report
from _procs import free_port, stop_process, tree_cpu, wait_port
from loadgen import Result, fetch_once, run_load
from payloads import CHUNKS, DIALECTS, client_request

HERE = Path(__file__).resolve().parent
MODES = ("non-stream", "stream")


class AbortedError(Exception):
    """A process the benchmark depends on exited mid-run."""


@dataclass
class Lane:
    """One way of reaching the fake upstream through the gateway."""

    name: str
    model: str
    providers: list[dict[str, Any]]
    note: str


@dataclass
class Cell:
    lane: str
    mode: str
    concurrency: int
    direct: Result
    via: Result
    gateway_cpu_s: float
    gateway_cpu_by_part: dict[str, float]
    client_cpu_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _base_url(dialect: str, port: int) -> str:
    root = f"http://127.0.0.1:{port}"
    return root + "/v1" if dialect.startswith("openai") else root


def _provider(name: str, dialect: str, port: int, model: str, priority: int) -> dict[str, Any]:
    return {"name": name, "dialect": dialect, "base_url": _base_url(dialect, port),
            "api_key": "bench-upstream-key", "models": [model], "priority": priority}


# the key the load generator sends when --users is given (its sha256 goes in the config file)
BENCH_USER_KEY = "cs-bench-user-key-0000000000000000000000000"


def _users_toml(users: int, keys: int, limits: bool) -> list[str]:
    """``[[users]]`` and ``[[keys]]`` by hash; the load uses key 0 (of user 0). ``limits``:
    every user and key with an RPM, TPM and concurrency limit and a budget, too high to
    refuse."""
    import hashlib

    lim = ["rpm = 1000000000", "tpm = 1000000000000", "concurrency = 100000",
           'budget = "1000000usd/day"'] if limits else []
    out: list[str] = []
    for i in range(users):
        out += ["[[users]]", f'name = "bench{i}"', *lim, ""]
    for i in range(keys):
        secret = BENCH_USER_KEY if i == 0 else f"cs-bench-{i:08d}-{'x' * 24}"
        out += ["[[keys]]", f'name = "k{i}"', f'user = "bench{i % users}"',
                f'hash = "sha256:{hashlib.sha256(secret.encode()).hexdigest()}"', *lim, ""]
    return out


def _toml(providers: list[dict[str, Any]], no_breaker: bool = False, users: int = 0,
          keys: int = 0, limits: bool = False) -> str:
    out = ["# written by bench/compare.py\n"]
    if users:
        out += _users_toml(users, max(keys, 1), limits)
    if no_breaker:  # every request meets the failing provider: the raw cost of a fallback
        out += ["[routing]", "breaker = { failures = 1000000000 }", ""]
    for p in providers:
        out.append("[[providers]]")
        for k, v in p.items():
            out.append(f"{k} = {json.dumps(v)}")  # JSON strings, ints and lists are valid TOML
        out.append("")
    return "\n".join(out)


def plan_lanes(a: argparse.Namespace, healthy: int, broken: int | None) -> list[Lane]:
    d = a.dialect
    lanes = [Lane("pass-through", "bench-pass", [_provider("pass", d, healthy, "bench-pass", 1)],
                  f"{d} client -> {d} provider")]
    if a.translated:
        target = a.translate_to or ("openai-chat" if d != "openai-chat" else "anthropic")
        lanes.append(Lane("translated", "bench-xlate",
                          [_provider("xlate", target, healthy, "bench-xlate", 1)],
                          f"{d} client -> {target} provider"))
    if a.fallback:
        assert broken is not None
        lanes.append(Lane("fallback", "bench-fallback", [
            _provider("fb-broken", d, broken, "bench-fallback", 1),
            _provider("fb-healthy", d, healthy, "bench-fallback", 2)],
            "priority 1 answers 503, priority 2 healthy"))
    return lanes


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.tmp = Path(tempfile.mkdtemp(prefix="cs-bench-"))
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.gateway: subprocess.Popen[bytes] | None = None
        self.log: Callable[[str], None] = report.console.print

    # -- processes ------------------------------------------------------------------------------
    def start_upstream(self, name: str, *extra: str) -> int:
        port = free_port()
        logf = (self.tmp / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "fake_upstream.py"), "--port", str(port), *extra],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append((name, proc))
        if not wait_port(port, proc):
            raise SystemExit(f"{name} did not start; see {self.tmp / (name + '.log')}")
        return port

    def start_gateway(self, providers: list[dict[str, Any]]) -> int:
        a = self.a
        cfg = self.tmp / "codeswitch.toml"
        cfg.write_text(_toml(providers, a.no_breaker, a.users, a.keys, a.limits))
        port = a.gateway_port or free_port()
        exe = a.gateway_cmd or shutil.which("codeswitch", path=str(Path(sys.executable).parent)) \
            or "codeswitch"
        argv = [*exe.split(), "up", "--home", str(self.tmp / "home"), "--config", str(cfg),
                "--port", str(port), *a.gateway_arg]
        self.log(f"[dim]gateway: {' '.join(argv)}[/dim]")
        logf = (self.tmp / "gateway.log").open("wb")
        self.gateway = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        return port

    async def wait_ready(self, port: int) -> None:
        assert self.gateway is not None
        deadline = time.monotonic() + self.a.ready_timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.gateway.poll() is not None:
                self._die(f"gateway exited with {self.gateway.returncode} before it was ready")
            try:
                resp, _ = await fetch_once(f"http://127.0.0.1:{port}/readiness", method="GET",
                                           timeout_s=2)
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}: {resp.body[:200]!r}"
            except (OSError, TimeoutError, ConnectionError) as e:
                last = str(e) or type(e).__name__
            await asyncio.sleep(0.2)
        self._die(f"gateway not ready after {self.a.ready_timeout:g}s ({last})")

    def _die(self, msg: str) -> None:
        log = self.tmp / "gateway.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        self.log(f"[red]{msg}[/red]\n[dim]--- {log} (tail) ---[/dim]\n{tail}")
        self.a.keep_tmp = True  # keep the logs for a look
        raise SystemExit(2)

    def stop_all(self) -> None:
        if self.gateway is not None:  # SIGINT: the supervisor stops its parts gracefully
            stop_process(self.gateway, signal.SIGINT, grace=self.a.stop_grace)
        for _, proc in self.procs:
            stop_process(proc, signal.SIGTERM, grace=5)
        if not self.a.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def gateway_cpu(self) -> dict[str, float]:
        assert self.gateway is not None
        by: dict[str, float] = {}
        for p in tree_cpu(self.gateway.pid):
            by[p.label] = by.get(p.label, 0.0) + p.cpu_s
        return by

    # -- measuring ------------------------------------------------------------------------------
    async def check(self, name: str, url: str, stream: bool, model: str) -> dict[str, Any]:
        """One request, the body inspected: status, all 20 pieces, the terminator, timings."""
        req = client_request(self.a.dialect, stream, model, pad_bytes=self.a.pad_bytes,
                             **({"api_key": BENCH_USER_KEY} if self.a.users else {}))
        out: dict[str, Any] = {"lane": name, "stream": stream}
        try:
            resp, t0 = await fetch_once(url + req.path, req.body, req.headers, timeout_s=30)
        except (OSError, TimeoutError, ConnectionError) as e:
            return {**out, "ok": False, "problem": f"{type(e).__name__}: {e}"}
        ttfb, total = resp.ms(t0)
        pieces = sum(f"piece {i:02d}".encode() in resp.body for i in range(len(CHUNKS)))
        missing = [e.decode() for e in req.expect if e not in resp.body]
        ok = resp.status == 200 and not missing and pieces == len(CHUNKS)
        out.update(ok=ok, status=resp.status, pieces=pieces, bytes=resp.body_len,
                   events=resp.body.count(b"data:"), ttfb_ms=round(ttfb, 3),
                   total_ms=round(total, 3))
        if not ok:
            out["problem"] = (f"missing {missing}; " if missing else "") \
                + resp.body[:300].decode("utf-8", "replace")
        return out

    async def load(self, url: str, model: str, stream: bool, c: int, seconds: float) -> Result:
        req = client_request(self.a.dialect, stream, model, pad_bytes=self.a.pad_bytes,
                             **({"api_key": BENCH_USER_KEY} if self.a.users else {}))
        return await run_load(url + req.path, req.body, req.headers, c, seconds, None, stream,
                              expect=req.expect, timeout_s=self.a.timeout)

    def check_alive(self) -> None:
        """Stop measuring if a process we started has gone (crashed, or killed from outside)."""
        gone = [(n, p.returncode) for n, p in self.procs if p.poll() is not None]
        if self.gateway is not None and self.gateway.poll() is not None:
            gone.append(("gateway", self.gateway.returncode))
        if gone:
            raise AbortedError("exited during the run: "
                               + ", ".join(f"{n} (rc {rc})" for n, rc in gone))

    async def upstream_503s(self, port: int | None) -> int | None:
        if port is None:
            return None
        try:
            resp, _ = await fetch_once(f"http://127.0.0.1:{port}/__stats", method="GET",
                                       timeout_s=5)
            return int(json.loads(resp.body)["by_status"].get("503", 0))
        except (OSError, TimeoutError, ConnectionError, ValueError, KeyError):
            return None

    async def measure(self, direct_url: str, via_url: str, lanes: list[Lane],
                      skip: set[tuple[str, str]], broken: int | None,
                      on_cell: Callable[[Cell], None]) -> list[Cell]:
        """Every cell: direct once, then each gateway lane not in ``skip`` (lane, mode)."""
        a, cells = self.a, []
        if a.warmup > 0:
            self.log(f"[dim]warm-up: {a.warmup:g}s per lane and mode at c=16[/dim]")
            for stream in (False, True):
                await self.load(direct_url, "bench-pass", stream, 16, a.warmup)
                for lane in lanes:
                    if (lane.name, MODES[stream]) not in skip:
                        await self.load(via_url, lane.model, stream, 16, a.warmup)
        for mode in a.modes:
            stream = mode == "stream"
            for c in a.concurrency:
                if a.cell_warmup > 0:
                    await self.load(direct_url, "bench-pass", stream, c, a.cell_warmup)
                self.check_alive()
                direct = await self.load(direct_url, "bench-pass", stream, c, a.duration)
                for lane in lanes:
                    if (lane.name, mode) in skip:
                        continue
                    self.check_alive()
                    if a.cell_warmup > 0:
                        await self.load(via_url, lane.model, stream, c, a.cell_warmup)
                    fb = broken if lane.name == "fallback" else None
                    n503 = await self.upstream_503s(fb)
                    before, ru0 = self.gateway_cpu(), resource.getrusage(resource.RUSAGE_SELF)
                    via = await self.load(via_url, lane.model, stream, c, a.duration)
                    after, ru1 = self.gateway_cpu(), resource.getrusage(resource.RUSAGE_SELF)
                    parts = {k: round(v - before.get(k, 0.0), 3) for k, v in after.items()}
                    client = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
                    cell = Cell(lane.name, mode, c, direct, via, round(sum(parts.values()), 3),
                                parts, round(client, 3))
                    n503_after = await self.upstream_503s(fb)
                    if n503 is not None and n503_after is not None:
                        cell.extra["upstream_503s"] = n503_after - n503
                    cells.append(cell)
                    on_cell(cell)
            self.check_alive()
        return cells


async def amain(a: argparse.Namespace) -> int:
    bench = Bench(a)
    log = bench.log
    started = time.strftime("%Y%m%dT%H%M%S")
    load0 = os.getloadavg()
    try:
        up_args = [] if a.chunk_delay_ms == 0 else ["--chunk-delay-ms", str(a.chunk_delay_ms)]
        healthy = bench.start_upstream("upstream", *up_args)
        broken = bench.start_upstream("upstream-503", "--fail-503") if a.fallback else None
        slow = bench.start_upstream("upstream-slow", "--chunk-delay-ms", "10") \
            if a.stream_check else None
        lanes = plan_lanes(a, healthy, broken)
        providers = [p for lane in lanes for p in lane.providers]
        if slow is not None:
            providers.append(_provider("slow", a.dialect, slow, "bench-slow", 1))
        direct_url = f"http://127.0.0.1:{healthy}"
        log(f"fake upstream on {direct_url}" + (f", 503 upstream on :{broken}" if broken else "")
            + f"; temp dir {bench.tmp}")
        gw_port = bench.start_gateway(providers)
        via_url = f"http://127.0.0.1:{gw_port}"
        t = time.monotonic()
        await bench.wait_ready(gw_port)
        log(f"gateway ready on {via_url} after {time.monotonic() - t:.1f}s")

        checks = []
        for stream in (False, True):
            checks.append(await bench.check("direct", direct_url, stream, "bench-pass"))
            for lane in lanes:
                checks.append(await bench.check(lane.name, via_url, stream, lane.model))
        if slow is not None:
            checks.append(await bench.check("stream-check", via_url, True, "bench-slow"))
        report.print_checks(checks)
        skip = {(c["lane"], MODES[c["stream"]]) for c in checks
                if not c["ok"] and c["lane"] not in ("direct", "stream-check")}
        if skip and not a.measure_failing:
            log("[yellow]not measured (their check failed; --measure-failing to force): "
                + ", ".join(f"{ln} {m}" for ln, m in sorted(skip)) + "[/yellow]")
        else:
            skip = set()

        table = report.live_table(a)
        aborted = ""
        try:
            await bench.measure(direct_url, via_url, lanes, skip, broken, table.add)
        except AbortedError as e:
            aborted = str(e)
        cells = table.cells
        table.finish()
        if aborted:
            log(f"[red]measuring stopped early: {aborted}; the numbers before it are kept, "
                f"logs in {bench.tmp}[/red]")
            a.keep_tmp = True
        bars = report.bars(cells)
        report.print_summary(cells, lanes, bars)
        out = {
            "started": started, "args": {k: v for k, v in vars(a).items()},
            "machine": {"cpus": os.cpu_count(), "loadavg_before": load0,
                        "loadavg_after": os.getloadavg(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "lanes": [{"name": ln.name, "model": ln.model, "note": ln.note,
                       "providers": ln.providers} for ln in lanes],
            "checks": checks, "not_measured": sorted(skip), "aborted": aborted,
            "cells": [{"lane": c.lane, "mode": c.mode, "concurrency": c.concurrency,
                       "direct": c.direct.to_dict(), "via": c.via.to_dict(),
                       "gateway_cpu_s": c.gateway_cpu_s,
                       "gateway_cpu_ms_per_request": report.cpu_ms(c),
                       "gateway_cpu_by_part_s": c.gateway_cpu_by_part,
                       "client_cpu_s": c.client_cpu_s, **c.extra} for c in cells],
            "bars": bars,
        }
        results = Path(a.results_dir)
        results.mkdir(parents=True, exist_ok=True)
        path = results / f"{started}.json"
        path.write_text(json.dumps(out, indent=2))
        log(f"results: {path}")
        if aborted:
            return 3
        return 0 if all(b["pass"] for b in bars if b["pass"] is not None) else 1
    finally:
        bench.stop_all()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark: direct vs through codeswitch.")
    p.add_argument("--users", type=int, default=0,
                   help="users in the gateway's config (0: none, the gateway as before)")
    p.add_argument("--keys", type=int, default=0, help="API keys over those users")
    p.add_argument("--limits", action="store_true",
                   help="every user and key with RPM/TPM/concurrency limits and a USD budget "
                   "a day (never reached)")
    p.add_argument("--dialect", choices=DIALECTS, default="anthropic",
                   help="client (and pass-through provider) dialect")
    p.add_argument("--translated", action="store_true",
                   help="add a lane whose provider speaks another dialect (default openai-chat; "
                        "reports gateway CPU per request against pass-through)")
    p.add_argument("--translate-to", choices=DIALECTS, help="provider dialect for --translated")
    p.add_argument("--fallback", action="store_true",
                   help="add a lane: priority-1 provider answers 503, priority-2 healthy")
    p.add_argument("--no-breaker", action="store_true",
                   help="configure the gateway so circuit breakers never open (with --fallback: "
                        "every request is tried on the 503 provider first)")
    p.add_argument("--concurrency", default="1,16,64",
                   type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--modes", default="non-stream,stream",
                   type=lambda s: [m for m in s.split(",") if m in MODES])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of warm-up per lane and mode before measuring")
    p.add_argument("--cell-warmup", type=float, default=0.5,
                   help="unrecorded seconds before each measured run (opens connections)")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0,
                   help="fake upstream delay before each content chunk")
    p.add_argument("--pad-bytes", type=int, default=0,
                   help="grow the user message by this many bytes (bigger request bodies)")
    p.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    p.add_argument("--measure-failing", action="store_true",
                   help="measure lanes even when their one-request check failed")
    p.add_argument("--no-stream-check", dest="stream_check", action="store_false",
                   help="skip the check that streams are relayed incrementally")
    p.add_argument("--gateway-cmd", help="command that runs the gateway CLI "
                   "(default: codeswitch next to this python)")
    p.add_argument("--gateway-arg", action="append", default=[],
                   help="extra argument for `codeswitch up` (repeatable)")
    p.add_argument("--gateway-port", type=int, default=0, help="default: a free port")
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.add_argument("--stop-grace", type=float, default=40.0,
                   help="seconds to wait for the gateway to exit after SIGINT")
    p.add_argument("--results-dir", default=str(HERE / "results"))
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp home and logs")
    a = p.parse_args(argv)
    if not a.modes:
        p.error("--modes: give non-stream and/or stream")
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        code = asyncio.run(amain(a))
    else:
        code = uvloop.run(amain(a))
    sys.exit(code)


if __name__ == "__main__":
    main()
