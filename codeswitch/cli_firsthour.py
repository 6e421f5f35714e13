"""The first hour's commands: ``codeswitch init`` (a commented config from what this machine
has) and ``codeswitch doctor`` (NATS, the parts, each provider, the CLIs' configs: what to
fix). ``register(app)`` adds them (``PLUGINS`` in codeswitch/cli.py)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from runtime.home import home_dir, nats_url_for, read_run_file

__all__ = ["register"]

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

HomeOpt = Annotated[Path | None, typer.Option("--home", help="Data directory "
                    "(default $CODESWITCH_HOME or ~/.code-switch).", show_default=False)]


def _tty() -> bool:
    """Whether init may ask (a terminal on stdin)."""
    return sys.stdin.isatty()


def init(
    path: Annotated[Path | None, typer.Option("--path", help="Where to write (default "
                                              "<home>/config.toml).", show_default=False)]
    = None,
    provider: Annotated[list[str] | None, typer.Option(
        "--provider", help="Only these providers (repeatable; default: every one whose key "
        "is in the environment).")] = None,
    port: Annotated[int, typer.Option(help="The gateway's port.")] = 18100,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Ask nothing: take the defaults "
                                      "(an existing file is still kept unless --force).")]
    = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file (a "
                                        "copy is kept as <file>.bak).")] = False,
    stdout: Annotated[bool, typer.Option("--stdout", help="Print it, write nothing.")] = False,
    home: HomeOpt = None,
) -> None:
    """Write a commented config file from the provider keys in the environment
    (ANTHROPIC_API_KEY, OPENAI_API_KEY, GEMINI_API_KEY, ...): interactive in a terminal, or
    with flags. Never overwrites a file without asking (or --force)."""
    from codeswitch.envproviders import KNOWN, detect
    from codeswitch.init_config import render_config

    found = {p.name: var for p, var in detect(os.environ)}
    known = {k.name: k for k in KNOWN}
    interactive = _tty() and not yes and not stdout
    if provider:
        unknown = [n for n in provider if n not in known]
        if unknown:
            err.print(f"[red]unknown provider {unknown[0]!r}[/]: one of {', '.join(known)}")
            raise typer.Exit(2)
        chosen = {n: found.get(n, known[n].variables[0]) for n in provider}
    else:
        chosen = dict(found)
    if interactive:
        if found:
            console.print("Provider keys found in the environment: " + ", ".join(
                f"[bold]{n}[/] ({v})" for n, v in found.items()))
        else:
            console.print("No provider key in the environment (ANTHROPIC_API_KEY, "
                          "OPENAI_API_KEY, GEMINI_API_KEY, …).")
        if not provider:
            chosen = {n: v for n, v in found.items()
                      if typer.confirm(f"  use {n} (key from {v})?", default=True)}
    text = render_config(chosen, port=port)
    if stdout:
        sys.stdout.write(text)
        return
    target = (path or home_dir(home) / "config.toml").expanduser()
    if target.exists():
        if not force and not (interactive and typer.confirm(
                f"{target} exists. Overwrite it (a copy goes to {target.name}.bak)?",
                default=False)):
            err.print(f"[yellow]{target} exists: kept as it is[/]. Overwrite with --force, "
                      "write elsewhere with --path, or see it with --stdout.")
            raise typer.Exit(1)
        backup = target.with_name(target.name + ".bak")
        backup.write_bytes(target.read_bytes())
        os.chmod(backup, 0o600)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    tmp.replace(target)
    names = ", ".join(chosen) or "none (edit the file, or `codeswitch up --demo`)"
    console.print(f"wrote {target}: providers {names}. Start with `codeswitch up`"
                  + ("" if path is None else f" --config {target}") + ".")


# -- doctor -----------------------------------------------------------------------------------

def _mark(ok: bool | None) -> str:
    return "[green]✓[/]" if ok else ("[yellow]![/]" if ok is None else "[red]✗[/]")


def _client_urls() -> dict[str, tuple[str, str | None]]:
    """Each CLI's configured gateway URL, where ``codeswitch connect`` writes it:
    client -> (file, URL or None)."""
    from codeswitch.clients.paths import ClientPaths

    paths = ClientPaths.discover()
    out: dict[str, tuple[str, str | None]] = {}
    try:
        doc = json.loads(paths.claude_settings.read_text())
        env = doc.get("env") if isinstance(doc, dict) else None
        out["claude"] = (str(paths.claude_settings),
                         env.get("ANTHROPIC_BASE_URL") if isinstance(env, dict) else None)
    except (OSError, ValueError):
        pass
    try:
        doc = tomllib.loads(paths.codex_config.read_text())
        prov = doc.get("model_providers", {}).get("codeswitch", {})
        url = prov.get("base_url") if doc.get("model_provider") == "codeswitch" else None
        out["codex"] = (str(paths.codex_config),
                        url.removesuffix("/v1") if isinstance(url, str) else None)
    except (OSError, ValueError, AttributeError):
        pass
    try:
        url = None
        for line in paths.gemini_env.read_text().splitlines():
            k, sep, v = line.partition("=")
            if sep and k.strip().removeprefix("export ").strip() == "GOOGLE_GEMINI_BASE_URL":
                url = v.strip().strip("'\"")
        out["gemini"] = (str(paths.gemini_env), url)
    except OSError:
        pass
    return out


def doctor(
    timeout: Annotated[float, typer.Option(help="Seconds per provider call.")] = 8.0,
    home: HomeOpt = None,
    nats_url: Annotated[str | None, typer.Option("--nats-url", show_default=False)] = None,
) -> None:
    """Check NATS, the parts, each provider (reachable, key accepted: its model list) and the
    CLIs' configs; print what to fix. Exit code 0 only when all is well."""
    from codeswitch.admin import list_providers
    from codeswitch.probe import check_all
    from codeswitch.status import gather
    from runtime import bus
    from runtime.secrets import reveal

    data = home_dir(home)
    problems = 0
    run_info = read_run_file(data)
    url = nats_url_for(home, nats_url)

    async def look() -> tuple[Any, list[Any]] | None:
        try:
            nc = await bus.connect(url, name="codeswitch-doctor", once=True)
        except Exception:
            return None
        try:
            return await gather(nc, url, run_info), await list_providers(nc)
        finally:
            await nc.drain()

    got = asyncio.run(look())
    if got is None:
        console.print(f"{_mark(False)} NATS: cannot reach it ({'the gateway of ' + str(data) if run_info else 'no run.json in ' + str(data)}): "  # noqa: E501
                      "start the gateway with `codeswitch up` (or pass --home / --nats-url)")
        raise typer.Exit(1)
    snap, providers = got
    console.print(f"{_mark(True)} NATS {snap.nats_url} (server {snap.server.get('version')})")
    edge_ok = snap.edge_ready == "ready" or snap.edge_url is None
    console.print(f"{_mark(edge_ok)} edge {snap.edge_url or '(not started by up here)'}: "
                  f"{snap.edge_ready}")
    console.print(f"{_mark(bool(snap.routers))} routers taking work: {len(snap.routers)}"
                  + ("" if snap.routers else " — start the gateway (`codeswitch up`)"))
    missing = [c["what"] for c in snap.consumers if not c["present"]]
    console.print(f"{_mark(not missing)} workers: "
                  + ("ledger and alerts consuming" if not missing else
                     f"not consuming: {', '.join(missing)} (see `codeswitch status`)"))
    if snap.parts_ok is False:
        console.print(f"{_mark(False)} parts: some are down or crash-looping "
                      "(`codeswitch status`)")
    problems += (not edge_ok) + (not snap.routers) + bool(missing) + (snap.parts_ok is False)

    enabled = [p for p in providers if p.enabled]
    if not enabled:
        problems += 1
        console.print(f"{_mark(False)} providers: none enabled — set ANTHROPIC_API_KEY / "
                      "OPENAI_API_KEY / GEMINI_API_KEY and restart `codeswitch up`, "
                      "`codeswitch provider add …`, or `codeswitch up --demo`")
    for f in check_all(enabled, lambda v: reveal(v, data), timeout=timeout):
        problems += not f.ok
        what = f.message if f.ok else f"{f.kind.replace('_', ' ')} — {f.message}"
        console.print(f"{_mark(f.ok)} provider {f.provider}: {what}")

    edge = snap.edge_url or (str(run_info.get("edge_url")) if run_info else None)
    for client, (file, configured) in _client_urls().items():
        if configured is None:
            console.print(f"{_mark(None)} {client}: not pointed at a gateway ({file}); "
                          f"`codeswitch connect {client}` does it")
        elif edge and configured.rstrip("/") != edge.rstrip("/"):
            problems += 1
            console.print(f"{_mark(False)} {client}: points at {configured}, but the gateway "
                          f"listens on {edge} ({file}): run `codeswitch connect {client}`")
        else:
            console.print(f"{_mark(True)} {client}: points at {configured}")
    console.print(f"[bold]{'all is well' if not problems else f'{problems} to fix'}[/] "
                  f"({time.strftime('%H:%M:%S')})")
    raise typer.Exit(0 if not problems else 1)


