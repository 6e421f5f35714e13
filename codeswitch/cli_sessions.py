"""`codeswitch sessions list|show|delete` and `codeswitch online`: the ledger's sessions (one per
conversation of a coding CLI, `edge/identity.py`), their conversations from the body log, a
delete for real, and who is online. The CLI never opens the DuckDB file: it asks the ledger
over NATS (`cs.ledger.sessions|session|session_delete|online`) and reads the body log and the
presence bucket itself."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Annotated, Any

import typer
from nats.aio.client import Client as NATS
from rich.console import Console
from rich.table import Table
from rich.text import Text

from codeswitch.cli_ledger import (
    HomeOpt,
    JsonOpt,
    SinceOpt,
    UntilOpt,
    UrlOpt,
    _connect,
    _filters,
    _id_labels,
    _request,
    _run,
    _tokens,
    _url,
    _usd,
    _when,
)
from codeswitch.conversation import Turn, conversation, title
from codeswitch.reads import body_entries, gateways
from runtime.home import home_dir

__all__ = ["register"]

sessions_app = typer.Typer(help="Sessions: every CLI conversation, its requests and cost; "
                           "delete one for real.", no_args_is_help=True)
console = Console(soft_wrap=True)
err = Console(stderr=True)
SNIP = 600  # characters of a long message shown without --full


async def _entries(nc: NATS, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    return await body_entries(nc, request_ids)  # codeswitch.reads: shared with the console


def _short(value: str | None, width: int = 24) -> str:
    """An id for a table cell (Claude Code's device ids are 64 hex digits); --json has it
    whole."""
    if not value:
        return "-"
    return value if len(value) <= width else value[:width - 1] + "…"


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    s = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit} ago"
    return f"{s:.0f}s ago"


@sessions_app.command("list")
def sessions_list(
    user: Annotated[str | None, typer.Option(
        "--user", help="Only this user (a gateway user's name or id, else the identity the "
        "client sent).")] = None,
    active: Annotated[bool, typer.Option(
        "--active", help="Only sessions with a request in the last 5 minutes.")] = False,
    since: SinceOpt = None, until: UntilOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 30,
    as_json: JsonOpt = False, home: HomeOpt = None, nats_url: UrlOpt = None,
) -> None:
    """Sessions, most recently seen first; with the body log on, each one's title (the first
    line its user wrote)."""
    params = _filters(since, until, user=user, active=active or None, limit=limit)
    url = _url(home, nats_url)

    async def go() -> tuple[list[dict[str, Any]], dict[str, str]]:
        nc = await _connect(url)
        try:
            labels = await _id_labels(nc)
            by_name = {name: ident for ident, name in labels.items()}
            if user in by_name:
                params["user"] = by_name[user]
            rows = await _request(nc, "sessions", params, 30)
            entries = await _entries(nc, [r["main_request_id"] for r in rows])
            for r in rows:
                entry = entries.get(r["main_request_id"])
                r["title"] = title(conversation(entry)) if entry else None
            return rows, labels
        finally:
            await nc.close()

    rows, labels = _run(go())
    if as_json:
        console.print_json(json.dumps(rows))
        return
    now = time.time()
    table = Table(title=f"Sessions ({len(rows)})", title_justify="left")
    for col, justify in (("session", "left"), ("title", "left"), ("user", "left"),
                         ("client", "left"), ("device", "left"), ("last seen", "right"),
                         ("requests", "right"), ("tokens", "right"), ("cache read", "right"),
                         ("cost", "right"), ("models", "left")):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            r["session"], r.get("title") or "", labels.get(r["user"] or "", _short(r["user"])),
            r["client"] or "-", r["device"] or "-", _ago(r["last_seen"], now),
            f"{r['requests']:,}" + (f" ({r['errors']} err)" if r["errors"] else ""),
            _tokens(r["total_tokens"]), _tokens(r["cache_read_tokens"]), _usd(r["cost"]),
            ", ".join(r["models"]))
    console.print(table)


def _render(turns: list[Turn], full: bool) -> None:
    styles = {"user": "bold green", "assistant": "bold cyan", "system": "dim",
              "error": "bold red"}
    for t in turns:
        text = t.text if full or len(t.text) <= SNIP else (
            t.text[:SNIP] + f" … [{len(t.text) - SNIP:,} more characters: --full]")
        label = {"tool_call": f"{t.role} -> tool {t.name}",
                 "tool_result": f"{t.role} <- tool result ({t.name})",
                 "thinking": f"{t.role} (thinking)", "image": f"{t.role} [image]"}.get(
            t.kind, t.role)
        if t.role == "system" and not full:
            console.print(Text(f"{label}: {len(t.text):,} characters (--full shows them)",
                               style="dim"))
            continue
        console.print(Text(f"{label}:", style=styles.get(t.role, "bold")))
        console.print(Text(text, style="dim" if t.kind in ("thinking", "tool_result") else ""))
        console.print()


@sessions_app.command("show")
def sessions_show(
    session: Annotated[str, typer.Argument(help="The session id (from `sessions list`).")],
    full: Annotated[bool, typer.Option(
        "--full", help="Whole messages and system prompts, not their first lines.")] = False,
    as_json: JsonOpt = False, home: HomeOpt = None, nats_url: UrlOpt = None,
) -> None:
    """One session: its totals, the timeline of its requests, and with the body log on the
    conversation (user, assistant, tool calls and results) as its largest request carried it,
    with that request's answer."""
    url = _url(home, nats_url)

    async def go() -> tuple[dict[str, Any], dict[str, str]]:
        nc = await _connect(url)
        try:
            found = await _request(nc, "session", {"session": session}, 30)
            entries = await _entries(nc, [found["main_request_id"]])
            entry = entries.get(found["main_request_id"])
            turns = conversation(entry) if entry else []
            found["title"] = title(turns)
            found["conversation"] = [t._asdict() for t in turns] if entry else None
            return found, await _id_labels(nc)
        finally:
            await nc.close()

    found, labels = _run(go())
    if as_json:
        console.print_json(json.dumps(found))
        return
    console.print(f"[bold]{found['session']}[/]" + (f"  {found['title']}" if found["title"]
                                                     else ""))
    user = found["user"]
    console.print(
        f"user {labels.get(user or '', user or '-')}  client {found['client'] or '-'}  "
        f"device {', '.join(found['devices']) or '-'}  {_when(found['first_seen'])} → "
        f"{_when(found['last_seen'])}")
    console.print(
        f"{found['requests']:,} requests ({found['errors']} errors), "
        f"{_tokens(found['total_tokens'])} tokens ({_tokens(found['cache_read_tokens'])} "
        f"cache read), cost {_usd(found['cost'])}; models {', '.join(found['models'])}; "
        f"providers {', '.join(found['providers'])}")
    table = Table(title="Timeline", title_justify="left")
    for col, justify in (("time", "left"), ("model", "left"), ("provider", "left"),
                         ("status", "right"), ("tokens in", "right"), ("cache read", "right"),
                         ("out", "right"), ("cost", "right"), ("duration", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in found["timeline"]:
        status = str(r["status"]) + ("" if r["ok"] else f" {r['error_class'] or ''}")
        table.add_row(_when(r["received_at"] or r["ts"]), r["model"], r["provider"] or "-",
                      status, _tokens(r["input_tokens"]), _tokens(r["cache_read_tokens"]),
                      _tokens(r["output_tokens"]), _usd(r["cost"]),
                      f"{r['duration_ms'] / 1000:.1f} s")
    console.print(table)
    if found["conversation"] is None:
        console.print("[dim]No conversation: the body log did not keep this session's bodies "
                      "(`codeswitch body-log on` keeps them for a week).[/]")
        return
    console.rule("conversation")
    _render([Turn(**t) for t in found["conversation"]], full)


@sessions_app.command("delete")
def sessions_delete(
    session: Annotated[str, typer.Argument(help="The session id, exactly.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Delete even a session seen in the last minute (a request still "
        "running would come back as the session).")] = False,
    as_json: JsonOpt = False, home: HomeOpt = None, nats_url: UrlOpt = None,
) -> None:
    """Delete a session for real: its rows in the ledger, its facts in the event log (erased
    from the disk), its bodies in the body log. What it cost stays in the statistics (a
    `session.deleted` fact keeps the bill, without ids or text)."""
    url = _url(home, nats_url)
    if not yes:
        found = _run(_ask(url, "session", {"session": session}))
        if found["session"] != session:
            err.print(f"[red]{session!r} is not a session id; did you mean "
                      f"{found['session']}?[/]")
            raise typer.Exit(2)
        typer.confirm(f"Delete session {session} ({found['requests']:,} requests, "
                      f"{_usd(found['cost'])}) for good?", abort=True)
    async def go() -> dict[str, Any]:
        from codeswitch.audit import AdminLog
        from codeswitch.session_delete import delete_session

        nc = await _connect(url)
        try:  # the same as the console: the ledger erases it, then the admin fact
            return await delete_session(nc, AdminLog(nc, home=home_dir(home)), session,
                                        force=force)
        finally:
            await nc.close()

    done = _run(go())
    if as_json:
        console.print_json(json.dumps(done))
        return
    console.print(
        f"deleted session [bold]{done['session']}[/]: {done['requests']:,} requests; "
        f"{done['facts_erased']:,} facts erased from the event log, "
        f"{done['bodies_erased']:,} bodies from the body log; the ledger file rewritten. "
        f"Its cost ({_usd(done['cost'])}, {_tokens(done['total_tokens'])} tokens) stays in "
        "the statistics.")


async def _ask(url: str, query: str, params: dict[str, Any], timeout: float = 30) -> Any:
    nc = await _connect(url)
    try:
        return await _request(nc, query, params, timeout)
    finally:
        await nc.close()


async def _gateways(nc: NATS) -> list[dict[str, Any]]:
    return await gateways(nc)  # codeswitch.reads: shared with the console


def online(
    as_json: JsonOpt = False, home: HomeOpt = None, nats_url: UrlOpt = None,
) -> None:
    """Who is online: users and devices with a request in the last 5 minutes (from the
    ledger), and the gateways alive (their heartbeats, every 5 s, gone after 15 s)."""
    url = _url(home, nats_url)

    async def go() -> dict[str, Any]:
        nc = await _connect(url)
        try:
            out: dict[str, Any] = {"gateways": await _gateways(nc)}
            try:
                out.update(await _request(nc, "online", {}, 10))
            except Exception as exc:  # the gateways alive are worth showing all the same
                out["ledger_error"] = str(exc)
            out["labels"] = await _id_labels(nc)
            return out
        finally:
            await nc.close()

    result = _run(go())
    labels = result.pop("labels", {})
    if as_json:
        for u in result.get("users", []):
            if u["user"] in labels:
                u["name"] = labels[u["user"]]
        console.print_json(json.dumps(result))
        return
    now = time.time()
    table = Table(title="Gateways alive", title_justify="left")
    for col in ("device", "parts", "version", "up since", "last heartbeat"):
        table.add_column(col)
    for g in result["gateways"]:
        parts = Counter(p["part"] for p in g["parts"])
        table.add_row(g["device"], ", ".join(f"{n} {part}" + ("s" if n > 1 else "")
                                             for part, n in sorted(parts.items())),
                      g["version"] or "-", _when(min(p["started"] for p in g["parts"])),
                      _ago(g["last_beat"], now))
    console.print(table)
    if "ledger_error" in result:
        err.print(f"[yellow]users and devices unknown: {result['ledger_error']}[/]")
        return
    users = Table(title="Users with a request in the last 5 minutes", title_justify="left")
    for col, justify in (("user", "left"), ("client", "left"), ("devices", "left"),
                         ("sessions", "right"), ("requests", "right"),
                         ("last request", "right")):
        users.add_column(col, justify=justify)  # type: ignore[arg-type]
    for u in result["users"]:
        users.add_row(labels.get(u["user"], _short(u["user"])), u["client"] or "-",
                      ", ".join(u["devices"]) or "-", str(u["sessions"]),
                      f"{u['requests']:,}", _ago(u["last_seen"], now))
    console.print(users)
    devices = Table(title="Devices with a request in the last 5 minutes", title_justify="left")
    for col, justify in (("device", "left"), ("users", "right"), ("sessions", "right"),
                         ("requests", "right"), ("last request", "right")):
        devices.add_column(col, justify=justify)  # type: ignore[arg-type]
    for d in result["devices"]:
        devices.add_row(d["device"], str(d["users"]), str(d["sessions"]),
                        f"{d['requests']:,}", _ago(d["last_seen"], now))
    console.print(devices)
    if result.get("anonymous_requests"):
        console.print(f"[dim]{result['anonymous_requests']:,} requests without a user[/]")


def register(app: typer.Typer) -> None:
    app.add_typer(sessions_app, name="sessions")
    app.command("online")(online)
