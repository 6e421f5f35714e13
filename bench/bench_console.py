"""The console's load time with a big ledger, and the edge's LLM dispatch with the console
mounted.

    python bench/bench_console.py                      # 1,000,000 requests, API and Chromium
    python bench/bench_console.py --requests 100000 --runs 5
    python bench/bench_console.py --only hot-path     # the edge's dispatch, this tree vs another

**load**: a ledger file with N requests over the last 30 days (the ledger's own projection of
generated facts, tests/ledger/eventgen.py, the same as bench_ledger.py), the ledger service on
it, an edge with the console, then per page: the API calls the page makes (``/dashboard``;
``/stats`` and ``/heatmap`` for Statistics) timed over HTTP, and the whole page in Debian's
Chromium (navigation until the page has rendered its data: ``#view[data-ready]``). Median and
max of ``--runs``; then, for the last run, each file and API call from the navigation's start
(Resource Timing: asked, first byte, done, bytes), to see where the time went. The API calls
are the page's own (``fields``: the metrics it shows).

**hot-path**: ``EdgeApp._http`` for ``POST /v1/messages`` with ``_llm`` stubbed out (what the
console could add to an LLM request is in that dispatch), in this tree and in ``--other``
(default /work/main, the tree before the console), in fresh processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HOT = r"""
import asyncio, sys, time
sys.path.insert(0, {root!r})
from edge.app import EdgeApp

async def main():
    app = EdgeApp("nats://127.0.0.1:1")
    async def llm(*a): return None
    app._llm = llm
    scope = {{"type": "http", "method": "POST", "path": "/v1/messages", "query_string": b"",
              "headers": [(b"x-api-key", b"k"), (b"content-type", b"application/json"),
                          (b"anthropic-version", b"2023-06-01")]}}
    async def receive(): return {{}}
    async def send(m): return None
    best = []
    for _ in range(7):
        n = 200_000
        t = time.perf_counter()
        for _ in range(n):
            await app._http(scope, receive, send)
        best.append((time.perf_counter() - t) / n * 1e9)
    # deterministic, whatever the load: the lines of _http one LLM request runs
    lines = []
    code = EdgeApp._http.__code__
    def tracer(frame, event, arg):
        if frame.f_code is code:
            def local(frame, event, arg):
                if event == "line":
                    lines.append(frame.f_lineno - code.co_firstlineno)
                return local
            return local
        return None
    sys.settrace(tracer)
    await app._http(scope, receive, send)
    sys.settrace(None)
    print(min(best), len(lines))

