"""``codeswitch user …``, ``codeswitch key …`` and ``codeswitch audit``: the gateway's users,
their API keys (KV ``cs_users``/``cs_keys``, ``codeswitch/users.py``) and the audit log of
every admin action (the ledger's audit table). ``register(app)`` adds them."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runtime.home import home_dir, nats_url_for

__all__ = ["register"]

T = TypeVar("T")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

HomeOpt = Annotated[Path | None, typer.Option("--home", help="Data directory (default "
                    "$CODESWITCH_HOME or ~/.code-switch).", show_default=False)]
NatsOpt = Annotated[str | None, typer.Option("--nats-url", help="NATS URL (default: the "
                    "running gateway's, or $CODESWITCH_NATS_URL).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
BudgetOpt = Annotated[str | None, typer.Option(
    "--budget", help="5usd/day, 200000tokens/month, 20usd/total (none: remove).",
    show_default=False)]
SoftOpt = Annotated[str | None, typer.Option(
    "--soft", help="Soft threshold, a share of the budget: 80% (none: remove).",
    show_default=False)]
RpmOpt = Annotated[str | None, typer.Option("--rpm", help="Requests per minute (none: remove).",
                                            show_default=False)]
TpmOpt = Annotated[str | None, typer.Option("--tpm", help="Tokens per minute (none: remove).",
                                            show_default=False)]
ConcOpt = Annotated[str | None, typer.Option(
    "--concurrency", help="Requests in flight at once (none: remove).", show_default=False)]

user_app = typer.Typer(no_args_is_help=True, help="Gateway users (KV cs_users). With no users "
                       "the gateway accepts any key on loopback; once one exists, every "
                       "request needs one of the users' keys.")
key_app = typer.Typer(no_args_is_help=True, help="Users' API keys (KV cs_keys; only a hash is "
                      "stored, the secret is shown once).")

def _run(home: Path | None, nats_url: str | None,
         fn: Callable[[Any, Any], Awaitable[T]]) -> T:
    """Connect, run ``fn(nc, audit)``, close. A UserError is one red line, exit status 1."""
    from codeswitch.audit import AdminLog
    from codeswitch.cli import _with_nats
    from codeswitch.users import UserError

    data = home_dir(home)
    try:
        return _with_nats(nats_url_for(home, nats_url),
                          lambda nc: fn(nc, AdminLog(nc, home=data)))
    except UserError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from None


def _limit_args(budget: str | None, soft: str | None, rpm: str | None, tpm: str | None,
                concurrency: str | None) -> dict[str, Any]:
    """The limit options given, for ``users.limits_from`` ("none" removes one)."""
    out_: dict[str, Any] = {}
    if budget is not None:
        out_["budget"] = budget
    if soft is not None:
        out_["soft"] = soft
    for name, value in (("rpm", rpm), ("tpm", tpm), ("concurrency", concurrency)):
        if value is None:
            continue
        if value.strip().lower() in ("none", "0", ""):
            out_[name] = None
            continue
        try:
            out_[name] = int(value)
        except ValueError:
            err.print(f"[red]--{name} {value!r}: a whole number, or none[/]")
            raise typer.Exit(2) from None
    return out_


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


# -- users -----------------------------------------------------------------------------------

@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="Login-style name: letters, digits, _ . @ -")],
    admin: Annotated[bool, typer.Option("--admin", help="Role admin (default user).")] = False,
    display_name: Annotated[str, typer.Option("--display-name", help="Shown in lists.")] = "",
    budget: BudgetOpt = None, soft: SoftOpt = None, rpm: RpmOpt = None, tpm: TpmOpt = None,
    concurrency: ConcOpt = None, json_out: JsonOpt = False,
    nats_url: NatsOpt = None, home: HomeOpt = None,
) -> None:
    """Add a user. The first user turns key checking on: from then on every request needs one
    of the users' keys (`codeswitch key create --user NAME`)."""
    from codeswitch import users as u

    given = _limit_args(budget, soft, rpm, tpm, concurrency)

    async def go(nc: Any, audit: Any) -> tuple[Any, int]:
        limits = u.limits_from(**given)
        user = await u.add_user(nc, audit, name, role="admin" if admin else "user",
                                display_name=display_name, limits=limits)
        return user, len((await u.load(nc)).users)

    user, count = _run(home, nats_url, go)
    if json_out:
        _print_json(user)
        return
    out.print(f"user [bold]{escape(user.name)}[/] added ({user.id}, {user.role})"
              + (f"; limits {user.limits.label()}" if not user.limits.empty() else ""))
    if count == 1:
        out.print(f"[yellow]{escape(user.name)} is the first user: from now on every request "
                  "needs a user's key.[/] Create one: codeswitch key create --user "
                  f"{escape(user.name)}")


