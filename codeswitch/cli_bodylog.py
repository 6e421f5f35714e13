"""`codeswitch body-log`: turn the body log on or off at run time, list what it kept, show one
request's bodies. The entries live in the object store bucket cs_body_log (edge/bodylog.py)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import msgspec
import typer
from nats.js.errors import NotFoundError, ObjectNotFoundError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from runtime import bus, names
from runtime.home import home_dir, nats_url_for

__all__ = ["register"]

body_app = typer.Typer(help="The body log: request and response bodies, off by default.",
                       no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True)
NatsOpt = Annotated[str | None, typer.Option("--nats-url", help="NATS URL (default: the "
                    "running gateway's, or $CODESWITCH_NATS_URL).", show_default=False)]


def _with_nats(url: str | None, fn: Any) -> Any:
    from codeswitch.cli import _with_nats as run

    return run(nats_url_for(None, url), fn)


def _switch(on: bool, nats_url: str | None) -> None:
    from codeswitch.admin import get_setting, put_setting

    async def go(nc: Any) -> str | None:
        if on:  # the bucket first: on a NATS with too little storage, say so and stay off
            try:
                await bus.body_log_store(nc.jetstream())
            except Exception as exc:
                return (f"cannot create the body log bucket {names.BODY_LOG_BUCKET} "
                        f"({names.BODY_LOG_MAX_BYTES >> 30} GiB): {exc}")
        from codeswitch.audit import AdminLog

        current = await get_setting(nc, "gateway")
        await put_setting(nc, "gateway", msgspec.structs.replace(current, body_log=on))
        await AdminLog(nc, home=home_dir(None)).record("body_log." + ("on" if on else "off"),
                                                       "setting:body_log")
        return None

    problem = _with_nats(nats_url, go)
    if problem:
        err.print(f"[red]{problem}[/]; the body log stays off")
        raise typer.Exit(1)
    if on:
        out.print("body log [bold]on[/]: every request's body and response are kept for "
                  f"{names.BODY_LOG_TTL_S / 86400:.0f} days (at most "
                  f"{names.BODY_LOG_MAX_BYTES >> 30} GiB) in NATS bucket {names.BODY_LOG_BUCKET}. "
                  "They hold your prompts and code: turn it off when you are done.")
    else:
        out.print("body log off (what it kept stays until it expires)")


@body_app.command("on")
def body_on(nats_url: NatsOpt = None) -> None:
    """Keep request and response bodies (until `body-log off`, or the next `up` that reads a
    config file without body_log)."""
    _switch(True, nats_url)


@body_app.command("off")
def body_off(nats_url: NatsOpt = None) -> None:
    """Stop keeping bodies."""
    _switch(False, nats_url)


@body_app.command("list")
def body_list(
    limit: Annotated[int, typer.Option("--limit", "-n", help="Newest N.")] = 20,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    nats_url: NatsOpt = None,
) -> None:
    """The request ids the body log holds, newest first."""
    from codeswitch.admin import get_setting

    async def go(nc: Any) -> tuple[bool, list[Any]]:
        on = (await get_setting(nc, "gateway")).body_log
        try:
            obs = await nc.jetstream().object_store(names.BODY_LOG_BUCKET)
            infos = await obs.list()
        except NotFoundError:  # no bucket yet (never turned on), or an empty one
            infos = []
        return on, sorted(infos, key=lambda i: i.mtime or "", reverse=True)[:limit]

    on, infos = _with_nats(nats_url, go)
    if json_out:
        sys.stdout.write(json.dumps([{"request_id": i.name, "bytes": i.size,
                                      "at": i.mtime} for i in infos]) + "\n")
        return
    table = Table("request id", "size", "kept at",
                  title=f"body log ({'on' if on else 'off'})", title_justify="left")
    for i in infos:
        table.add_row(i.name, f"{(i.size or 0) / 1024:.1f} KiB", str(i.mtime or ""))
    out.print(table)


@body_app.command("show")
def body_show(
    request_id: Annotated[str, typer.Argument(help="The x-codeswitch-request-id.")],
    json_out: Annotated[bool, typer.Option("--json", help="The whole entry as JSON.")] = False,
    nats_url: NatsOpt = None,
) -> None:
    """One request's body and the response as the client received it."""
    async def go(nc: Any) -> bytes | str | None:
        try:
            obs = await nc.jetstream().object_store(names.BODY_LOG_BUCKET)
            return (await obs.get(request_id)).data or b""
        except (ObjectNotFoundError, NotFoundError):
            return None
        except Exception as exc:  # chunks dropped when the log was full: digest mismatch
            return f"{type(exc).__name__}: {exc}"

    raw = _with_nats(nats_url, go)
    if isinstance(raw, str):
        err.print(f"[red]the entry for {request_id} is incomplete[/] (its oldest part was "
                  f"dropped when the body log was full): {raw}")
        raise typer.Exit(1)
    if raw is None:
        err.print(f"[red]no body kept for {request_id}[/]: is the body log on (`codeswitch "
                  "body-log on`), and is it less than a week old?")
        raise typer.Exit(1)
    if json_out:
        sys.stdout.write(raw.decode() + "\n")
        return
    entry = json.loads(raw)
    out.print(f"[bold]{entry['request_id']}[/]  {entry['dialect']} {entry['path']}  model "
              f"{entry.get('model')}  provider {entry.get('provider')}  status {entry['status']}")
    out.rule("request")
    try:
        out.print_json(entry["request"])
    except Exception:
        out.print(Text(entry["request"]))
    out.rule("response" + (" (truncated)" if entry.get("response_truncated") else ""))
    out.print(Text(entry["response"]))


def register(app: typer.Typer) -> None:
    app.add_typer(body_app, name="body-log")
