"""deploy/compose.yaml run without Docker: every service's command line as a local process.

    .venv/bin/python bench/compose_loopback.py                 # ~1 minute
    .venv/bin/python bench/compose_loopback.py --seconds 10 --concurrency 8 --keep-tmp

The three NATS servers start from deploy/nats/cluster.conf, the codeswitch services with the
exact arguments compose.yaml gives them, moved to this machine: each ``nats-N:4222`` becomes
the loopback port of that server, ``--host 0.0.0.0`` becomes 127.0.0.1, ``--port 18100`` a
free port, ``--home /data`` a directory under a temp dir named after the volume mounted there
(each ledger its own; the edges one, the routers one, shared as in compose.yaml). ``init``
runs first and must exit 0, as compose's ``service_completed_successfully`` requires; a
provider pointing at
``bench/fake_upstream.py`` is added with the ``cli`` service's command. Then load goes through
both edges, everything is stopped (SIGTERM), and each ledger's DuckDB file is read: each
must hold exactly the requests the clients got a complete answer for.

Exit status 0 when both ledgers agree with the clients, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
import yaml
from _procs import free_port, stop_process, wait_port
from loadgen import fetch_once, run_load
from payloads import client_request

from runtime.natsd import find_nats_server

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose.yaml"
CLUSTER_CONF = ROOT / "deploy" / "nats" / "cluster.conf"


class Deployment:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.tmp = Path(tempfile.mkdtemp(prefix="cs-compose-"))
        self.compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
        self.services: dict[str, dict[str, Any]] = self.compose["services"]
        self.nats = sorted(n for n in self.services if n.startswith("nats-"))
        self.client = {n: free_port() for n in self.nats}
        self.route = {n: free_port() for n in self.nats}
        self.http = {n: free_port() for n in self.nats}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.edge_ports: dict[str, int] = {}
        self.exe = shutil.which("codeswitch", path=str(Path(sys.executable).parent)) \
            or "codeswitch"

    # -- NATS -----------------------------------------------------------------------------------
    def start_nats(self) -> None:
        text = CLUSTER_CONF.read_text()
        for name in self.nats:
            conf = text.replace("0.0.0.0:4222", f"127.0.0.1:{self.client[name]}")
            conf = conf.replace("0.0.0.0:6222", f"127.0.0.1:{self.route[name]}")
            conf = conf.replace("0.0.0.0:8222", f"127.0.0.1:{self.http[name]}")
            conf = conf.replace("/data/jetstream", str(self.tmp / name / "jetstream"))
            for other in self.nats:
                conf = conf.replace(f"nats-route://{other}:6222",
                                    f"nats-route://127.0.0.1:{self.route[other]}")
            (self.tmp / name).mkdir()
            path = self.tmp / name / "nats.conf"
            path.write_text(conf)
            env = {**os.environ, **{k: str(v) for k, v in
                                    self.services[name].get("environment", {}).items()}}
            self.spawn(name, [find_nats_server(), "-c", str(path)], env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if all(self._healthy(n) for n in self.nats):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("the NATS servers did not become healthy")

    def _healthy(self, name: str) -> bool:
        url = f"http://127.0.0.1:{self.http[name]}/healthz?js-enabled-only=true"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200

    # -- codeswitch -----------------------------------------------------------------------------
    def local(self, name: str, argv: list[str]) -> list[str]:
        """A compose command line for this machine."""
        out = []
        for i, arg in enumerate(argv):
            prev = argv[i - 1] if i else ""
            if prev == "--nats-url":
                arg = re.sub(r"(nats-\d+):4222", lambda m: f"127.0.0.1:{self.client[m[1]]}", arg)
            elif prev == "--host" and arg == "0.0.0.0":
                arg = "127.0.0.1"
            elif prev == "--port":
                self.edge_ports[name] = free_port()
                arg = str(self.edge_ports[name])
            elif prev == "--home":
                arg = str(self.tmp / self.volume_at(name, arg))
            out.append(arg)
        return out

    def volume_at(self, name: str, path: str) -> str:
        """The named volume the service mounts at ``path`` (shared by every service that
        mounts it, as the edges and the routers share theirs), else the service's own dir."""
        for volume in self.services[name].get("volumes") or []:
            source, target = str(volume).split(":")[:2]
            if target == path and not source.startswith((".", "/")):
                return source
        return name

    def env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in (self.services[name].get("environment") or {}).items():
            if key == "CODESWITCH_NATS_URL":
                value = re.sub(r"(nats-\d+):4222",
                               lambda m: f"127.0.0.1:{self.client[m[1]]}", str(value))
            env[key] = re.sub(r"\$\{[^}]*\}", "", str(value))  # ${VAR:-} from the shell: unset
        env["CODESWITCH_DEVICE"] = name  # the container's hostname
        env["CODESWITCH_HOME"] = str(self.tmp / self.volume_at(name, "/data"))
        return env

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = (self.tmp / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, cwd=self.tmp)

    def run_once(self, name: str, argv: list[str]) -> None:
        done = subprocess.run([self.exe, *argv], env=self.env(name), cwd=self.tmp,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise SystemExit(f"{name}: {' '.join(argv)} exited {done.returncode}:\n"
                             f"{done.stdout}{done.stderr}")
        print(f"{name}: ok")

    def start_parts(self, upstream: int) -> None:
        init = self.services["init"]
        self.run_once("init", self.local("init", [str(a) for a in init["command"]]))
        self.run_once("cli", ["provider", "add", "pass", "--dialect", "anthropic",
                              "--base-url", f"http://127.0.0.1:{upstream}",
                              "--api-key", "env:ANTHROPIC_API_KEY", "--model", "bench-pass"])
        for name, svc in self.services.items():
            if name in ("init", "cli") or name.startswith("nats-"):
                continue
            argv = self.local(name, [str(a) for a in svc["command"]])
            env = self.env(name)
            env["ANTHROPIC_API_KEY"] = "bench-upstream-key"
            self.spawn(name, [self.exe, *argv], env)
        print(f"started {', '.join(n for n in self.procs if not n.startswith('nats-'))}")

    async def ready(self) -> None:
        deadline = time.monotonic() + 120
        for name, port in self.edge_ports.items():
            while True:
                for part, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise SystemExit(f"{part} exited; see {self.tmp / (part + '.log')}")
                try:
                    resp, _ = await fetch_once(f"http://127.0.0.1:{port}/readiness",
                                               method="GET", timeout_s=2)
                    if resp.status == 200:
                        break
                except (OSError, TimeoutError, ConnectionError):
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name} not ready after 120 s")
                await asyncio.sleep(0.2)
        print(f"edges ready: {self.edge_ports}")

    async def load(self) -> int:
        complete = 0
        for stream in (False, True):
            req = client_request("anthropic", stream, "bench-pass")
            results = await asyncio.gather(*(
                run_load(f"http://127.0.0.1:{port}{req.path}", req.body, req.headers,
                         concurrency=self.a.concurrency, duration_s=self.a.seconds,
                         stream=stream, expect=req.expect)
                for port in self.edge_ports.values()))
            for name, r in zip(self.edge_ports, results, strict=True):
                print(f"{name} {'stream' if stream else 'non-stream'}: {r.requests} complete, "
                      f"{r.errors} errors {r.error_kinds or ''}")
                complete += r.requests
                if r.errors:
                    raise SystemExit(f"{name}: {r.errors} errors: {r.error_sample}")
        return complete

    def stop(self) -> None:
        order = sorted(self.procs, key=lambda n: (n.startswith("nats-"), n))  # NATS last
        for name in order:
            stop_process(self.procs[name], signal.SIGTERM, grace=30)

    async def drained(self, timeout: float = 120.0) -> None:
        """Every consumer of CS_EVENTS (both ledgers, the alerts) has acked everything, read
        from each consumer's leader."""
        import json

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            behind, seen = 0, 0
            for name in self.nats:
                url = (f"http://127.0.0.1:{self.http[name]}/jsz?streams=true&consumers=true")
                with urllib.request.urlopen(url, timeout=5) as resp:
                    jsz = json.load(resp)
                for acc in jsz.get("account_details") or []:
                    for st in acc.get("stream_detail") or []:
                        if st.get("name") != "CS_EVENTS":
                            continue
                        for c in st.get("consumer_detail") or []:
                            if (c.get("cluster") or {}).get("leader") in (None, name):
                                seen += 1
                                behind += c.get("num_pending", 0) + c.get("num_ack_pending", 0)
            if seen and behind == 0:
                return
            await asyncio.sleep(0.5)
        print("the consumers did not catch up within the timeout")

    def ledger_rows(self) -> dict[str, tuple[int, int, int]]:
        """Per ledger: requests answered ok, all rows, distinct request ids."""
        import duckdb

        out = {}
        for name in sorted(n for n in self.services if n.startswith("ledger-")):
            home = self.tmp / self.volume_at(name, "/data")
            con = duckdb.connect(str(home / "ledger.duckdb"), read_only=True)
            try:
                row = con.execute("SELECT count(*) FILTER (WHERE ok), count(*), "
                                  "count(DISTINCT request_id) FROM requests").fetchone()
                assert row is not None
                out[name] = (int(row[0]), int(row[1]), int(row[2]))
            finally:
                con.close()
        return out