@user_app.command("list")
def user_list(json_out: JsonOpt = False, nats_url: NatsOpt = None,
              home: HomeOpt = None) -> None:
    """The users, with their keys and limits."""
    from codeswitch import users as u

    async def go(nc: Any, audit: Any) -> Any:
        return await u.load(nc)

    d = _run(home, nats_url, go)
    users = sorted(d.users.values(), key=lambda x: x.name)
    now = time.time()
    if json_out:
        _print_json([{**msgspec.to_builtins(x), "password": bool(x.password), "keys": sum(
            1 for k in d.keys_of(x.id) if k.state(now) == "active")} for x in users])
        return
    if not users:
        out.print("no users: the gateway accepts requests as configured in [gateway] "
                  "(add one with `codeswitch user add NAME`)")
        return
    table = Table("name", "id", "display name", "role", "enabled", "active keys", "limits",
                  "created")
    for x in users:
        table.add_row(escape(x.name), x.id, escape(x.display_name), x.role,
                      "yes" if x.enabled else "[red]no[/]",
                      str(sum(1 for k in d.keys_of(x.id) if k.state(now) == "active")),
                      x.limits.label() or "-", _when(x.created))
    out.print(table)


@user_app.command("update")
def user_update(
    name: str,
    display_name: Annotated[str | None, typer.Option("--display-name")] = None,
    budget: BudgetOpt = None, soft: SoftOpt = None, rpm: RpmOpt = None, tpm: TpmOpt = None,
    concurrency: ConcOpt = None, nats_url: NatsOpt = None, home: HomeOpt = None,
) -> None:
    """Change a user's display name or limits."""
    from codeswitch import users as u

    given = _limit_args(budget, soft, rpm, tpm, concurrency)

    async def go(nc: Any, audit: Any) -> tuple[Any, list[str]]:
        limits = u.limits_from((await u.load(nc)).user(name).limits, **given) if given \
            else None
        return await u.update_user(nc, audit, name, display_name=display_name, limits=limits)

    user, changed = _run(home, nats_url, go)
    out.print(f"user [bold]{escape(user.name)}[/]: "
              + (f"{', '.join(changed)} changed" if changed else "nothing to change"))


def _flag(name: str, done: str, already: str,
          op: Callable[[Any, Any, Any], Awaitable[Any]],
          nats_url: str | None, home: Path | None) -> None:
    result = _run(home, nats_url, lambda nc, audit: op(nc, audit, name))
    out.print(f"user [bold]{escape(name)}[/] " + (done if result is not None else already))


@user_app.command("disable")
def user_disable(name: str, nats_url: NatsOpt = None, home: HomeOpt = None) -> None:
    """Refuse the user's requests (403 on every edge within milliseconds); kept, and its keys."""
    from codeswitch import users as u

    _flag(name, "disabled: its requests are refused", "was disabled already",
          lambda nc, a, n: u.set_enabled(nc, a, n, False), nats_url, home)


@user_app.command("enable")
def user_enable(name: str, nats_url: NatsOpt = None, home: HomeOpt = None) -> None:
    """Accept the user's requests again."""
    from codeswitch import users as u

    _flag(name, "enabled", "was enabled already",
          lambda nc, a, n: u.set_enabled(nc, a, n, True), nats_url, home)


@user_app.command("promote")
def user_promote(name: str, nats_url: NatsOpt = None, home: HomeOpt = None) -> None:
    """Make the user an admin."""
    from codeswitch import users as u

    _flag(name, "is now an admin", "was an admin already",
          lambda nc, a, n: u.set_role(nc, a, n, "admin"), nats_url, home)


@user_app.command("demote")
def user_demote(name: str, nats_url: NatsOpt = None, home: HomeOpt = None) -> None:
    """Make an admin a plain user."""
    from codeswitch import users as u

    _flag(name, "is now a plain user", "was a plain user already",
          lambda nc, a, n: u.set_role(nc, a, n, "user"), nats_url, home)


@user_app.command("remove")
def user_remove(name: str, nats_url: NatsOpt = None, home: HomeOpt = None) -> None:
    """Remove a user and its keys (the usage on record stays). Removing the last user turns
    key checking off."""
    from codeswitch import users as u

    async def go(nc: Any, audit: Any) -> tuple[Any, int, int]:
        user, keys = await u.remove_user(nc, audit, name)
        return user, keys, len((await u.load(nc)).users)

    user, keys, left = _run(home, nats_url, go)
    out.print(f"user [bold]{escape(user.name)}[/] removed, with {keys} key(s)")
    if left == 0:
        out.print("[yellow]that was the last user: the gateway accepts requests as configured "
                  "in [gateway] again[/]")


