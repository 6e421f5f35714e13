"""``codeswitch quota show [--user NAME] [--json]``: what each user and each of their keys has
spent in the current budget period, its limit, the period and when it resets (in the gateway's
time zone), from KV ``cs_quota`` (the quota worker's spend, what the edges enforce) and the
users and keys (``cs_users``/``cs_keys``). ``register(app)`` adds it."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runtime.home import home_dir, nats_url_for

__all__ = ["quota_rows", "register"]

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
quota_app = typer.Typer(no_args_is_help=True, help="Budgets: what users and keys have spent "
                        "in the current period (the quota worker's spend, what the edges "
                        "enforce).")


def quota_rows(users: dict[str, Any], keys: dict[str, Any], spend: dict[str, Any],
               zone: dt.tzinfo, now: float, only_user: str | None = None
               ) -> list[dict[str, Any]]:
    """One row per user, then one per key of that user: spent, limit, period, resets at.
    Pure (records in, rows out). ``spend``: KV key (``user.<id>``/``key.<id>``) -> Spend."""
    from schemas.quota import PERIODS, period_bounds, spent, zone_name

    def row(kind: str, user: Any, key: Any | None) -> dict[str, Any]:
        record = spend.get(f"key.{key.id}" if key else f"user.{user.id}")
        budget = (key or user).limits.budget
        periods = {}
        for name in PERIODS:
            p = record.period(name) if record is not None else None
            live = p is not None and p.start <= now and (p.end is None or now < p.end)
            periods[name] = {"tokens": p.tokens if live and p else 0,
                             "usd": round(p.usd, 9) if live and p else 0.0}
        base: dict[str, Any] = {
            "scope": kind, "user": user.name, "user_id": user.id,
            "key": key.name if key else None, "key_id": key.id if key else None,
            "spend": periods, "budget": None, "period": None, "unit": None, "spent": None,
            "limit": None, "used_pct": None, "period_start": None, "resets_at": None,
            "resets_at_local": None, "exhausted": False, "soft_pct": (key or user).limits.soft_pct,
            "zone": zone_name(zone)}
        if budget is None:
            return base
        used, _ = spent(record, budget, now)
        start, end = period_bounds(budget.period, now, zone)
        base.update({
            "budget": budget.label(), "period": budget.period, "unit": budget.unit,
            "spent": used, "limit": budget.amount,
            "used_pct": round(used / budget.amount * 100, 2),
            "period_start": start if budget.period != "total" else None, "resets_at": end,
            "resets_at_local": (dt.datetime.fromtimestamp(end, zone).isoformat()
                                if end is not None else None),
            "exhausted": used >= budget.amount})
        return base

    rows = []
    for user in sorted(users.values(), key=lambda u: u.name):
        if only_user is not None and only_user not in (user.name, user.id):
            continue
        rows.append(row("user", user, None))
        for key in sorted((k for k in keys.values() if k.user == user.id),
                          key=lambda k: (k.created, k.id)):
            if key.revoked is None:
                rows.append(row("key", user, key))
    return rows


async def _gather(nc: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
    from codeswitch import users as u
    from runtime import bus, names
    from schemas.config import GatewaySettings
    from schemas.quota import Spend

    directory = await u.load(nc)
    js = nc.jetstream()
    decoder = msgspec.json.Decoder(Spend)
    spend = {}
    for key, (value, _) in (await bus.read_bucket(await js.key_value(names.QUOTA_BUCKET))
                            ).items():
        try:
            spend[key] = decoder.decode(value)
        except (msgspec.ValidationError, msgspec.DecodeError):
            continue
    zone = ""
    try:
        entry = await (await js.key_value(names.SETTINGS_BUCKET)).get("gateway")
        if entry.value:
            zone = msgspec.json.decode(entry.value, type=GatewaySettings).timezone
    except Exception:  # no gateway settings written: the machine's zone
        pass
    return directory.users, directory.keys, spend, zone


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
    from schemas.quota import format_reset, resolve_zone

    home_dir(home)
    users, keys, spend, zone_setting = _with_nats(nats_url_for(home, nats_url), _gather)
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
