"""Rich output for compare.py: the check table, the results table, the bars and summaries."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from compare import Cell, Lane

__all__ = ["bars", "console", "cpu_ms", "live_table", "print_checks", "print_summary"]

_probe = Console()
console = _probe if _probe.is_terminal else Console(width=220)

# (lane, mode, concurrency, metric, limit, text); metric "added_p50" / "added_ttfb" are upper
# limits in ms, "rps" a lower limit in successful requests per second with zero errors
BARS: list[tuple[str, str, int, str, float, str]] = [
    ("pass-through", "non-stream", 1, "added_p50", 2.0, "added p50 at c=1 <= 2 ms (non-stream)"),
    ("pass-through", "stream", 1, "added_ttfb", 2.0, "added TTFB p50 at c=1 <= 2 ms (stream)"),
    ("pass-through", "non-stream", 64, "rps", 800.0,
     ">= 800 req/s at c=64 via codeswitch, 0 errors"),
    ("pass-through", "stream", 64, "rps", 300.0,
     ">= 300 streams/s at c=64 via codeswitch, 0 errors"),
]


def _p(d: dict[str, float], k: str = "p50") -> float | None:
    return d.get(k)


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def cpu_ms(c: Cell) -> float | None:
    """Gateway CPU milliseconds per successful request in this cell."""
    return round(c.gateway_cpu_s * 1000 / c.via.requests, 4) if c.via.requests else None


def _bar_value(c: Cell, metric: str) -> float | None:
    if metric == "added_p50":
        return _sub(_p(c.via.latency_ms), _p(c.direct.latency_ms))
    if metric == "added_ttfb":
        return _sub(_p(c.via.ttfb_ms), _p(c.direct.ttfb_ms))
    return c.via.throughput_rps


def bars(cells: list[Cell]) -> list[dict[str, Any]]:
    out = []
    for lane, mode, conc, metric, limit, text in BARS:
        cell = next((c for c in cells if (c.lane, c.mode, c.concurrency) == (lane, mode, conc)),
                    None)
        value = None if cell is None else _bar_value(cell, metric)
        ok: bool | None = None
        if cell is not None and value is not None:
            ok = value >= limit and cell.via.errors == 0 if metric == "rps" else value <= limit
        out.append({"bar": text, "lane": lane, "mode": mode, "concurrency": conc,
                    "metric": metric, "limit": limit, "value": value, "pass": ok,
                    "errors": None if cell is None else cell.via.errors})
    return out


def _verdict(ok: bool | None) -> str:
    return "[dim]n/a[/dim]" if ok is None else "[green]PASS[/green]" if ok else "[red]FAIL[/red]"


def print_checks(checks: list[dict[str, Any]]) -> None:
    t = Table(title="one request per lane (body checked: status, 20 pieces, terminator)")
    for col in ("lane", "mode", "ok", "status", "pieces", "data: lines", "bytes", "ttfb ms",
                "total ms", "problem"):
        t.add_column(col, justify="left" if col in ("lane", "problem") else "right")
    for c in checks:
        t.add_row(c["lane"], "stream" if c["stream"] else "non-stream",
                  "[green]yes[/green]" if c["ok"] else "[red]NO[/red]", str(c.get("status", "-")),
                  str(c.get("pieces", "-")), str(c.get("events", "-")),
                  str(c.get("bytes", "-")), _f(c.get("ttfb_ms")), _f(c.get("total_ms")),
                  (c.get("problem") or "")[:120])
    console.print(t)
    sc = next((c for c in checks if c["lane"] == "stream-check"), None)
    if sc and sc.get("ok"):
        incremental = sc["ttfb_ms"] < 0.5 * sc["total_ms"]
        console.print(
            f"stream relay (upstream sends 20 chunks 10 ms apart): first byte after "
            f"{sc['ttfb_ms']:.1f} ms of {sc['total_ms']:.1f} ms -> "
            + ("[green]incremental[/green]" if incremental else "[red]BUFFERED[/red]"))


class _Table:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.cells: list[Cell] = []

    def add(self, c: Cell) -> None:
        self.cells.append(c)
        d, v = c.direct, c.via
        console.print(
            f"[dim]{c.lane:>12} {c.mode:>10} c={c.concurrency:<3}[/dim] "
            f"direct p50 {_f(_p(d.latency_ms), '.3f')} ms {d.throughput_rps:,.0f}/s | "
            f"via p50 {_f(_p(v.latency_ms), '.3f')} ms {v.throughput_rps:,.0f}/s "
            f"errors {d.errors}/{v.errors}")

    def finish(self) -> None:
        bar_rows = {(ln, m, c): (metric, lim) for ln, m, c, metric, lim, _ in BARS}
        t = Table(title=f"codeswitch vs direct ({self.a.dialect}; {self.a.duration:g}s per run; "
                        "latency = full response, ms)")
        cols = ["lane", "mode", "c", "direct p50", "direct p99", "via p50", "via p99",
                "+p50", "TTFB direct", "TTFB via", "+TTFB", "direct /s", "via /s", "via/direct",
                "errors d/v", "gw CPU ms/req", "bar"]
        for col in cols:
            t.add_column(col, justify="left" if col in ("lane", "mode", "bar") else "right")
        for c in self.cells:
            d, v = c.direct, c.via
            stream = c.mode == "stream"
            ratio = v.throughput_rps / d.throughput_rps if d.throughput_rps else None
            bar = bar_rows.get((c.lane, c.mode, c.concurrency))
            verdict = ""
            if bar is not None:
                metric, lim = bar
                val = _bar_value(c, metric)
                ok = None if val is None else (
                    val >= lim and v.errors == 0 if metric == "rps" else val <= lim)
                verdict = _verdict(ok)
            t.add_row(
                c.lane, c.mode, str(c.concurrency),
                _f(_p(d.latency_ms), ".3f"), _f(_p(d.latency_ms, "p99"), ".3f"),
                _f(_p(v.latency_ms), ".3f"), _f(_p(v.latency_ms, "p99"), ".3f"),
                _f(_sub(_p(v.latency_ms), _p(d.latency_ms)), "+.3f"),
                _f(_p(d.ttfb_ms), ".3f") if stream else "",
                _f(_p(v.ttfb_ms), ".3f") if stream else "",
                _f(_sub(_p(v.ttfb_ms), _p(d.ttfb_ms)), "+.3f") if stream else "",
                f"{d.throughput_rps:,.0f}", f"{v.throughput_rps:,.0f}", _f(ratio, ".3f"),
                f"{d.errors}/{v.errors}" if not (d.errors or v.errors)
                else f"[red]{d.errors}/{v.errors}[/red]",
                _f(cpu_ms(c), ".3f"), verdict)
        console.print(t)


def live_table(a: argparse.Namespace) -> _Table:
    return _Table(a)


def print_summary(cells: list[Cell], lanes: list[Lane], bar_list: list[dict[str, Any]]) -> None:
    _print_cpu(cells)
    console.print("[bold]bars[/bold] (pass-through lane)")
    for b in bar_list:
        val = b["value"]
        shown = "-" if val is None else (f"{val:,.0f} /s" if b["metric"] == "rps"
                                         else f"{val:+.3f} ms")
        errs = "" if b["errors"] in (None, 0) else f", {b['errors']} errors"
        console.print(f"  {_verdict(b['pass'])}  {b['bar']}: {shown}{errs}")
    by = {(c.lane, c.mode, c.concurrency): c for c in cells}
    for lane in lanes:
        if lane.name == "pass-through":
            continue
        console.print(f"[bold]{lane.name}[/bold]: {lane.note}")
        mine = [c for c in cells if c.lane == lane.name]
        if not mine:
            console.print("  not measured")
        for c in mine:
            base = by.get(("pass-through", c.mode, c.concurrency))
            if base is None:
                continue
            added = _sub(_p(c.via.latency_ms), _p(base.via.latency_ms))
            cm, bm = cpu_ms(c), cpu_ms(base)
            cpu = "" if cm is None or not bm else \
                f"; gateway CPU {cm:.3f} vs {bm:.3f} ms/req (x{cm / bm:.2f})"
            fb = ""
            if "upstream_503s" in c.extra:
                sent = c.via.requests + c.via.errors
                fb = (f"; {c.extra['upstream_503s']:,} of {sent:,} requests were tried on the "
                      "503 provider first")
            console.print(f"  {c.mode:>10} c={c.concurrency:<3} p50 vs pass-through "
                          f"{_f(added, '+.3f')} ms{cpu}; errors {c.via.errors}{fb}")
    client = max((c.client_cpu_s / c.via.elapsed_s for c in cells if c.via.elapsed_s), default=0)
    if client > 0.85:
        console.print(f"[yellow]note: the load generator used up to {client:.0%} of a core; "
                      "throughput may be client-bound[/yellow]")


def _print_cpu(cells: list[Cell]) -> None:
    """Gateway CPU per request, split by process (edge, router, workers, nats-server)."""
    names: list[str] = []
    for c in cells:
        for k, v in c.gateway_cpu_by_part.items():
            if k not in names and v > 0:
                names.append(k)
    if not names:
        return
    t = Table(title="gateway CPU ms per request, by process")
    for col in ("lane", "mode", "c", *names, "total"):
        t.add_column(col, justify="left" if col in ("lane", "mode") else "right")
    for c in cells:
        n = c.via.requests
        row = [_f(c.gateway_cpu_by_part.get(k, 0.0) * 1000 / n if n else None, ".3f")
               for k in names]
        t.add_row(c.lane, c.mode, str(c.concurrency), *row, _f(cpu_ms(c), ".3f"))
    console.print(t)