@user_app.command("passwd")
def user_passwd(
    name: str,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the password.")] = False,
    nats_url: NatsOpt = None, home: HomeOpt = None,
) -> None:
    """Set the password NAME signs in to the console with (asked twice, at least 10
    characters; stored as a scrypt hash). An admin key signs in too."""
    from codeswitch import users as u

    password: str | None = None
    if not clear:
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    user = _run(home, nats_url, lambda nc, audit: u.set_password(nc, audit, name, password))
    out.print(f"user [bold]{escape(user.name)}[/] " + (
        "has no password now" if clear else "can sign in to the console with the password"))


# -- keys ------------------------------------------------------------------------------------

def _key_row(d: Any, k: Any, now: float) -> dict[str, Any]:
    return {"id": k.id, "user": d.users[k.user].name if k.user in d.users else k.user,
            "name": k.name, "prefix": k.prefix, "models": k.models, "expires": k.expires,
            "state": k.state(now), "revoked": k.revoked, "created": k.created,
            "limits": msgspec.to_builtins(k.limits), "source": k.source}


@key_app.command("create")
def key_create(
    user: Annotated[str, typer.Option("--user", help="Owner (user name).")],
    name: Annotated[str | None, typer.Option("--name", help="Key name, unique per user "
                                             "(default key-N).")] = None,
    models: Annotated[list[str] | None, typer.Option(
        "--models", help="Model globs it may use (repeatable or comma-separated; default "
        "any).")] = None,
    expires: Annotated[str | None, typer.Option(
        "--expires", help="30d, 12h, 2w, 1y, or a date (2026-01-31); default never.")] = None,
    budget: BudgetOpt = None, soft: SoftOpt = None, rpm: RpmOpt = None, tpm: TpmOpt = None,
    concurrency: ConcOpt = None, json_out: JsonOpt = False,
    nats_url: NatsOpt = None, home: HomeOpt = None,
) -> None:
    """Create a key. Its secret (cs-…) is printed once and never stored: keep it."""
    from codeswitch import users as u

    given = _limit_args(budget, soft, rpm, tpm, concurrency)

    async def go(nc: Any, audit: Any) -> tuple[Any, str]:
        limits = u.limits_from(**given)
        until = u.parse_expiry(expires) if expires else None
        return await u.create_key(nc, audit, user, name=name, models=models, expires=until,
                                  limits=limits)

    key, secret = _run(home, nats_url, go)
    if json_out:
        _print_json({"key": secret, "id": key.id, "user": user, "name": key.name,
                     "prefix": key.prefix, "models": key.models, "expires": key.expires})
        return
    err.print(f"key [bold]{escape(user)}/{escape(key.name)}[/] created ({key.id}"
              + (f", models {', '.join(key.models)}" if key.models else "")
              + (f", expires {_when(key.expires)}" if key.expires else "")
              + "). The secret, shown this once:")
    sys.stdout.write(secret + "\n")


@key_app.command("list")
def key_list(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's keys.")] = None,
    json_out: JsonOpt = False, nats_url: NatsOpt = None, home: HomeOpt = None,
) -> None:
    """Keys (never the secrets): owner, prefix, models, expiry, state."""
    from codeswitch import users as u

    async def go(nc: Any, audit: Any) -> Any:
        d = await u.load(nc)
        owner = d.user(user).id if user else None
        return d, [k for k in d.keys.values() if owner is None or k.user == owner]

    d, keys = _run(home, nats_url, go)
    now = time.time()
    pairs = sorted(((_key_row(d, k, now), k) for k in keys),
                   key=lambda p: (p[0]["user"], p[0]["created"]))
    if json_out:
        _print_json([r for r, _ in pairs])
        return
    table = Table("id", "user/name", "prefix", "models", "expires", "state", "limits",
                  "created")
    colors = {"active": "green", "revoked": "red", "expired": "red", "disabled": "yellow"}
    for r, k in pairs:
        table.add_row(r["id"], escape(f"{r['user']}/{r['name']}"), f"{r['prefix']}…",
                      escape(", ".join(r["models"])) or "*", _when(r["expires"]),
                      f"[{colors[r['state']]}]{r['state']}[/]", k.limits.label() or "-",
                      _when(r["created"]))
    out.print(table)


