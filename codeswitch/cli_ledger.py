"""Ledger commands: stats, log, heatmap, replay, export. They never open the DuckDB file: they
ask the ledger service over NATS (``cs.ledger.<query>``). ``register(app)`` adds them."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from nats.aio.client import Client as NATS
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from codeswitch.reads import NOT_RUNNING, LedgerError, LedgerUnavailableError, ledger
from codeswitch.tables import log_table, metrics_table
from runtime import bus
from runtime.home import home_dir, masked_url, nats_url_for

__all__ = ["LedgerUnavailableError", "ask", "parse_time", "register"]

T = TypeVar("T")

HomeOpt = Annotated[Path | None, typer.Option("--home", help="data directory")]
UrlOpt = Annotated[str | None, typer.Option("--nats-url", help="NATS of the running gateway")]
SinceOpt = Annotated[str | None, typer.Option(
    "--since", help="start: 2025-11-01, 2025-11-01T09:00, 24h, 7d, or unix seconds")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="end (exclusive), same forms")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]

console = Console()
err = Console(stderr=True)


_REL = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str | None, *, now: float | None = None) -> float | None:
    """Unix seconds from an ISO date/time (local time unless it has an offset), a duration
    ago (``90m``, ``24h``, ``7d``, ``2w``), ``now``, ``today`` or a unix timestamp."""
    if value is None or value == "":
        return None
    now = time.time() if now is None else now
    text = value.strip().lower()
    if text == "now":
        return now
    if text == "today":
        return dt.datetime.combine(dt.date.today(), dt.time()).timestamp()
    m = _REL.match(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise typer.BadParameter(f"cannot read time {value!r}") from None


async def _id_labels(nc: NATS) -> dict[str, str]:
    """Gateway user and key ids -> names (empty when the buckets cannot be read)."""
    from codeswitch.reads import id_labels

    try:
        return await id_labels(nc)
    except Exception:
        return {}


def _offset() -> int:
    return int(time.localtime().tm_gmtoff)


async def _connect(url: str) -> NATS:
    try:
        # the CLI's one connection setting (bus.connect once=True), credentials included
        return await asyncio.wait_for(bus.connect(url, name="codeswitch-cli", once=True), 5)
    except Exception as exc:
        raise LedgerUnavailableError(f"{NOT_RUNNING} (no NATS at {masked_url(url)})") from exc


async def _request(nc: NATS, query: str, params: dict[str, Any], timeout: float) -> Any:
    return await ledger(nc, query, params, timeout)  # codeswitch.reads: shared with the console


async def ask(url: str, query: str, params: dict[str, Any], timeout: float = 30.0) -> Any:
    """One request to the ledger service; raises LedgerUnavailableError when none answers."""
    nc = await _connect(url)
    try:
        return await _request(nc, query, params, timeout)
    finally:
        await nc.close()


def _run(coro: Awaitable[T]) -> T:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except LedgerUnavailableError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    except LedgerError as exc:
        err.print(f"[red]ledger: {exc}[/red]")
        raise typer.Exit(2) from None


def _url(home: Path | None, nats_url: str | None) -> str:
    return nats_url_for(home_dir(home), nats_url)


def _filters(since: str | None, until: str | None, **kw: Any) -> dict[str, Any]:
    params = {k: v for k, v in kw.items() if v is not None}
    params["since"] = parse_time(since)
    params["until"] = parse_time(until)
    params["tz_offset_s"] = _offset()
    return {k: v for k, v in params.items() if v is not None}


# -- formatting ---------------------------------------------------------------------------

def _num(v: Any) -> str:
    return "-" if v is None else f"{v:,}"


def _usd(v: Any) -> str:
    if v is None:
        return "-"
    return f"${v:,.4f}" if v < 1 else f"${v:,.2f}"


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:,.0f} ms"


def _when(ts: Any) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _tokens(v: Any) -> str:
    if v is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= size:
            return f"{v / size:.1f}{unit}"
    return str(v)


def _unpriced_note(total: dict[str, Any]) -> None:
    if total.get("unpriced_requests"):
        console.print(
            f"[yellow]* cost excludes {total['unpriced_requests']:,} unpriced requests "
            f"({_tokens(total['unpriced_tokens'])} tokens): their models have no price; "
            "add them to prices.toml in the data directory.[/yellow]")


# -- commands -----------------------------------------------------------------------------

def stats(
    since: SinceOpt = None, until: UntilOpt = None,
    by: Annotated[str | None, typer.Option(
        "--by", help="provider | model | user | key | session | dialect | client | route "
        "(user: the gateway user, else the identity the client sent)")] = None,
    series: Annotated[str | None, typer.Option("--series", help="hour | day")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 30,
    as_json: JsonOpt = False, home: HomeOpt = None, nats_url: UrlOpt = None,
) -> None:
    """Requests, errors, tokens, cost and latency; optionally broken down or as a series."""
    params = _filters(since, until)
    url = _url(home, nats_url)

    async def go() -> dict[str, Any]:
        nc = await _connect(url)
        try:
            out: dict[str, Any] = {"overview": await _request(nc, "overview", params, 30)}
            if by:
                out["breakdown"] = await _request(
                    nc, "breakdown", {**params, "by": by, "limit": limit}, 30)
                if by in ("user", "key"):  # the ledger records ids: name them
                    labels = await _id_labels(nc)
                    for row in out["breakdown"]:
                        if row["key"] in labels:
                            row["name"] = labels[row["key"]]
            if series:
                out["series"] = await _request(nc, "series", {**params, "bucket": series}, 30)
            return out
        finally:
            await nc.close()

    result = _run(go())
    if as_json:
        console.print_json(json.dumps(result))
        return
    o = result["overview"]
    span = f"{_when(o['first_ts'])} → {_when(o['last_ts'])}" if o["requests"] else "no requests"
    totals = Table(title=f"Ledger ({span})", title_justify="left", show_header=False)
    totals.add_column(justify="left")
    totals.add_column(justify="right")
    for label, value in (
        ("requests", _num(o["requests"])),
        ("errors", f"{o['errors']:,} ({o['error_rate']:.1%})"),
        ("input tokens", _num(o["input_tokens"])),
        ("cache read / write", f"{o['cache_read_tokens']:,} / {o['cache_write_tokens']:,}"),
        ("output tokens (reasoning)", f"{o['output_tokens']:,} ({o['reasoning_tokens']:,})"),
        ("cost", _usd(o["cost"]) + (" *" if o["unpriced_requests"] else "")),
        ("latency p50 / p95", f"{_ms(o['p50_latency_ms'])} / {_ms(o['p95_latency_ms'])}"),
        ("TTFB p50 / p95", f"{_ms(o['p50_ttfb_ms'])} / {_ms(o['p95_ttfb_ms'])}"),
    ):
        totals.add_row(label, value)
    console.print(totals)
    if by:
        rows = [{**r, "key": r.get("name", r["key"])} for r in result["breakdown"]]
        console.print(metrics_table(f"By {by}", by, rows, console.width, time.time()))
    if series:
        console.print(metrics_table(f"Per {series}", "time", result["series"], console.width,
                                    time.time()))
    _unpriced_note(o)


def log(
    since: SinceOpt = None, until: UntilOpt = None,
    provider: Annotated[str | None, typer.Option("--provider")] = None,
    model: Annotated[str | None, typer.Option("--model")] = None,
    status: Annotated[str | None, typer.Option(
        "--status", help="ok | error | 429 | 5xx")] = None,
    user: Annotated[str | None, typer.Option(
        "--user", help="A gateway user's name (or id), else the identity a client sent.")]
    = None,
    key: Annotated[str | None, typer.Option("--key", help="A key: USER/NAME or its id.")]
    = None,
    session: Annotated[str | None, typer.Option("--session")] = None,
    route: Annotated[str | None, typer.Option(
        "--route", help="Requests a route rule chose (its name).")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 30,
    as_json: JsonOpt = False, home: HomeOpt = None, nats_url: UrlOpt = None,
) -> None:
    """The most recent requests, newest first."""
    params = _filters(since, until, provider=provider, model=model, status=status, user=user,
                      key=key, session=session, route=route)
    params["limit"] = limit
    url = _url(home, nats_url)

    async def go() -> tuple[list[dict[str, Any]], dict[str, str]]:
        nc = await _connect(url)
        try:
            labels = await _id_labels(nc)
            names = {name: ident for ident, name in labels.items()}
            for field in ("user", "key"):  # a name given: the ledger records ids
                if field in params and params[field] in names:
                    params[field] = names[params[field]]
            return await _request(nc, "log", params, 30), labels
        finally:
            await nc.close()

    rows, labels = _run(go())
    if as_json:
        console.print_json(json.dumps(rows))
        return
    console.print(log_table(rows, labels, console.width, time.time()))


_SHADES = ("grey35", "dark_green", "green4", "green3", "bright_green")
_GLYPHS = ("· ", "░░", "▒▒", "▓▓", "██")


def render_heatmap(days: list[dict[str, Any]], metric: str, start: dt.date,
                   end: dt.date) -> Text:
    """GitHub-style calendar: one row per weekday, one two-character column per week."""
    values = {d["day"]: (d[metric] or 0) for d in days}
    peak = max(values.values(), default=0) or 1
    first = start - dt.timedelta(days=start.weekday())
    weeks = (end - first).days // 7 + 1
    header = [" "] * (4 + 2 * weeks + 3)
    free = 0
    for w in range(weeks):  # a month's name over the first week whose Monday is in it
        monday = first + dt.timedelta(weeks=w)
        day = max(monday, start) if w == 0 else monday
        if (w == 0 or monday.day <= 7) and 4 + 2 * w >= free:
            header[4 + 2 * w: 7 + 2 * w] = day.strftime("%b")
            free = 4 + 2 * w + 4
    out = Text("".join(header).rstrip() + "\n")
    for wd, name in enumerate(("Mon", "", "Wed", "", "Fri", "", "Sun")):
        out.append(f"{name:<4}")
        for w in range(weeks):
            day = first + dt.timedelta(weeks=w, days=wd)
            if day < start or day > end:
                out.append("  ")
                continue
            v = values.get(day.isoformat(), 0)
            level = 0 if not v else 1 + min(3, int(4 * v / peak - 1e-9))
            out.append(_GLYPHS[level], style=_SHADES[level])
        out.append("\n")
    return out


def heatmap(
    since: SinceOpt = None, until: UntilOpt = None,
    metric: Annotated[str, typer.Option("--metric", help="requests | cost | tokens")] =
    "requests",
    as_json: JsonOpt = False, home: HomeOpt = None, nats_url: UrlOpt = None,
) -> None:
    """A calendar heatmap of activity, one cell per day (default: the last 26 weeks)."""
    column = {"requests": "requests", "cost": "cost", "tokens": "total_tokens"}.get(metric)
    if column is None:
        raise typer.BadParameter("metric must be requests, cost or tokens")
    since = since or "26w"
    params = _filters(since, until)
    days = _run(ask(_url(home, nats_url), "heatmap", params))
    if as_json:
        console.print_json(json.dumps(days))
        return
    start = dt.date.fromtimestamp(params["since"])
    end = dt.date.fromtimestamp(params["until"]) if "until" in params else dt.date.today()
    console.print(render_heatmap(days, column, start, end))
    total = sum((d[column] or 0) for d in days)
    busiest = max(days, key=lambda d: d[column] or 0, default=None)
    shown = _usd(total) if metric == "cost" else f"{total:,}"
    legend = Text("less ")
    for glyph, shade in zip(_GLYPHS, _SHADES, strict=True):
        legend.append(glyph, style=shade)
    legend.append(f" more   {metric}: {shown} over {len(days)} active days")
    if busiest:
        legend.append(f"; busiest {busiest['day']}")
    console.print(legend)


def replay(
    since: SinceOpt = None,
    into: Annotated[Path | None, typer.Option(
        "--into", help="write to this file instead of rebuilding the live ledger")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    home: HomeOpt = None, nats_url: UrlOpt = None,
) -> None:
    """Rebuild the ledger from the event stream (fresh file, then an atomic swap). With
    --since or --into the replay goes to a separate file for analysis instead."""
    params: dict[str, Any] = {"since": parse_time(since), "overwrite": overwrite}
    if into is not None:
        params["into"] = str(into.expanduser().resolve())
    url = _url(home, nats_url)
    result = _run(_replay(url, {k: v for k, v in params.items() if v is not None}))
    if result["state"] != "done":
        err.print(f"[red]replay failed: {result.get('error')}[/red]")
        raise typer.Exit(1)
    what = "rebuilt and swapped in" if result["swap"] else f"written to {result['target']}"
    console.print(f"[green]{result['events']:,} events replayed; ledger {what}.[/green]")


def _describe(job: dict[str, Any]) -> None:
    if job["since"] is not None:
        console.print(f"Replaying events since {_when(job['since'])} into {job['target']}.")
    elif job["from_seq"]:
        console.print(
            f"The stream holds events from seq {job['from_seq']:,} "
            f"({_when(job['from_ts'])}) to {job['to_seq']:,}: the rebuild is exact from there.")
    else:
        console.print("The event stream is empty.")
    if job["carried_before_seq"]:
        console.print(
            f"[yellow]Older events were dropped by the stream's retention: "
            f"{job['older_rows']:,} requests before seq {job['carried_before_seq']:,} exist "
            "only in the existing projection and are copied over as they are.[/yellow]")


async def _replay(url: str, params: dict[str, Any]) -> dict[str, Any]:
    nc = await _connect(url)
    try:
        inbox = nc.new_inbox()
        updates: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_progress(msg: Any) -> None:
            await updates.put(json.loads(msg.data))

        await nc.subscribe(inbox, cb=on_progress)
        job = await _request(nc, "replay", {**params, "progress": inbox}, 30)
        _describe(job)
        first = job["from_seq"] or 1
        total = max(1, job["to_seq"] - first + 1)
        with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                      TextColumn("{task.fields[events]:,} events"), TimeElapsedColumn(),
                      console=console, transient=False) as bar:
            task = bar.add_task("replay", total=total, events=0)
            while job["state"] == "running":
                try:
                    job = await asyncio.wait_for(updates.get(), 30)
                except TimeoutError:
                    status = await _request(nc, "status", {}, 10)
                    if status.get("replay") and status["replay"]["id"] == job["id"]:
                        job = status["replay"]
                    continue
                done = max(0, job["seq"] - first + 1) if job["seq"] else 0
                bar.update(task, completed=min(done, total), events=job["events"],
                           description=job["phase"])
            if job["state"] == "done":
                bar.update(task, completed=total)
        return job  # type: ignore[no-any-return]
    finally:
        await nc.close()


def export(
    fmt: Annotated[str, typer.Option("--format", help="parquet | csv")] = "parquet",
    out: Annotated[Path | None, typer.Option(
        "--out", help="directory (or a file when one --table is given)")] = None,
    table: Annotated[list[str] | None, typer.Option(
        "--table", help="requests, attempts, circuit_transitions, alert_history, audit")] = None,
    since: SinceOpt = None, until: UntilOpt = None,
    home: HomeOpt = None, nats_url: UrlOpt = None,
) -> None:
    """Export ledger tables with DuckDB's writer (parquet or csv)."""
    if fmt not in ("parquet", "csv"):
        raise typer.BadParameter("format must be parquet or csv")
    params: dict[str, Any] = {"format": fmt, "tables": table or None,
                              "since": parse_time(since), "until": parse_time(until)}
    if out is not None:
        params["out"] = str(out.expanduser().resolve())
    written = _run(ask(_url(home, nats_url), "export",
                       {k: v for k, v in params.items() if v is not None}, timeout=600))
    for w in written:
        console.print(f"{w['table']:<20} {w['rows']:>10,} rows  → {w['path']}")


_COMMANDS: dict[str, Callable[..., None]] = {
    "stats": stats, "log": log, "heatmap": heatmap, "replay": replay, "export": export,
}


def register(app: typer.Typer) -> None:
    """Add the ledger commands to the main ``codeswitch`` app."""
    for name, fn in _COMMANDS.items():
        app.command(name)(fn)
