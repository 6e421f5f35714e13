"""``codeswitch status``: is the gateway up, and is every part keeping up?

One snapshot gathered over NATS (the run file for where the edge listens, a roll call for the
routers taking work, stream and consumer info for the queue and the workers' lag) plus an HTTP
readiness probe of the edge. ``gather`` does the I/O; ``render`` is pure.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from nats.aio.client import Client as NATS
from rich.console import Group
from rich.table import Table

from codeswitch.admin import roll_call
from runtime import names

__all__ = ["Snapshot", "as_json", "gather", "render"]

# (stream, durable, what the consumer is) for every worker that follows a stream
CONSUMERS: tuple[tuple[str, str, str], ...] = (
    (names.REQUESTS_STREAM, names.ROUTER_DURABLE, "routers (work queue)"),
    (names.EVENTS_STREAM, names.LEDGER_DURABLE, "ledger (DuckDB projection)"),
    (names.EVENTS_STREAM, names.ALERTS_EVAL_DURABLE, "alerts (rule evaluation)"),
    (names.EVENTS_STREAM, names.ALERTS_NOTIFY_DURABLE, "alerts (notifications)"),
)


@dataclass
class Snapshot:
    nats_url: str
    edge_url: str | None
    edge_ready: str  # "ready", the edge's own reason, or "unreachable"
    server: dict[str, Any] = field(default_factory=dict)
    routers: list[dict[str, Any]] = field(default_factory=list)
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)
    consumers: list[dict[str, Any]] = field(default_factory=list)
    # the supervisor's view (parts.json: pids, restarts, crash loops); None when not known
    parts: dict[str, Any] | None = None
    parts_ok: bool | None = None

    @property
    def healthy(self) -> bool:
        # an edge we cannot locate (no run file for this NATS: started by hand) is not judged
        edge_ok = self.edge_ready == "ready" or self.edge_url is None
        return (edge_ok and bool(self.routers) and all(c["present"] for c in self.consumers)
                and self.parts_ok is not False)


async def gather(nc: NATS, nats_url: str, run_info: dict[str, Any] | None) -> Snapshot:
    js = nc.jetstream()
    # the run file describes the gateway `up` started here; use it only if it is this NATS
    edge_url = (str(run_info["edge_url"]) if run_info and run_info.get("edge_url")
                and run_info.get("nats_url") == nats_url else None)
    snap = Snapshot(nats_url=_masked(nats_url), edge_url=edge_url, edge_ready="unknown")
    if edge_url and run_info and run_info.get("home"):
        from pathlib import Path

        from runtime.health import parts_health

        snap.parts_ok, snap.parts = parts_health(Path(str(run_info["home"])))
    info = nc._server_info  # what the server said on connect (version, JetStream)
    snap.server = {"version": info.get("version"), "jetstream": bool(info.get("jetstream"))}
    snap.routers = await roll_call(nc)
    for name in (names.REQUESTS_STREAM, names.EVENTS_STREAM):
        try:
            st = (await js.stream_info(name)).state
            snap.streams[name] = {"messages": st.messages, "bytes": st.bytes,
                                  "first_seq": st.first_seq, "last_seq": st.last_seq}
        except Exception:
            snap.streams[name] = {}
    ledgers: list[str] = []
    with contextlib.suppress(Exception):  # every ledger has its own consumer
        ledgers = sorted(c.name for c in await js.consumers_info(names.EVENTS_STREAM)
                         if c.name and names.is_ledger_durable(c.name))
    for stream, durable, what in CONSUMERS:
        for one in (ledgers or [durable]) if durable == names.LEDGER_DURABLE else [durable]:
            row: dict[str, Any] = {"stream": stream, "durable": one, "what": what,
                                   "present": False}
            try:
                ci = await js.consumer_info(stream, one)
                row.update(present=True, pending=ci.num_pending or 0,
                           ack_pending=ci.num_ack_pending or 0,
                           delivered=ci.delivered.stream_seq if ci.delivered else 0)
            except Exception:
                pass
            snap.consumers.append(row)
    if edge_url:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                r = await client.get(edge_url + "/readiness")
            snap.edge_ready = ("ready" if r.status_code == 200
                               else str(r.json().get("status", r.status_code)))
        except (httpx.HTTPError, ValueError):
            snap.edge_ready = "unreachable"
    return snap


def _masked(url: str) -> str:
    """nats://user:pass@host -> nats://user:***@host (a status line is often pasted)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def render(snap: Snapshot, run_info: dict[str, Any] | None) -> Group:
    ok, bad = "[green]●[/]", "[red]●[/]"
    head = Table.grid(padding=(0, 2))
    head.add_row("gateway", (ok + " healthy") if snap.healthy else (bad + " degraded"))
    if snap.edge_url is None:
        head.add_row("edge", "not known here (no run file for this NATS: edges started by "
                     "hand are not checked)")
    else:
        head.add_row("edge", f"{snap.edge_url}  "
                     + (ok if snap.edge_ready == "ready" else bad) + f" {snap.edge_ready}")
    head.add_row("nats", f"{snap.nats_url}  nats-server {snap.server.get('version', '?')}"
                 + ("" if snap.server.get("jetstream") else "  [red]JetStream off[/]"))
    if run_info and run_info.get("pid"):
        head.add_row("supervisor", f"pid {run_info['pid']}, home {run_info.get('home', '?')}")
    parts = None
    if snap.parts is not None and snap.parts.get("parts"):
        parts = Table("part", "pid", "state", "restarts", "last exit",
                      title="parts (supervised)", title_justify="left")
        for name, p in snap.parts["parts"].items():
            state = ok + " up" if p.get("alive") else bad + " down"
            if p.get("crash_loop"):
                state += "  [red]crash loop[/]"
            parts.add_row(name, str(p.get("pid") or ""), state, str(p.get("restarts", 0)),
                          "" if p.get("last_exit") is None else _exit(p["last_exit"]))
        if snap.parts.get("reason"):
            parts.caption = f"[red]{snap.parts['reason']}[/]"
    routers = Table("router", "in flight", title=f"routers taking work: {len(snap.routers)}",
                    title_justify="left")
    for r in snap.routers:
        routers.add_row(str(r.get("router")), str(r.get("in_flight", "")))
    if not snap.routers:
        routers.add_row("[red]none: requests wait, then get 503[/]", "")
    streams = Table("stream", "messages", "size", "first seq", "last seq", title="streams",
                    title_justify="left")
    for name, st in snap.streams.items():
        if not st:
            streams.add_row(name, "[red]missing[/]", "", "", "")
            continue
        streams.add_row(name, f"{st['messages']:,}", _size(st["bytes"]), f"{st['first_seq']:,}",
                        f"{st['last_seq']:,}")
    consumers = Table("consumer", "stream", "behind", "unacked", title="workers",
                      title_justify="left")
    for c in snap.consumers:
        if not c["present"]:
            consumers.add_row(c["what"], c["stream"], "[red]not running yet[/]", "")
            continue
        lag = c["pending"]
        consumers.add_row(c["what"], c["stream"],
                          f"[{'green' if lag < 1000 else 'yellow'}]{lag:,}[/]",
                          f"{c['ack_pending']:,}")
    return Group(head, *([parts] if parts is not None else []), routers, streams, consumers)


def _exit(code: int) -> str:
    from codeswitch.supervisor import describe_exit

    return describe_exit(code)


def as_json(snap: Snapshot) -> dict[str, Any]:
    return {"healthy": snap.healthy, "nats_url": snap.nats_url, "edge_url": snap.edge_url,
            "edge_ready": snap.edge_ready, "server": snap.server, "routers": snap.routers,
            "streams": snap.streams, "consumers": snap.consumers, "parts": snap.parts,
            "at": time.time()}