@key_app.command("update")
def key_update(
    key: Annotated[str, typer.Argument(help="Key id (k_…) or USER/NAME.")],
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    models: Annotated[list[str] | None, typer.Option(
        "--models", help="Replace the model globs (repeatable or comma-separated).")] = None,
    any_model: Annotated[bool, typer.Option("--any-model", help="Remove the model "
                                            "allow-list.")] = False,
    expires: Annotated[str | None, typer.Option(
        "--expires", help="30d, 12h, a date, or never.")] = None,
    enabled: Annotated[bool | None, typer.Option("--enable/--disable",
                                                 show_default=False)] = None,
    budget: BudgetOpt = None, soft: SoftOpt = None, rpm: RpmOpt = None, tpm: TpmOpt = None,
    concurrency: ConcOpt = None, nats_url: NatsOpt = None, home: HomeOpt = None,
) -> None:
    """Change a key: name, models, expiry, enabled, limits (its secret never changes)."""
    from codeswitch import users as u

    given = _limit_args(budget, soft, rpm, tpm, concurrency)
    if any_model and models:
        err.print("[red]--models and --any-model together?[/]")
        raise typer.Exit(2)

    async def go(nc: Any, audit: Any) -> tuple[Any, list[str], str]:
        d = await u.load(nc)
        current = d.key(key)
        limits = u.limits_from(current.limits, **given) if given else None
        until: float | bool | None = False
        if expires is not None:
            until = u.parse_expiry(expires)
        new, changed = await u.update_key(
            nc, audit, current.id, name=name, models=[] if any_model else models,
            expires=until, enabled=enabled, limits=limits)
        return new, changed, d.label(new)

    new, changed, label = _run(home, nats_url, go)
    out.print(f"key [bold]{escape(label)}[/] ({new.id}): "
              + (f"{', '.join(changed)} changed" if changed else "nothing to change"))


@key_app.command("revoke")
def key_revoke(key: Annotated[str, typer.Argument(help="Key id (k_…) or USER/NAME.")],
               nats_url: NatsOpt = None, home: HomeOpt = None) -> None:
    """Revoke a key for good: every edge refuses it (403) within milliseconds."""
    from codeswitch import users as u

    async def go(nc: Any, audit: Any) -> tuple[Any, str]:
        revoked = await u.revoke_key(nc, audit, key)
        return revoked, (await u.load(nc)).label(revoked)

    revoked, label = _run(home, nats_url, go)
    out.print(f"key [bold]{escape(label)}[/] ({revoked.id}) revoked")


# -- audit -----------------------------------------------------------------------------------

def audit(
    since: Annotated[str | None, typer.Option(
        "--since", help="2025-11-01, 2025-11-01T09:00, 24h, 7d, or unix seconds")] = None,
    until: Annotated[str | None, typer.Option("--until", help="end (exclusive), same forms")]
    = None,
    actor: Annotated[str | None, typer.Option(
        "--actor", help="Only this actor (exact, or a glob: 'local:*').")] = None,
    action: Annotated[str | None, typer.Option(
        "--action", help="Only this action (user.created, or a glob: 'key.*').")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="The latest N.")] = 1000,
    json_out: JsonOpt = False, nats_url: NatsOpt = None, home: HomeOpt = None,
) -> None:
    """Every admin action (users, keys, limits, providers, settings, alert rules, MCP, skills,
    body log), oldest first, from the ledger: time, actor, action, target, details."""
    from codeswitch.cli_ledger import _run as run_ledger
    from codeswitch.cli_ledger import ask, parse_time

    params: dict[str, Any] = {"since": parse_time(since), "until": parse_time(until),
                              "actor": actor, "action": action, "limit": limit}
    rows = run_ledger(ask(nats_url_for(home_dir(home), nats_url), "audit",
                          {k: v for k, v in params.items() if v is not None}))
    if json_out:
        sys.stdout.write(json.dumps([
            {"time": _iso(r["time"]), "actor": r["actor"], "action": r["action"],
             "target": r["target"], "details": r["details"]} for r in rows]) + "\n")
        return
    if not rows:
        out.print("no admin actions on record" + (" in that window" if since or until else ""))
        return
    table = Table("time", "actor", "action", "target", "details")
    for r in rows:
        details = ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                            for k, v in r["details"].items())
        table.add_row(dt.datetime.fromtimestamp(r["time"]).strftime("%Y-%m-%d %H:%M:%S"),
                      escape(r["actor"]), r["action"], escape(r["target"]), escape(details))
    out.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(user_app, name="user")
    app.add_typer(key_app, name="key")
    app.command("audit")(audit)
