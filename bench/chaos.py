"""Chaos, the long version: kill -9 each part of a running ``codeswitch up`` under load, many
requests, several times; and a memory mode (RSS per process before, after N requests, and
after a rest).

The harness is shared with the CI tests: ``tests/chaos/harness.py`` (what is checked and how is
described there and in bench/README.md, section "chaos.py").

    .venv/bin/python bench/chaos.py                                  # every part, 2,000 req each
    .venv/bin/python bench/chaos.py --parts router,edge --requests 5000 --repeat 3
    .venv/bin/python bench/chaos.py --memory --memory-requests 100000 --rest 60

Exit status: 0 when every run met every requirement (nothing lost, nothing doubled, every client
answered, undelivered marked, no retryable status after the upstream saw a request, router-lost
streams with their error event within 2 s, recovered), 1 otherwise. Results are also written
as JSON to bench/results/chaos-<stamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chaos.harness import (  # noqa: E402
    FAST_MIX,
    PARTS,
    ChaosFakes,
    Gateway,
    Load,
    PartReport,
    run_kill,
)

_probe = Console()
console = _probe if _probe.is_terminal else Console(width=200)


def _s(v: float | None) -> str:
    return "never" if v is None else f"{v:.2f}"


def _n(items: list[str] | int) -> str:
    n = items if isinstance(items, int) else len(items)
    return f"[red]{n}[/red]" if n else "0"


def problems(rep: PartReport) -> list[str]:
    """The requirements this run missed (empty: all met)."""
    out = []
    for name, items in (("lost", rep.lost), ("doubled", rep.doubled),
                        ("upstream doubled", rep.upstream_doubled),
                        ("bad answers", rep.bad_answers), ("unmarked", rep.unmarked),
                        ("retryable status after upstream", rep.retried_after_upstream),
                        ("router-lost stream error > 2 s", rep.router_stream_late)):
        if items:
            out.append(f"{name}: {len(items)}")
    if rep.part != "none" and not rep.restarted:
        out.append("not restarted")
    if rep.part != "none" and rep.recovery_s is None:
        out.append("requests never succeeded again")
    if not rep.ledger_caught_up.startswith("caught up"):
        out.append("ledger did not catch up")
    return out


def part_table(part: str, reports: list[PartReport]) -> Table:
    table = Table(title=f"kill -9 {part}", title_justify="left")
    for col in ("run", "sent", "complete", "lost", "doubled", "undelivered", "unmarked",
                "bad answers", "excused cuts", "retryable after upstream", "router streams "
                "(late, max s)", "restart s", "back s", "recovery s", "restarted", "ledger"):
        table.add_column(col, justify="left" if col in ("run", "ledger") else "right")
    for i, r in enumerate(reports, 1):
        streams = "-"
        if r.router_streams:
            worst = max(r.router_stream_delays, default=None)
            streams = f"{len(r.router_streams)} ({_n(r.router_stream_late)}, {_s(worst)})"
        table.add_row(
            str(i), str(r.sent), str(r.complete), _n(r.lost),
            _n(len(r.doubled) + len(r.upstream_doubled)),
            str(r.undelivered), _n(r.unmarked), _n(r.bad_answers), str(r.excused_cuts),
            _n(r.retried_after_upstream), streams, _s(r.restart_s), _s(r.back_s),
            _s(r.recovery_s), "yes" if r.restarted else "[red]no[/red]",
            f"{r.ledger_rows} rows" + ("" if r.ledger_caught_up.startswith("caught up")
                                      else " [red]behind[/red]"))
    return table


def memory_table(title: str, columns: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("process")
    for name in columns:
        table.add_column(f"RSS MB {name}", justify="right")
    labels = sorted({k for col in columns.values() for k in col})
    for label in labels:
        table.add_row(label, *(f"{col[label]:.1f}" if label in col else "-"
                               for col in columns.values()))
    table.add_row("[b]total[/b]", *(f"{sum(col.values()):.1f}" for col in columns.values()))
    return table


async def kill_runs(args: argparse.Namespace, fakes: ChaosFakes, base: Path) -> dict[str, Any]:
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    results: dict[str, list[PartReport]] = {}
    failed = False
    for part in parts:
        for rep_no in range(1, args.repeat + 1):
            console.print(f"[b]kill -9 {part}[/b] run {rep_no}/{args.repeat}: "
                          f"{args.requests} requests at c={args.concurrency}")
            report = await run_kill(
                base / f"{part}-{rep_no}", fakes, part, requests=args.requests,
                concurrency=args.concurrency, recover_within=args.recover_within,
                log=lambda s: console.print(f"  [dim]{s}[/dim]"))
            results.setdefault(part, []).append(report)
            missed = problems(report)
            failed |= bool(missed)
            console.print(f"  {'[red]' + '; '.join(missed) + '[/red]' if missed else 'all met'}"
                          f" ({report.duration_s:.0f} s)")
            if args.verbose or missed:
                console.print(report.render(limit=args.show), highlight=False, markup=False)
        console.print(part_table(part, results[part]))
        last = results[part][-1]
        console.print(memory_table(f"memory, kill -9 {part} (last run)",
                                   {"before": last.rss_before, "after": last.rss_after}))
    return {"failed": failed,
            "parts": {p: [r.to_json() for r in reps] for p, reps in results.items()}}


async def memory_run(args: argparse.Namespace, fakes: ChaosFakes,
                     base: Path) -> dict[str, Any]:
    base.mkdir(parents=True, exist_ok=True)
    gw = Gateway(base, fakes)
    await asyncio.to_thread(gw.start)
    try:
        before = gw.rss()
        load = Load(gw.url, "0000beef", concurrency=args.concurrency, mix=FAST_MIX, keep=False,
                    limit=args.memory_requests)
        started = time.monotonic()

        def progress(o: object) -> None:
            if load.done % 5000 == 0:
                fakes.clear()  # the fakes' request records are the harness's memory, not ours
            if load.done % args.progress_every == 0:
                rate = load.done / max(1e-9, time.monotonic() - started)
                console.print(f"  {load.done:,} requests ({rate:,.0f}/s) {dict(load.kinds)} "
                              f"RSS MB " + ", ".join(f"{k} {v:.0f}"
                                                     for k, v in sorted(gw.rss().items())))

        load.on_done = progress
        await load.run()
        elapsed = time.monotonic() - started
        caught, seen = await gw.wait_ledger_caught_up(timeout=120)
        after = gw.rss()
        console.print(f"{load.done:,} requests in {elapsed:.0f} s ({load.done / elapsed:,.0f}/s):"
                      f" {dict(load.kinds)}; ledger {'caught up' if caught else 'BEHIND'} "
                      f"({seen}); resting {args.rest:.0f} s")
        await asyncio.sleep(args.rest)
        rested = gw.rss()
    finally:
        gw.stop()
    columns = {"before": before, f"after {load.done:,} req": after,
               f"after {args.rest:.0f} s rest": rested}
    console.print(memory_table("memory", columns))
    return {"failed": load.kinds.get("complete", 0) != load.done or not caught,
            "memory": {"requests": load.done, "seconds": elapsed, "kinds": dict(load.kinds),
                       "rss_mb": columns, "ledger": seen}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated parts to kill (default: {','.join(PARTS)}; "
                         "'none' = a control run without a kill)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per run (2000)")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent clients (8)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per part (1)")
    ap.add_argument("--recover-within", type=float, default=60.0,
                    help="seconds after the kill to wait for recovery (60)")
    ap.add_argument("--memory", action="store_true",
                    help="memory mode: N requests, RSS before / after / after a rest")
    ap.add_argument("--memory-requests", type=int, default=100_000)
    ap.add_argument("--rest", type=float, default=60.0, help="rest before the last RSS (60)")
    ap.add_argument("--progress-every", type=int, default=10_000)
    ap.add_argument("--show", type=int, default=10, help="offending requests shown per list")
    ap.add_argument("-v", "--verbose", action="store_true", help="full report of every run")
    ap.add_argument("--keep-tmp", action="store_true", help="keep homes, configs and logs")
    ap.add_argument("--json", type=Path, default=None, help="results file (default "
                    "bench/results/chaos-<stamp>.json)")
    args = ap.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="cs-chaos-"))
    out: dict[str, Any] = {"argv": sys.argv[1:], "started": time.time()}
    try:
        with ChaosFakes() as fakes:
            if args.memory:
                out.update(asyncio.run(memory_run(args, fakes, base / "memory")))
            else:
                out.update(asyncio.run(kill_runs(args, fakes, base)))
    finally:
        if args.keep_tmp:
            console.print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    path = args.json or ROOT / "bench" / "results" / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    console.print(f"results: {path}")
    return 1 if out.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