asyncio.run(main())
"""


def hot_path(other: Path, rounds: int = 3) -> None:
    """Alternating fresh processes (the machine is shared: a single pair says little)."""
    best: dict[str, list[float]] = {}
    traced: dict[str, int] = {}
    for _ in range(rounds):
        for name, root in (("without the console (" + str(other) + ")", other),
                           ("with the console (this tree)", ROOT)):
            out = subprocess.run([sys.executable, "-c", HOT.format(root=str(root))],
                                 capture_output=True, text=True, check=True, cwd="/",
                                 env={**os.environ, "PYTHONPATH": str(root)})
            ns, lines = out.stdout.split()
            best.setdefault(name, []).append(float(ns))
            traced[name] = int(lines)
    for name, values in best.items():
        print(f"EdgeApp._http, POST /v1/messages, {name}: {traced[name]} lines of _http run; "
              f"best {min(values):.0f} ns, rounds {', '.join(f'{v:.0f}' for v in values)} "
              f"(each best of 7 x 200,000; load {os.getloadavg()[0]:.1f})")


def reuse(home: Path) -> None:
    """A kept ledger (its times as they were built: the dashboard's last hour empties as it
    ages; rebuild it for that)."""
    from workers.ledger.service import db_path
    from workers.ledger.store import Store

    with Store(db_path(home), read_only=True) as store:
        got = store.con.execute("SELECT count(*), max(ts) FROM requests").fetchone()
    assert got is not None
    print(f"reusing {got[0]:,} requests in {home}, the last {time.time() - got[1]:.0f} s ago")


def build(home: Path, requests: int) -> None:
    from schemas.events import encode_event
    from schemas.prices import PriceBook
    from tests.ledger.eventgen import generate, subject_of
    from workers.ledger.projection import Rows, project
    from workers.ledger.service import db_path
    from workers.ledger.store import Store

    home.mkdir(parents=True, exist_ok=True)
    book = PriceBook()
    now = time.time()
    t = time.perf_counter()
    seq = 1
    with Store(db_path(home)) as store:
        chunk = 100_000
        for part in range(0, requests, chunk):
            n = min(chunk, requests - part)
            span = 30 * 86400 * n / requests
            start = now - 30 * 86400 + 30 * 86400 * part / requests
            rows = Rows()
            for i, e in enumerate(generate(n, seed=100 + part // chunk, start=start,
                                           span_s=span), start=seq):
                rows.add(project(i, subject_of(e), encode_event(e), book))
                if rows.count >= 5000:
                    store.apply(rows)
                    rows = Rows()
                seq = i + 1
            store.apply(rows)
        # (generated times end near now, give or take the generator's noise: no UPDATE of the
        # times, which would leave DuckDB's per-row-group min/max less tight than a real
        # ledger's, and every time filter slower)
        got = store.con.execute("SELECT count(*), max(ts) FROM requests").fetchone()
        # the file's watermark is of events no stream holds: the service would set it aside
        store.con.execute("UPDATE ledger_state SET last_seq = 0")
    assert got is not None
    print(f"built {got[0]:,} requests ({seq - 1:,} events), the last {now - got[1]:.0f} s "
          f"ago, in {time.perf_counter() - t:.0f} s")


def load(requests: int, runs: int, browser: bool, keep: Path | None = None) -> None:
    import httpx
    import uvicorn

    from edge.app import EdgeApp
    from edge.server import make_config
    from runtime import bus
    from runtime.natsd import EmbeddedNats
    from runtime.process import free_port
    from schemas.config import GatewaySettings
    from workers.ledger import service

    tmp = Path(tempfile.mkdtemp(prefix="bench-console-"))
    ledger_home = keep or tmp / "ledger"
    if keep is not None and (keep / service.DB_FILE).exists():
        reuse(keep)
    else:
        build(ledger_home, requests)
    nats = EmbeddedNats(tmp / "nats")
    nats.start()

    async def prepare() -> None:
        nc = await bus.connect(nats.url, name="bench")
        await bus.ensure_all(nc.jetstream())
        await nc.close()
    asyncio.run(prepare())
    stop_box: dict[str, Any] = {}

    def run_ledger() -> None:
        async def main() -> None:
            stop_box["stop"] = asyncio.Event()
            stop_box["loop"] = asyncio.get_running_loop()
            await service.run(nats.url, ledger_home, stop_box["stop"])
        asyncio.run(main())
    led = threading.Thread(target=run_ledger, daemon=True)
    led.start()
    app = EdgeApp(nats.url, settings=GatewaySettings(), home=tmp / "home")
    port = free_port()
    server = uvicorn.Server(make_config(app, "127.0.0.1", port, grace=1))
    edge = threading.Thread(target=server.run, daemon=True)
    edge.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    tz = -time.timezone
    since7 = time.time() - 7 * 86400
    pages = {
        "dashboard": [("/admin/api/dashboard", {"tz_offset_s": tz})],
        # what app.js asks (statsQuery): only the metrics the page shows
        "stats": [("/admin/api/stats", {"since": since7, "bucket": "hour", "by": "provider",
                                        "tz_offset_s": tz, "fields": "total_tokens,cost,"
                                        "last_ts,p50_latency_ms,p95_ttfb_ms"}),
                  ("/admin/api/heatmap", {"since": time.time() - 365 * 86400,
                                          "tz_offset_s": tz, "fields": "cost"})],
    }
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            deadline = time.monotonic() + 120
            while True:  # the ledger answers once it has opened the file
                r = c.get("/admin/api/dashboard", params={"tz_offset_s": tz})
                if r.status_code == 200 and isinstance(r.json().get("today"), dict) and \
                        "requests" in r.json()["today"]:
                    break
                assert time.monotonic() < deadline, r.text
                time.sleep(0.5)
            print(f"today: {r.json()['today']['requests']:,} requests; "
                  f"load average {os.getloadavg()[0]:.1f}")
            for page, calls in pages.items():
                times = []
                for _ in range(runs):
                    t = time.perf_counter()
                    for path, params in calls:  # the page makes these at the same time;
                        assert c.get(path, params=params).status_code == 200  # timed in turn
                    times.append((time.perf_counter() - t) * 1000)
                print(f"API {page:<10} median {statistics.median(times):6.0f} ms  max "
                      f"{max(times):6.0f} ms  ({runs} runs, {'+'.join(p for p, _ in calls)})")
        if browser:
            _browser(url, pages, runs)
    finally:
        server.should_exit = True
        edge.join(10)
        stop_box["loop"].call_soon_threadsafe(stop_box["stop"].set)
        led.join(30)
        nats.stop()


def _browser(url: str, pages: dict[str, Any], runs: int) -> None:
    from playwright.sync_api import sync_playwright

    from tests.console.browser import ARGS, ensure_chromium

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=ensure_chromium(), args=ARGS, headless=True)
        ctx = b.new_context(viewport={"width": 1280, "height": 800})
        page = ctx.new_page()
        page.goto(f"{url}/console#/dashboard")  # open mode: the session cookie
        page.wait_for_selector("#view[data-ready=dashboard]", timeout=60000)
        for name in pages:
            times = []
            for _ in range(runs):
                page.goto(f"{url}/console#/{name}")
                page.reload()
                page.wait_for_selector(f"#view[data-ready={name}]", timeout=60000)
                # app.js marks the moment the page has drawn its data: from the navigation's
                # start, as the browser counts it
                times.append(page.evaluate(
                    f"performance.getEntriesByName('cs-ready-{name}')[0].startTime"))
            print(f"Chromium {name:<10} median {statistics.median(times):6.0f} ms  max "
                  f"{max(times):6.0f} ms  (navigation start to the page's data drawn)")
            # where the last run's time went (drawn at times[-1]): each file and API call,
            # from the navigation
            print(f"    last run: drawn at {times[-1]:.0f} ms")
            for e in page.evaluate("""() => [...performance.getEntriesByType('navigation'),
                    ...performance.getEntriesByType('resource')].map(e => [
                    e.name.replace(location.origin, '').split('?')[0].slice(0, 40),
                    e.startTime, e.requestStart, e.responseStart, e.responseEnd,
                    e.transferSize])"""):
                print(f"    {e[0]:<40} start {e[1]:6.0f}  asked {e[2]:6.0f}  first byte "
                      f"{e[3]:6.0f}  done {e[4]:6.0f} ms  {e[5]:>8,} B")
        b.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["load", "hot-path"])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--other", type=Path, default=Path("/work/main"))
    parser.add_argument("--keep", type=Path, default=None,
                        help="build the ledger there once and reuse it on later runs")
    args = parser.parse_args()
    if args.only in (None, "hot-path"):
        hot_path(args.other)
    if args.only in (None, "load"):
        load(args.requests, args.runs, not args.no_browser, args.keep)


if __name__ == "__main__":
    main()
