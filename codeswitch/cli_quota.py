"""``codeswitch quota show [--user NAME] [--json]``: what each user and each of their keys has
spent in the current budget period, its limit, the period and when it resets (in the gateway's
time zone), from KV ``cs_quota`` (the quota worker's spend, what the edges enforce) and the
users and keys (``cs_users``/``cs_keys``). ``register(app)`` adds it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runtime.home import home_dir, nats_url_for

__all__ = ["register"]

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
quota_app = typer.Typer(no_args_is_help=True, help="Budgets: what users and keys have spent "
                        "in the current period (the quota worker's spend, what the edges "
                        "enforce).")


def _amount(value: float | None, unit: str | None) -> str:
    from schemas.quota import format_amount

    if value is None or unit is None:
        return "—"
    return format_amount(value, unit)


@quota_app.command("show")
def quota_show(
    user: Annotated[str | None, typer.Option("--user", help="Only this user (name or id) "
                                             "and its keys.", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON: a list of rows.")]
    = False,
    home: Annotated[Path | None, typer.Option("--home", help="Data directory.",
                                              show_default=False)] = None,
    nats_url: Annotated[str | None, typer.Option("--nats-url", help="NATS URL.",
                                                 show_default=False)] = None,
) -> None:
    """Spent, limit, period and reset time of every user and key (or one user's)."""
    import time

    from codeswitch.cli import _with_nats
    from codeswitch.reads import quota_records, quota_rows
    from schemas.quota import format_reset, resolve_zone

    home_dir(home)
    users, keys, spend, zone_setting = _with_nats(nats_url_for(home, nats_url), quota_records)
    try:
        zone = resolve_zone(zone_setting)
    except ValueError:
        zone = resolve_zone(None)
    if user is not None and not any(user in (x.name, x.id) for x in users.values()):
        err.print(f"[red]no user named {escape(user)!r}[/]")
        raise typer.Exit(1)
    rows = quota_rows(users, keys, spend, zone, time.time(), user)
    if json_out:
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return
    if not rows:
        out.print("no users (`codeswitch user add NAME`)")
        return
    table = Table(box=None, pad_edge=False)
    for col in ("user", "key", "budget", "spent", "limit", "used", "resets at"):
        table.add_column(col, justify="right" if col in ("spent", "limit", "used") else "left")
    for r in rows:
        if r["budget"] is None:
            month = r["spend"]["month"]
            spent_ = f"{month['tokens']:,} tokens, ${month['usd']:.4f} this month"
            table.add_row(escape(r["user"]), escape(r["key"] or "—"), "none", spent_, "—",
                          "—", "—")
            continue
        mark = "[red]" if r["exhausted"] else ""
        table.add_row(
            escape(r["user"]), escape(r["key"] or "—"), r["budget"],
            mark + _amount(r["spent"], r["unit"]), _amount(r["limit"], r["unit"]),
            mark + f"{r['used_pct']:.1f}%",
            format_reset(r["resets_at"], zone))
    out.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(quota_app, name="quota")
