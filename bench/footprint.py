"""How long ``codeswitch up`` takes to become ready, and how much memory it holds: idle, after N
requests, and after a rest. For the default (one process per part) and ``--single-process``.

    .venv/bin/python bench/footprint.py                          # both modes, 100,000 requests
    .venv/bin/python bench/footprint.py --modes single --requests 20000 --rest 30 --json
    .venv/bin/python bench/footprint.py --gateway-cmd /work/before/.venv/bin/codeswitch

Per mode:

1. readiness: spawns ``codeswitch up --home <tmp> --config <tmp cfg> --port <free>`` and polls
   ``GET /readiness`` every 10 ms until it answers 200; ``--readiness-runs`` times (3), each on
   a fresh temp home; every run but the last is stopped at once.
2. idle: ``--settle`` seconds (5) after the last run is ready, the process tree of
   ``codeswitch up`` (every descendant, through /proc, nats-server included): per process its
   title, RSS (VmRSS), and PSS/USS from /proc/<pid>/smaps_rollup.
3. load: ``--requests`` (100,000) through the gateway at ``--concurrency`` (32), an even mix
   of the four dialects, streaming and not, against ``fake_upstream.py`` (pass-through
   providers); memory right after the last answer and after ``--rest`` seconds (60), with the
   growth against idle.

Run by hand, never part of the tests; see bench/README.md, "footprint.py".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import ProcMem, descendants, free_port, stop_process, tree_memory, wait_port
from compare import _provider, _toml
from loadgen import Result, fetch_once, run_load
from payloads import DIALECTS, client_request
from report import console

HERE = Path(__file__).resolve().parent
MODES = {"default": [], "single": ["--single-process"]}
# every request kind of the mix: (client dialect, stream)
COMBOS: list[tuple[str, bool]] = [(d, s) for d in DIALECTS for s in (False, True)]
Snapshot = dict[int, ProcMem]


class GatewayError(Exception):
    """The gateway did not come up, or a process of it exited mid-run."""


def model_of(dialect: str) -> str:
    return f"fp-{dialect}"


def gateway_config(upstream_port: int) -> str:
    """One pass-through provider per dialect, all served by the one fake upstream."""
    return _toml([_provider(f"fp-{d}", d, upstream_port, model_of(d), 1) for d in DIALECTS])


def gateway_env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("CODESWITCH_NATS_URL", "CODESWITCH_HOME", "CODESWITCH_CONFIG",
              "CODESWITCH_NATS_CREDS", "PYTHONPATH"):
        env.pop(k, None)
    return env


# -- one gateway ---------------------------------------------------------------------------------


class Gateway:
    """One ``codeswitch up`` on a fresh temp home, config and port."""

    def __init__(self, exe: list[str], extra: list[str], workdir: Path, config: str) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True)
        self.config = workdir / "codeswitch.toml"
        self.config.write_text(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [*exe, "up", "--home", str(workdir / "home"), "--config", str(self.config),
                     "--port", str(self.port), *extra]
        self.log = workdir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, int | None] = {}  # pid -> start time, its tree (for the stop)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    async def start(self, timeout: float) -> float:
        """Spawn it; seconds from the spawn to the first ``GET /readiness`` = 200."""
        with self.log.open("wb") as out:
            t0 = time.perf_counter()
            # a session of its own: a signal meant for this script's process group (Ctrl-C
            # included) does not stop it mid-measurement; stop() signals it. The temp dir as
            # cwd: the parts run `python -m codeswitch`, which puts the cwd first on sys.path,
            # so started from a checkout they would import that checkout's code, not the
            # --gateway-cmd's (a baseline venv run from /work/main would run main's parts)
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=gateway_env(),
                                         start_new_session=True, cwd=self.workdir)
        deadline = t0 + timeout
        last = "no answer"
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise GatewayError(f"codeswitch up exited with {self.proc.returncode} before "
                                   f"it was ready; {self.log}:\n{self.tail()}")
            try:
                resp, _ = await fetch_once(self.url + "/readiness", method="GET", timeout_s=2)
                if resp.status == 200:
                    took = time.perf_counter() - t0
                    self._remember(descendants(self.proc.pid))
                    return took
                last = f"HTTP {resp.status}"
            except (OSError, TimeoutError, ConnectionError) as e:
                last = str(e) or type(e).__name__
            await asyncio.sleep(0.01)
        raise GatewayError(f"not ready after {timeout:g} s ({last}); {self.log}:\n{self.tail()}")

    def memory(self) -> Snapshot:
        assert self.proc is not None
        rc = self.proc.poll()
        if rc is not None:
            why = " (it exits 0 on SIGINT/SIGTERM: stopped from outside?)" if rc == 0 else ""
            raise GatewayError(f"codeswitch up exited with {rc}{why}; {self.log}:\n"
                               + self.tail())
        snap = {m.pid: m for m in tree_memory(self.proc.pid)}
        self._remember(snap)
        return snap

    def _remember(self, pids: Iterable[int]) -> None:
        for pid in pids:
            if pid not in self.seen:
                self.seen[pid] = _started(pid)

    def stop(self, grace: float) -> None:
        """SIGINT (the supervisor stops its parts), then wait for every process of its tree."""
        if self.proc is None:
            return
        self._remember(descendants(self.proc.pid))
        stop_process(self.proc, signal.SIGINT, grace=grace)
        deadline = time.monotonic() + 10
        left: list[int] = []
        while time.monotonic() < deadline:
            # the same pid with the same start time: that process, not a reused pid
            left = [p for p, t in self.seen.items() if t is not None and _started(p) == t]
            if not left:
                return
            time.sleep(0.1)
        for pid in left:  # a part that outlived its supervisor: ours, so ours to end
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        console.print(f"[yellow]killed leftover gateway processes {sorted(left)}[/yellow]")


def _started(pid: int) -> int | None:
    """Start time of a live (not zombie) ``pid`` in clock ticks since boot, None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