# -- service ----------------------------------------------------------------------------------

service_app = typer.Typer(no_args_is_help=True, help="Start the gateway at login (a systemd "
                          "user unit on Linux, a launchd agent on macOS).")


@service_app.command("install")
def service_install(
    port: Annotated[int | None, typer.Option(help="The gateway's port.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Its config file.",
                                                show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the unit, write "
                                          "nothing.")] = False,
    home: HomeOpt = None,
) -> None:
    """Register `codeswitch up` as a user service: started now and at every login, restarted
    when it fails; logs in `journalctl --user -u codeswitch` (macOS: <home>/logs/service.log)."""
    from codeswitch import service

    data = home_dir(home)
    cfg = config.expanduser().resolve() if config else None
    if dry_run:
        sys.stdout.write(service.launchd_plist(data, port, cfg) if sys.platform == "darwin"
                         else service.systemd_unit(data, port, cfg))
        return
    try:
        for line in service.install(data, port, cfg):
            console.print(line)
    except service.ServiceError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None


@service_app.command("uninstall")
def service_uninstall() -> None:
    """Stop the service and remove it: the gateway no longer starts at login."""
    from codeswitch import service

    for line in service.uninstall():
        console.print(line)


@service_app.command("status")
def service_status() -> None:
    """Whether the service is installed, and what systemd/launchd say about it."""
    from codeswitch import service

    installed, text = service.status()
    console.print(text, markup=False)
    raise typer.Exit(0 if installed else 1)


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("doctor")(doctor)
    app.add_typer(service_app, name="service")
