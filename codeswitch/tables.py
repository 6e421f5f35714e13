"""Tables that fit the terminal: ``codeswitch log``, ``stats --by``, ``provider list``.

Pure (rows and a width in, a rich ``Table`` out), so they are tested at 80 columns without a
gateway. How a table fits (``fit``): columns with nothing to say are left out, then the
columns least needed at that width go (each column says when: ``drop`` = its rank, the
highest goes first), then the columns allowed to shrink are cut with an ellipsis in the
middle of what they show last. Values are formatted for the width too: the time of day for
today, short request ids, durations in ms or s, tokens in k/M. ``--json`` never goes
through here.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

__all__ = ["Col", "clock", "duration", "fit", "log_table", "metrics_table", "money",
           "provider_table", "short_model", "tokens"]

Cell = str | Text
_PAD = 2  # rich's (0, 1) padding between two columns of a SIMPLE_HEAD table


@dataclass
class Col:
    header: str
    cells: list[Cell]
    justify: str = "left"
    drop: int = 0  # 0: always kept; otherwise the higher, the sooner it goes when too wide
    shrink: bool = False  # may be cut (with "…") to fit
    min_width: int = 6
    optional: bool = False  # left out when every cell is empty or "-"
    luxury: bool = False  # goes (by ``drop`` rank) before any column is cut
    style: str | None = None
    width: int = field(init=False, default=0)

    def natural(self) -> int:
        return max([len(self.header), *(len(c if isinstance(c, str) else c.plain)
                                        for c in self.cells)])


def _empty(c: Cell) -> bool:
    text = c if isinstance(c, str) else c.plain
    return text.strip() in ("", "-")


def fit(columns: Sequence[Col], width: int, *, title: str | None = None,
        cut_first: bool = True) -> Table:
    """A table of ``columns`` no wider than ``width`` (see the module's doc). ``cut_first``
    False: columns are dropped until the rest fit whole, and only then cut."""
    cols = [c for c in columns if not (c.optional and all(_empty(x) for x in c.cells))]
    for c in cols:
        c.width = c.natural()

    def floor(c: Col) -> int:
        return min(c.natural(), max(c.min_width, len(c.header))) if c.shrink else c.natural()

    def gaps() -> int:
        return _PAD * (len(cols) - 1)

    # the luxuries go first, before anything is cut
    while sum(c.width for c in cols) + gaps() > width and any(c.luxury for c in cols):
        cols.remove(max((c for c in cols if c.luxury), key=lambda c: c.drop))
    # drop (highest rank first) until the columns fit once the shrinkable ones are cut down
    # (or whole, without cut_first)
    while sum(floor(c) if cut_first else c.width for c in cols) + gaps() > width \
            and any(c.drop for c in cols):
        cols.remove(max((c for c in cols if c.drop), key=lambda c: c.drop))
    # then cut the widest shrinkable column, one character at a time, until it fits
    over = sum(c.width for c in cols) + gaps() - width
    while over > 0:
        cuttable = [c for c in cols if c.shrink and c.width > floor(c)]
        if not cuttable:
            break
        widest = max(cuttable, key=lambda c: c.width)
        widest.width -= 1
        over -= 1
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, title=title,
                  title_justify="left", collapse_padding=True)
    for c in cols:
        table.add_column(c.header, justify=c.justify,  # type: ignore[arg-type]
                         no_wrap=True, overflow="ellipsis", max_width=c.width,
                         min_width=min(c.width, len(c.header)), style=c.style)
    for i in range(len(cols[0].cells) if cols else 0):
        table.add_row(*(_cut(c.cells[i], c.width) for c in cols))
    return table


def _cut(cell: Cell, width: int) -> Cell:
    """Cut in the middle ("claude-son…0929"): both ends of an id or a model name tell."""
    text = cell if isinstance(cell, str) else cell.plain
    if len(text) <= width:
        return cell
    head = (width - 1 + 1) // 2
    tail = width - 1 - head
    cut = text[:head] + "…" + (text[-tail:] if tail else "")
    if isinstance(cell, Text):
        return Text(cut, style=cell.style)
    return cut


# -- values ---------------------------------------------------------------------------------

def clock(ts: float | None, now: float, *, wide: bool = False) -> str:
    """Time of day for today, "MM-DD HH:MM" this year, the date before (the full timestamp
    when ``wide``)."""
    if ts is None:
        return "-"
    t = dt.datetime.fromtimestamp(ts)
    if wide:
        return t.strftime("%Y-%m-%d %H:%M:%S")
    today = dt.datetime.fromtimestamp(now)
    if t.date() == today.date():
        return t.strftime("%H:%M:%S")
    if t.year == today.year:
        return t.strftime("%m-%d %H:%M")
    return t.strftime("%Y-%m-%d")


def duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    return f"{ms / 60_000:.1f}m"


def tokens(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= size:
            return f"{v / size:.1f}{unit}"
    return str(int(v))


def money(v: float | None) -> str:
    if v is None:
        return "-"
    if v == 0:
        return "$0"
    return f"${v:,.4f}" if v < 1 else f"${v:,.2f}"


_DATE_SUFFIX = re.compile(r"-(?:20\d{6}|\d{4}-\d{2}-\d{2}|latest)$")


def short_model(name: str) -> str:
    """A model name without its date suffix (claude-sonnet-4-5-20250929 -> claude-sonnet-4-5)."""
    return _DATE_SUFFIX.sub("", name)


# -- the tables -----------------------------------------------------------------------------

def log_table(rows: list[dict[str, Any]], labels: dict[str, str], width: int,
              now: float) -> Table:
    """``codeswitch log``: oldest first. At 80 columns: time, provider, model, status,
    tokens in/out, cost, duration; wider: the request (short id), ttfb, user, key; at 150
    and more the full timestamp, model and request id."""
    wide = width >= 150
    rows = list(reversed(rows))

    def status(r: dict[str, Any]) -> Text:
        t = Text(str(r["status"]), style="green" if r["ok"] else "red")
        why = r["error_class"] or ""
        if not wide:  # "http_502" says the status again; "stream_error": "stream"
            why = "" if why == f"http_{r['status']}" else why.removesuffix("_error")
        if why:
            t.append(f" {why}", style="red")
        return t

    def col(header: str, fn: Callable[[dict[str, Any]], Cell], **kw: Any) -> Col:
        return Col(header, [fn(r) for r in rows], **kw)

    return fit([
        col("time", lambda r: clock(r["ts"], now, wide=wide)),
        col("provider", lambda r: r["provider"] or "-", shrink=True, min_width=10),
        col("route", lambda r: r.get("route") or "-", shrink=True, min_width=10, optional=True,
            drop=1),
        col("model", lambda r: (r["upstream_model"] or r["model"]) if wide
            else short_model(r["upstream_model"] or r["model"]), shrink=True, min_width=17),
        col("status", status, shrink=True, min_width=12),
        col("tok in/out", lambda r: f"{tokens(r['input_tokens'] + r['cache_read_tokens'] + r['cache_write_tokens'])}/{tokens(r['output_tokens'])}",  # noqa: E501
            justify="right"),
        col("cost", lambda r: money(r["cost"]), justify="right", drop=3),
        col("ttfb", lambda r: duration(r["ttfb_ms"]), justify="right", drop=5, luxury=True),
        col("took", lambda r: duration(r["duration_ms"]), justify="right", drop=2),
        col("user", lambda r: labels.get(r.get("user_id") or "", r.get("user_id")
                                         or r["user"] or "-"),
            shrink=True, optional=True, drop=6, luxury=True),
        col("key", lambda r: labels.get(r.get("key_id") or "", r.get("key_id") or "-"),
            shrink=True, optional=True, drop=7, luxury=True),
        col("request", lambda r: r["request_id"] if wide else r["request_id"][-8:],
            drop=4, style="dim"),
    ], width)


def metrics_table(title: str, key: str, rows: list[dict[str, Any]], width: int,
                  now: float) -> Table:
    """``stats --by KEY`` and ``--series``: at 80 columns the key, requests, errors, tokens
    in and out, cost and p50; wider: cache read/write, p95, TTFB."""

    def label(r: dict[str, Any]) -> str:
        v = r.get("key")
        if key == "time":
            return clock(r["t"], now, wide=width >= 150)
        return "(none)" if v is None else str(v)

    def col(header: str, fn: Callable[[dict[str, Any]], Cell], **kw: Any) -> Col:
        return Col(header, [fn(r) for r in rows], **kw)

    return fit([
        col(key, label, shrink=True, min_width=10),
        col("reqs", lambda r: f"{r['requests']:,}", justify="right"),
        col("errors", lambda r: f"{r['errors']:,} ({r['error_rate']:.0%})", justify="right"),
        col("tok in", lambda r: tokens(r["input_tokens"]), justify="right"),
        col("cache r/w", lambda r: f"{tokens(r['cache_read_tokens'])}/"
            f"{tokens(r['cache_write_tokens'])}", justify="right", drop=3),
        col("out", lambda r: tokens(r["output_tokens"]), justify="right"),
        col("cost", lambda r: money(r["cost"]) + (" *" if r["unpriced_requests"] else ""),
            justify="right"),
        col("p50", lambda r: duration(r["p50_latency_ms"]), justify="right"),
        col("p95", lambda r: duration(r["p95_latency_ms"]), justify="right", drop=2),
        col("ttfb p50", lambda r: duration(r["p50_ttfb_ms"]), justify="right", drop=1),
    ], width, title=title, cut_first=False)


_DIALECT = {"anthropic": "anthropic", "openai-chat": "chat", "openai-responses": "responses",
            "gemini": "gemini"}


def provider_table(providers: list[Any], masked_keys: dict[str, str], width: int) -> Table:
    """``provider list``: a provider from the environment shows its variable as its key and
    ``env`` as its source; the demo provider says it is one."""
    wide = width >= 130

    def url(p: Any) -> str:
        return p.base_url if wide else re.sub(r"^https?://", "", p.base_url).rstrip("/")

    def source(p: Any) -> Text:
        if p.source == "demo":
            return Text("demo", style="yellow")
        if p.source == "env":
            return Text("env", style="cyan")
        return Text(p.source)

    return fit([
        Col("name", [p.name if p.enabled else Text(f"{p.name} (off)", style="dim")
                     for p in providers], shrink=True, min_width=10),
        Col("dialect", [_DIALECT.get(p.dialect, p.dialect) for p in providers]),
        Col("base url", [url(p) for p in providers], shrink=True, min_width=14),
        Col("models", [", ".join(p.models) or "*" for p in providers], shrink=True,
            min_width=10),
        Col("key", [masked_keys.get(p.name) or "-" for p in providers]),
        Col("from", [source(p) for p in providers]),
        Col("on", ["yes" if p.enabled else "no" for p in providers], drop=1),
        Col("prio", [str(p.priority) for p in providers], justify="right", drop=2),
        Col("weight", [str(p.weight) for p in providers], justify="right", drop=3),
    ], width, cut_first=False)