# -- load ----------------------------------------------------------------------------------------


@dataclass
class ComboTotals:
    requests: int = 0
    errors: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)
    error_sample: str = ""

    def add(self, r: Result) -> None:
        self.requests += r.requests
        self.errors += r.errors
        self.error_kinds.update(r.error_kinds)
        if r.error_sample and not self.error_sample:
            self.error_sample = r.error_sample

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "error_kinds": dict(self.error_kinds), "error_sample": self.error_sample}


def plan_batch(n: int, concurrency: int, offset: int) -> list[tuple[int, int, int]]:
    """(combo index, workers, requests) for one batch of ``n`` requests: the workers are dealt
    round-robin over the combos (starting at ``offset``, so that with fewer workers than combos
    every combo gets its turn), the requests in proportion to the workers."""
    workers = [0] * len(COMBOS)
    for w in range(concurrency):
        workers[(offset + w) % len(COMBOS)] += 1
    active = [i for i, w in enumerate(workers) if w]
    share = [n * workers[i] // concurrency for i in active]
    for k in range(n - sum(share)):
        share[k % len(share)] += 1
    return [(i, workers[i], s) for i, s in zip(active, share, strict=True) if s]


async def drive(url: str, total: int, concurrency: int, timeout_s: float,
                on_batch: Callable[[int], None]) -> tuple[list[ComboTotals], float]:
    """``total`` requests, closed loop at ``concurrency``, in batches of about 1 % (the mix
    stays even the whole way and progress can be shown); per combo totals, seconds."""
    requests = [client_request(d, s, model_of(d)) for d, s in COMBOS]
    totals = [ComboTotals() for _ in COMBOS]
    batch = max(total // 100, concurrency * 16)
    done, offset = 0, 0
    t0 = time.perf_counter()
    while done < total:
        n = min(batch, total - done)
        plan = plan_batch(n, concurrency, offset)
        offset += concurrency
        results = await asyncio.gather(*(
            run_load(url + requests[i].path, requests[i].body, requests[i].headers, c,
                     requests=k, stream=requests[i].stream, expect=requests[i].expect,
                     timeout_s=timeout_s)
            for i, c, k in plan))
        for (i, _, _), r in zip(plan, results, strict=True):
            totals[i].add(r)
        if done == 0:  # a lane that cannot work at all: stop instead of sending 100k errors
            dead = [(COMBOS[i], r.error_sample) for (i, _, _), r in zip(plan, results,
                                                                       strict=True)
                    if r.requests == 0 and r.errors]
            if dead:
                raise GatewayError("every request of the first batch failed for "
                                   + "; ".join(f"{d} stream={s}: {e}" for (d, s), e in dead))
        done += n
        on_batch(done)
    return totals, time.perf_counter() - t0


# -- output --------------------------------------------------------------------------------------


def mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def kb(m: ProcMem | None, key: str) -> int | None:
    return None if m is None else getattr(m, f"{key}_kb")


def growth(before: int | None, after: int | None) -> float | None:
    if not before or after is None:
        return None
    return (after - before) / before * 100


def pct(g: float | None) -> str:
    if g is None:
        return "-"
    text = f"{g:+.1f}%"
    return f"[red]{text}[/red]" if g >= 20 else text


def total(snap: Snapshot, key: str) -> int | None:
    vals = [getattr(m, key) for m in snap.values()]
    return None if any(v is None for v in vals) or not vals else sum(vals)


def memory_table(title: str, idle: Snapshot, load: Snapshot, rest: Snapshot, n: int,
                 rest_s: float) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("process (title)")
    t.add_column("pid", justify="right")
    for col in ("idle RSS", "idle PSS", "idle USS", f"RSS after {n:,}", "growth",
                f"RSS +{rest_s:g}s rest", f"PSS +{rest_s:g}s", f"USS +{rest_s:g}s", "growth"):
        t.add_column(col, justify="right")
    pids = list(idle) + [p for p in load if p not in idle] \
        + [p for p in rest if p not in idle and p not in load]
    for pid in pids:
        i, ld, r = idle.get(pid), load.get(pid), rest.get(pid)
        m = i or ld or r
        assert m is not None
        label = m.label + ("" if i else " [yellow](new)[/yellow]") \
            + ("" if r else " [yellow](gone)[/yellow]")
        t.add_row(label, str(pid),
                  mb(kb(i, "rss")), mb(kb(i, "pss")), mb(kb(i, "uss")),
                  mb(kb(ld, "rss")), pct(growth(kb(i, "rss"), kb(ld, "rss"))),
                  mb(kb(r, "rss")), mb(kb(r, "pss")), mb(kb(r, "uss")),
                  pct(growth(kb(i, "rss"), kb(r, "rss"))))
    ti, tl, tr = (total(s, "rss_kb") for s in (idle, load, rest))
    t.add_row("[b]total[/b]", "", f"[b]{mb(ti)}[/b]", mb(total(idle, "pss_kb")),
              mb(total(idle, "uss_kb")), f"[b]{mb(tl)}[/b]", pct(growth(ti, tl)),
              f"[b]{mb(tr)}[/b]", mb(total(rest, "pss_kb")), mb(total(rest, "uss_kb")),
              pct(growth(ti, tr)))
    return t


def summary_table(runs: dict[str, dict[str, Any]]) -> Table:
    t = Table(title="footprint summary (MB; totals over the process tree)", title_justify="left")
    for col in ("mode", "processes", "ready s (runs)", "ready s median", "idle RSS",
                "idle PSS", "requests", "req/s", "errors", "RSS after", "RSS after rest",
                "PSS after rest", "growth RSS", "growth PSS"):
        t.add_column(col, justify="left" if col == "mode" else "right")
    for mode, r in runs.items():
        tot = r.get("totals_kb", {})
        load = r.get("load", {})
        idle_rss, rest_rss = tot.get("idle", {}).get("rss"), tot.get("rest", {}).get("rss")
        idle_pss, rest_pss = tot.get("idle", {}).get("pss"), tot.get("rest", {}).get("pss")
        t.add_row(mode, str(len(r.get("idle", []))),
                  ", ".join(f"{x:.2f}" for x in r["readiness_s"]),
                  f"{r['readiness_median_s']:.2f}" if r["readiness_s"] else "-",
                  mb(idle_rss), mb(idle_pss), f"{load.get('requests', 0):,}",
                  f"{load.get('rps', 0):,.0f}", str(load.get("errors", "-")),
                  mb(tot.get("after_load", {}).get("rss")), mb(rest_rss), mb(rest_pss),
                  pct(growth(idle_rss, rest_rss)), pct(growth(idle_pss, rest_pss)))
    return t


def snap_json(snap: Snapshot) -> list[dict[str, Any]]:
    return [asdict(m) for m in snap.values()]


def totals_json(snap: Snapshot) -> dict[str, int | None]:
    return {k: total(snap, f"{k}_kb") for k in ("rss", "pss", "uss")}


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


async def wait_shown(seconds: float, what: str) -> None:
    """Sleep ``seconds`` with a progress bar (rest / settle)."""
    if seconds <= 0:
        return
    with progress_bar() as bar:
        task = bar.add_task(what, total=round(seconds))
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(1.0, left))
            bar.update(task, completed=round(seconds - max(0.0, end - time.monotonic())))


# -- one mode ------------------------------------------------------------------------------------


async def run_mode(a: argparse.Namespace, mode: str, exe: list[str], upstream: int,
                   base: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": mode, "argv_extra": MODES[mode], "readiness_s": [],
                           "readiness_median_s": None}
    config = gateway_config(upstream)
    console.rule(f"[b]{mode}[/b]: codeswitch up {' '.join(MODES[mode])}".rstrip())
    gw: Gateway | None = None
    try:
        for i in range(1, a.readiness_runs + 1):
            gw = Gateway(exe, MODES[mode], base / f"{mode}-{i}", config)
            if i == 1:
                console.print(f"[dim]{' '.join(gw.argv)}[/dim]")
            took = await gw.start(a.ready_timeout)
            out["readiness_s"].append(round(took, 3))
            console.print(f"readiness run {i}/{a.readiness_runs}: {took:.3f} s")
            if i < a.readiness_runs:
                await asyncio.to_thread(gw.stop, a.stop_grace)
        out["readiness_median_s"] = round(statistics.median(out["readiness_s"]), 3)
        console.print(f"readiness median: [b]{out['readiness_median_s']:.3f} s[/b] "
                      f"({', '.join(f'{x:.3f}' for x in out['readiness_s'])})")
        assert gw is not None
        await wait_shown(a.settle, f"settle {a.settle:g} s")
        idle = gw.memory()
        out["idle"] = snap_json(idle)
        out["totals_kb"] = {"idle": totals_json(idle)}
        console.print(idle_table(mode, idle))
        if a.requests <= 0:
            return out

        g = gw
        samples: list[dict[str, Any]] = []
        every = max(1, a.requests // 10)
        next_sample = every
        plain = not console.is_terminal
        with progress_bar() as bar:
            task = bar.add_task(f"{a.requests:,} requests c={a.concurrency}", total=a.requests)

            def on_batch(done: int) -> None:
                nonlocal next_sample
                snap = g.memory()  # also raises if the gateway died
                rss = sum(m.rss_kb for m in snap.values())
                bar.update(task, completed=done,
                           description=f"{a.requests:,} requests c={a.concurrency}, "
                                       f"RSS {rss / 1024:,.0f} MB")
                if done >= next_sample or done == a.requests:
                    next_sample += every
                    samples.append({"requests": done, "rss_kb": {
                        f"{m.label} {m.pid}": m.rss_kb for m in snap.values()},
                        "rss_total_kb": rss, "t_s": round(bar.tasks[0].elapsed or 0, 1)})
                    if plain:
                        console.print(f"  {done:,} requests, RSS total {rss / 1024:,.1f} MB")

            combos, elapsed = await drive(gw.url, a.requests, a.concurrency, a.timeout,
                                          on_batch)
        after_load = gw.memory()
        ok = sum(c.requests for c in combos)
        errors = sum(c.errors for c in combos)
        out["load"] = {"requests": a.requests, "ok": ok, "errors": errors,
                       "seconds": round(elapsed, 2), "rps": round(ok / elapsed, 1),
                       "concurrency": a.concurrency,
                       "by_combo": {f"{d} {'stream' if s else 'non-stream'}": c.to_dict()
                                    for (d, s), c in zip(COMBOS, combos, strict=True)},
                       "rss_samples": samples}
        console.print(f"{ok:,} ok, {errors:,} errors in {elapsed:.1f} s "
                      f"({ok / elapsed:,.0f} req/s)")
        for (d, s), c in zip(COMBOS, combos, strict=True):
            if c.errors:
                console.print(f"[red]{d} stream={s}: {c.errors} errors "
                              f"{dict(c.error_kinds)}: {c.error_sample[:200]}[/red]")
        await wait_shown(a.rest, f"rest {a.rest:g} s")
        rest = gw.memory()
        out["after_load"] = snap_json(after_load)
        out["after_rest"] = snap_json(rest)
        out["totals_kb"].update(after_load=totals_json(after_load), rest=totals_json(rest))
        console.print(memory_table(f"{mode}: memory in MB, idle / after {a.requests:,} "
                                   f"requests / after {a.rest:g} s rest",
                                   idle, after_load, rest, a.requests, a.rest))
        return out
    except GatewayError as e:
        console.print(f"[red]{mode}: {e}[/red]")
        out["error"] = str(e)
        a.keep_tmp = True
        return out
    finally:
        if gw is not None:
            await asyncio.to_thread(gw.stop, a.stop_grace)


def idle_table(mode: str, idle: Snapshot) -> Table:
    t = Table(title=f"{mode}: idle memory in MB", title_justify="left")
    for col in ("process (title)", "pid", "RSS", "PSS", "USS"):
        t.add_column(col, justify="left" if col.startswith("process") else "right")
    for m in idle.values():
        t.add_row(m.title if len(m.title) <= 60 else m.label, str(m.pid), mb(m.rss_kb),
                  mb(m.pss_kb), mb(m.uss_kb))
    t.add_row("[b]total[/b]", "", f"[b]{mb(total(idle, 'rss_kb'))}[/b]",
              mb(total(idle, "pss_kb")), mb(total(idle, "uss_kb")))
    return t


# -- main ----------------------------------------------------------------------------------------


def gateway_exe(a: argparse.Namespace) -> list[str]:
    if a.gateway_cmd:
        return str(a.gateway_cmd).split()
    found = shutil.which("codeswitch", path=str(Path(sys.executable).parent))
    return [found or "codeswitch"]


def git_of(exe: list[str]) -> dict[str, Any]:
    """The commit of the checkout a ``<repo>/.venv/bin/codeswitch`` belongs to, if any."""
    try:
        repo = Path(exe[0]).parent.parent.parent
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--",
                                ".", ":!bench"], capture_output=True, text=True,
                               timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    return {"repo": str(repo), "commit": head, "dirty_outside_bench": bool(dirty)}


async def amain(a: argparse.Namespace) -> int:
    started = time.strftime("%Y%m%d-%H%M%S")
    base = Path(tempfile.mkdtemp(prefix="cs-footprint-"))
    exe = gateway_exe(a)
    meta: dict[str, Any] = {
        "started": started, "argv": sys.argv[1:], "gateway_cmd": exe,
        "gateway_git": git_of(exe),
        "machine": {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg(),
                    "python": platform.python_version(), "platform": platform.platform()}}
    console.print(f"gateway: {' '.join(exe)}"
                  + (f" (git {meta['gateway_git']['commit'][:10]})" if meta["gateway_git"]
                     else "") + f"; temp dir {base}")
    runs: dict[str, dict[str, Any]] = {}
    upstream_log = (base / "upstream.log").open("wb")
    port = free_port()
    upstream = subprocess.Popen([sys.executable, str(HERE / "fake_upstream.py"), "--port",
                                 str(port)], stdout=upstream_log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        if not wait_port(port, upstream):
            raise SystemExit(f"fake upstream did not start; see {base / 'upstream.log'}")
        for mode in a.modes:
            runs[mode] = await run_mode(a, mode, exe, port, base)
    finally:
        stop_process(upstream, signal.SIGTERM, grace=5)
        upstream_log.close()
        if a.keep_tmp:
            console.print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    console.print(summary_table(runs))
    meta["machine"]["loadavg_after"] = os.getloadavg()
    if a.json:
        path = Path(a.results_dir) / f"footprint-{started}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**meta, "args": vars(a), "runs": runs}, indent=1,
                                   default=str))
        console.print(f"results: {path}")
    return 1 if any("error" in r for r in runs.values()) else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)

    def modes(s: str) -> list[str]:
        out = [m.strip() for m in s.split(",") if m.strip()]
        bad = [m for m in out if m not in MODES]
        if bad or not out:
            raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}; got {s!r}")
        return out

    p.add_argument("--modes", type=modes, default=list(MODES),
                   help="which runs: default (a process per part), single (--single-process)")
    p.add_argument("--gateway-cmd", help="command that runs the gateway CLI "
                   "(default: codeswitch next to this python)")
    p.add_argument("--readiness-runs", type=int, default=3,
                   help="starts per mode, each on a fresh home (3); the last one is measured")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after ready before idle")
    p.add_argument("--requests", type=int, default=100_000, help="0: idle only")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rest", type=float, default=60.0, help="seconds idle after the load")
    p.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.add_argument("--stop-grace", type=float, default=40.0,
                   help="seconds to wait for the gateway to exit after SIGINT")
    p.add_argument("--json", action="store_true",
                   help="also write bench/results/footprint-<timestamp>.json")
    p.add_argument("--results-dir", default=str(HERE / "results"))
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp homes and logs")
    a = p.parse_args(argv)
    if a.readiness_runs < 1:
        p.error("--readiness-runs must be at least 1")
    if a.concurrency < 1:
        p.error("--concurrency must be at least 1")
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