async def amain(a: argparse.Namespace) -> int:
    d = Deployment(a)
    upstream_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("fake_upstream.py")), "--port",
         str(upstream_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL)
    ok = False
    try:
        if not wait_port(upstream_port, upstream):
            raise SystemExit("fake upstream did not start")
        d.start_nats()
        print(f"NATS cluster: {d.client}")
        d.start_parts(upstream_port)
        await d.ready()
        complete = await d.load()
        await d.drained()
        d.stop()
        rows = d.ledger_rows()
        print(f"clients: {complete} complete answers; ledgers (ok, rows, request ids): {rows}")
        ok = len(rows) == 2 and all(r == (complete, complete, complete) for r in rows.values())
        print("PASS: each ledger holds exactly the clients' requests" if ok else "FAIL")
    finally:
        d.stop()
        stop_process(upstream, signal.SIGTERM, grace=5)
        if a.keep_tmp or not ok:
            print(f"logs and data: {d.tmp}")
        else:
            shutil.rmtree(d.tmp, ignore_errors=True)
    return 0 if ok else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="load per mode, per edge")
    p.add_argument("--concurrency", type=int, default=4, help="per edge")
    p.add_argument("--keep-tmp", action="store_true")
    raise SystemExit(asyncio.run(amain(p.parse_args())))


if __name__ == "__main__":
    main()
