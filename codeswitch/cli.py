"""The ``codeswitch`` command: start everything (``up``), one part (``edge``, ``worker``), and
drive the rest (providers, tail, and the commands the other parts register)."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from codeswitch import __version__
from runtime.home import home_dir, masked_url, nats_url_for

app = typer.Typer(
    name="codeswitch", no_args_is_help=True, add_completion=True,
    help="An event-sourced LLM gateway for Claude Code, Codex CLI, Gemini CLI and any "
         "OpenAI/Anthropic/Gemini SDK.",
)
provider_app = typer.Typer(no_args_is_help=True, help="Manage upstream providers (in NATS KV).")
worker_app = typer.Typer(no_args_is_help=True, help="Run one worker process.")
nats_app = typer.Typer(no_args_is_help=True, help="NATS streams and buckets.")
app.add_typer(provider_app, name="provider")
app.add_typer(worker_app, name="worker")
app.add_typer(nats_app, name="nats")

console = Console()
err = Console(stderr=True)
T = TypeVar("T")

HomeOpt = Annotated[Path | None, typer.Option("--home", help="Data directory "
                    "(default $CODESWITCH_HOME or ~/.code-switch).", show_default=False)]
NatsOpt = Annotated[str | None, typer.Option("--nats-url", help="NATS URL (default: the "
                    "running gateway's, or $CODESWITCH_NATS_URL).", show_default=False)]
NatsCredsOpt = Annotated[str | None, typer.Option(
    "--nats-creds", envvar="CODESWITCH_NATS_CREDS", show_default=False,
    help="NATS .creds file for an operator's NATS ($CODESWITCH_NATS_CREDS).")]


def _logging(level: str = "WARNING") -> None:
    logging.basicConfig(level=os.environ.get("CODESWITCH_LOG_LEVEL", level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _with_nats(url: str, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Connect, run fn(nc), close; a clear message instead of a traceback when NATS is away."""

    from runtime import bus  # nats: only for the commands that talk to it

    async def main() -> T:
        try:
            nc = await bus.connect(url, name="codeswitch-cli", once=True)
        except Exception:
            err.print(f"[red]cannot reach NATS at {masked_url(url)}[/]: is the gateway running? "
                      "Start it with `codeswitch up`, or pass --nats-url.")
            raise typer.Exit(2) from None
        try:
            try:
                await bus.ensure_all(nc.jetstream())
            except ValueError as exc:  # $CODESWITCH_REPLICAS malformed
                err.print(f"[red]{exc}[/]")
                raise typer.Exit(2) from None
            except Exception as exc:  # e.g. more replicas than the cluster has servers
                err.print(f"[red]cannot create the streams and buckets on "
                          f"{masked_url(url)}:[/] {bus.explain(exc)}")
                raise typer.Exit(2) from None
            return await fn(nc)
        finally:
            await nc.drain()

    return asyncio.run(main())


async def _applied(nc: Any) -> str:
    """After a config write: wait until the running routers use it, and say so."""
    from codeswitch.admin import wait_applied

    caught, routers = await wait_applied(nc)
    if routers == 0:
        return "no router running: used as soon as one starts"
    if caught == routers:
        return f"in effect on {routers} router{'s' if routers > 1 else ''}"
    return f"[yellow]in effect on {caught} of {routers} routers so far[/]"


def _audit(nc: Any, home: Path | None) -> Any:
    """The admin facts of this command (codeswitch/audit.py): actor local:<OS user>."""
    from codeswitch.audit import AdminLog

    return AdminLog(nc, home=home_dir(home))


def _watch(frame: Callable[[], Any]) -> None:
    """Redraw ``frame()`` every second until Ctrl-C (`provider status -w`, `status -w`)."""
    from rich.live import Live

    with Live(console=console, refresh_per_second=2) as live:
        try:
            while True:
                live.update(frame())
                time.sleep(1)
        except KeyboardInterrupt:
            pass


# -- up / edge / worker ----------------------------------------------------------------------
@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
    home: HomeOpt = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="TOML config file (default $CODESWITCH_CONFIG or <home>/config.toml).",
        show_default=False)] = None,
    nats_url: Annotated[str | None, typer.Option(
        "--nats-url", help="Use this NATS instead of starting the embedded one.",
        show_default=False)] = None,
    routers: Annotated[int, typer.Option(help="Router processes to run.")] = 1,
    single_process: Annotated[bool, typer.Option(
        "--single-process",
        help="Run the edge, router, ledger and alerts in one process.")] = False,
    grace: Annotated[float, typer.Option(help="Seconds in-flight requests get on stop.")] = 30,
    connect: Annotated[bool, typer.Option(
        "--connect", help="Point Claude Code, Codex and Gemini CLI at the gateway.")] = False,
    nats_creds: NatsCredsOpt = None,
    join: Annotated[str | None, typer.Option(
        "--join", envvar="CODESWITCH_JOIN", show_envvar=False,
        help="Sync with other devices through this hub (nats://[user:pass@]HOST:LEAFPORT, "
             "what `codeswitch hub` prints; with a password, pass it in $CODESWITCH_JOIN "
             "instead: a command line is visible to every user).",
        show_default=False)] = None,
    demo: Annotated[bool, typer.Option(
        "--demo", help="Add the built-in demo provider: answers any model in every dialect "
        "(text, stream, a tool call, usage) with no key and no network.")] = False,
) -> None:
    """Start the gateway: embedded NATS, edge, router and workers. Ctrl-C stops it.
    With no provider configured, the API keys in the environment (ANTHROPIC_API_KEY,
    OPENAI_API_KEY, GEMINI_API_KEY, ...) become providers."""
    from codeswitch.config import ConfigError, FileConfig, load_config
    from codeswitch.up import exec_up

    home_path = home_dir(home)
    cfg_path = config or (Path(os.environ["CODESWITCH_CONFIG"])
                          if os.environ.get("CODESWITCH_CONFIG") else None)
    if cfg_path is None and (home_path / "config.toml").exists():
        cfg_path = home_path / "config.toml"
    file_cfg = FileConfig()
    if cfg_path is not None:
        try:
            file_cfg = load_config(cfg_path)
        except ConfigError as exc:
            err.print(f"[red]config error[/] {exc}")
            raise typer.Exit(2) from None
    if join:
        if nats_url:
            err.print("[red]--join[/] syncs the embedded NATS; with --nats-url, make that "
                      "NATS a leaf node of the hub instead (docs/architecture.md, 'Several "
                      "devices')")
            raise typer.Exit(2)
        os.environ["CODESWITCH_JOIN"] = join  # to the supervisor, not on its command line
    # the supervisor runs without the CLI in memory (codeswitch/up.py)
    exec_up({"home": str(home_path), "host": host or file_cfg.host or "127.0.0.1",
             "port": port or file_cfg.port or 18100, "nats_url": nats_url,
             "routers": routers, "single_process": single_process, "grace": grace,
             "connect": connect, "nats_creds": nats_creds if nats_url else None,
             "config": str(cfg_path) if cfg_path is not None else None, "demo": demo})


@app.command()
def edge(
    nats_url: NatsOpt = None,
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port.")] = 18100,
    grace: Annotated[float, typer.Option(help="Graceful shutdown seconds.")] = 30,
    with_router: Annotated[bool, typer.Option("--with-router", hidden=True)] = False,
    home: HomeOpt = None,
    nats_creds: NatsCredsOpt = None,
) -> None:
    """Run only the HTTP edge against a NATS (scale out by starting more)."""
    _launch(["edge", "router"] if with_router else ["edge"], home, nats_url, nats_creds,
            ["--host", host, "--port", str(port), "--grace", str(grace)])


def _launch(parts: list[str], home: Path | None, nats_url: str | None,
            nats_creds: str | None, extra: list[str] | None = None) -> None:
    """Run parts in this process, as the supervisor does (``runtime.launch``)."""
    from runtime import launch

    argv = [",".join(parts), *(extra or [])]
    if home is not None:
        argv += ["--home", str(home)]
    if nats_url:
        argv += ["--nats-url", nats_url]
    if nats_creds:
        argv += ["--nats-creds", nats_creds]
    launch.main(argv)


@worker_app.command("router")
def worker_router(nats_url: NatsOpt = None, home: HomeOpt = None,
                  nats_creds: NatsCredsOpt = None) -> None:
    """Run one router (more routers share the work queue)."""
    _launch(["router"], home, nats_url, nats_creds)


@worker_app.command("ledger")
def worker_ledger(nats_url: NatsOpt = None, home: HomeOpt = None,
                  nats_creds: NatsCredsOpt = None) -> None:
    """Run the ledger (event log -> DuckDB projection)."""
    _launch(["ledger"], home, nats_url, nats_creds)


@worker_app.command("quota")
def worker_quota(nats_url: NatsOpt = None, home: HomeOpt = None,
                 nats_creds: NatsCredsOpt = None) -> None:
    """Run the quota worker (spend per user and key -> KV cs_quota, QuotaUsed facts)."""
    _launch(["quota"], home, nats_url, nats_creds)


@worker_app.command("alerts")
def worker_alerts(nats_url: NatsOpt = None, home: HomeOpt = None,
                  nats_creds: NatsCredsOpt = None) -> None:
    """Run the alerts worker."""
    _launch(["alerts"], home, nats_url, nats_creds)


@worker_app.command("sync")
def worker_sync(nats_url: NatsOpt = None, home: HomeOpt = None,
                nats_creds: NatsCredsOpt = None) -> None:
    """Keep this NATS registered with its hub (it must be a leaf node of one: see
    docs/architecture.md, 'Several devices'); `codeswitch up --join` runs it for you."""
    _launch(["sync"], home, nats_url, nats_creds)


@nats_app.command("init")
def nats_init(
    nats_url: NatsOpt = None, home: HomeOpt = None,
    replicas: Annotated[int | None, typer.Option(
        "--replicas", min=1, max=5, show_default=False,
        help="Copies of each stream and bucket on a NATS cluster (default "
             "$CODESWITCH_REPLICAS or 1). Raised on existing ones, never lowered.")] = None,
) -> None:
    """Create or update every stream and KV bucket (idempotent)."""
    url = nats_url_for(home, nats_url)

    from runtime import bus, names

    if replicas is not None:
        os.environ["CODESWITCH_REPLICAS"] = str(replicas)  # the body log's store reads it too
    try:
        limits = bus.StreamLimits()
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None

    async def go(nc: Any) -> None:
        js = nc.jetstream()
        try:
            await bus.ensure_all(js, limits)
        except Exception as exc:  # e.g. more replicas than servers in the cluster
            err.print(f"[red]cannot create the streams with {limits.replicas} replicas:[/] "
                      f"{bus.explain(exc)}")
            raise typer.Exit(2) from None
        for cfg in bus.stream_configs(limits):
            info = await js.stream_info(cfg.name)
            console.print(f"stream {cfg.name}: {', '.join(cfg.subjects or [])} "
                          f"(replicas {info.config.num_replicas or 1})")
        for name in names.KV_BUCKETS:
            info = await js.stream_info(f"KV_{name}")
            console.print(f"kv     {name} (replicas {info.config.num_replicas or 1})")
        info = await js.stream_info(f"OBJ_{names.BODIES_BUCKET}")
        console.print(f"object {names.BODIES_BUCKET} (replicas {info.config.num_replicas or 1})")

    _with_nats(url, go)
    console.print(f"[green]streams and buckets ready on {masked_url(url)}[/]")


@nats_app.command("env")
def nats_env(nats_url: NatsOpt = None, home: HomeOpt = None) -> None:
    """Print NATS_URL (with the running gateway's credentials) for the nats CLI:
    eval "$(codeswitch nats env)" && nats sub 'llm.>'"""
    from runtime.home import nats_env_lines, read_run_file

    if nats_url is None and not os.environ.get("CODESWITCH_NATS_URL") and \
            read_run_file(home_dir(home)) is None:
        err.print(f"[red]no running gateway in {home_dir(home)}[/] (no run.json): start it "
                  "with `codeswitch up`, or pass --nats-url / --home")
        raise typer.Exit(2)
    try:
        lines = nats_env_lines(nats_url_for(home, nats_url))
    except ConnectionError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    sys.stdout.write("\n".join(lines) + "\n")


# -- providers -------------------------------------------------------------------------------
def _masked(p: Any, home: Path | None) -> Any:
    """A provider safe to print: an encrypted key is decrypted here (never printed) so the
    masked form shows its last 4 characters, as for a literal."""
    from runtime.secrets import SecretKeyError, is_encrypted, reveal

    if is_encrypted(p.api_key):
        try:
            p = msgspec.structs.replace(p, api_key=reveal(p.api_key, home_dir(home)))
        except SecretKeyError:
            pass  # masked as "enc:…"
    return p.masked()


def _secret_key(home: Path | None) -> bytes:
    """The key that encrypts literal provider keys in KV (created 0600 on first use)."""
    from runtime.secrets import load_key

    key = load_key(home_dir(home), create=True)
    assert key is not None
    return key


@provider_app.command("list")
def provider_list(nats_url: NatsOpt = None, home: HomeOpt = None,
                  json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List providers (keys masked)."""
    from codeswitch.admin import list_providers

    providers = _with_nats(nats_url_for(home, nats_url), list_providers)
    if json_out:
        sys.stdout.write(msgspec.json.encode([_masked(p, home) for p in providers]).decode()
                         + "\n")
        return
    from codeswitch.tables import provider_table

    console.print(provider_table(providers, {p.name: _masked(p, home).api_key
                                             for p in providers}, console.width))
    if any(p.source == "env" for p in providers):
        console.print("[cyan]env[/]: made by `codeswitch up` from an API key variable in its "
                      "environment (the key stays there: env:NAME)")
    if any(p.source == "demo" for p in providers):
        console.print("[yellow]demo[/]: the built-in demo provider of `codeswitch up --demo` "
                      "(canned answers, no model)")


@provider_app.command("add")
def provider_add(
    name: Annotated[str, typer.Argument(help="Provider name (letters, digits, _ and -).")],
    dialect: Annotated[str, typer.Option(help="anthropic | openai-chat | openai-responses | "
                                         "gemini")],
    base_url: Annotated[str, typer.Option(help="Base URL as the provider's SDK takes it.")],
    api_key: Annotated[str, typer.Option(help="Key, or env:NAME.")] = "",
    model: Annotated[list[str] | None, typer.Option("--model", help="Model glob it serves "
                                                    "(repeatable; none = all).")] = None,
    map_: Annotated[list[str] | None, typer.Option("--map", help="requested=upstream model "
                                                   "(repeatable).")] = None,
    priority: Annotated[int, typer.Option(help="Lower is tried first.")] = 1,
    weight: Annotated[int, typer.Option(help="Weight within its priority level.")] = 1,
    disabled: Annotated[bool, typer.Option("--disabled")] = False,
    header: Annotated[list[str] | None, typer.Option("--header", help="Name: value "
                                                     "(repeatable).")] = None,
    connect_timeout: Annotated[float, typer.Option(help="Seconds to connect.")] = 10.0,
    first_byte_timeout: Annotated[float, typer.Option(
        help="Seconds until the answer starts (a whole non-streaming answer).")] = 600.0,
    idle_timeout: Annotated[float, typer.Option(
        help="Seconds allowed between two chunks of a stream.")] = 300.0,
    total_timeout: Annotated[float, typer.Option(help="Seconds for the whole call.")] = 3600.0,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Check it after saving "
                                        "(its model list: reachable, key accepted).")] = True,
    nats_url: NatsOpt = None, home: HomeOpt = None,
) -> None:
    """Add or replace a provider. Running routers use it on their next request."""
    from codeswitch.admin import get_provider, provider_details, put_provider
    from schemas.config import ProviderConfig

    try:
        mapping = dict(item.split("=", 1) for item in map_ or [])
        headers = {k.strip(): v.strip() for k, v in
                   (item.split(":", 1) for item in header or [])}
        provider = msgspec.convert({
            "name": name, "dialect": dialect, "base_url": base_url, "api_key": api_key,
            "models": model or [], "model_map": mapping, "priority": priority,
            "weight": weight, "enabled": not disabled, "headers": headers, "source": "cli",
            "timeouts": {"connect": connect_timeout, "first_byte": first_byte_timeout,
                         "idle": idle_timeout, "total": total_timeout},
        }, ProviderConfig)
    except (ValueError, msgspec.ValidationError) as exc:
        err.print(f"[red]invalid provider:[/] {exc}")
        raise typer.Exit(2) from None

    key = _secret_key(home) if provider.api_key else None

    async def go(nc: Any) -> str:
        existed = await get_provider(nc, name) is not None
        await put_provider(nc, provider, secret_key=key)
        await _audit(nc, home).record("provider.updated" if existed else "provider.added",
                                      f"provider:{name}", **provider_details(provider))
        return await _applied(nc)

    applied = _with_nats(nats_url_for(home, nats_url), go)
    console.print(f"provider [bold]{name}[/] saved ({dialect}, {base_url}); {applied}")
    if check and provider.enabled:
        _print_findings([provider], home, None, timeout=8.0)


def _print_findings(providers: list[Any], home: Path | None, model: str | None,
                    timeout: float) -> bool:
    """Check providers (codeswitch/probe.py) and say what is wrong; True when all are ok."""
    from codeswitch.probe import check_all
    from runtime.secrets import reveal

    findings = check_all(providers, lambda v: reveal(v, home_dir(home)), timeout=timeout,
                         model=model)
    for f in findings:
        if f.ok:
            console.print(f"[green]✓[/] {f.provider}: {f.message} ({f.ms:.0f} ms)")
        else:
            console.print(f"[red]✗ {f.provider}: {f.kind.replace('_', ' ')}[/] — {f.message}")
    return all(f.ok for f in findings)


@provider_app.command("test")
def provider_test(
    name: Annotated[str | None, typer.Argument(help="Provider (default: every enabled one).")]
    = None,
    model: Annotated[str | None, typer.Option("--model", help="Also check that this model "
                                              "is in its list.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per call.")] = 8.0,
    nats_url: NatsOpt = None, home: HomeOpt = None,
) -> None:
    """Check a provider with one cheap call (its model list): reachable, key accepted, model
    listed. Says precisely what is wrong (bad key, bad base URL, unreachable, model not
    found). Exit code 1 when something is."""
    from codeswitch.admin import get_provider, list_providers

    async def go(nc: Any) -> list[Any]:
        if name is None:
            return [p for p in await list_providers(nc) if p.enabled]
        p = await get_provider(nc, name)
        return [p] if p is not None else []

    providers = _with_nats(nats_url_for(home, nats_url), go)
    if not providers:
        err.print(f"[red]no provider named {name!r}[/]" if name else "[red]no provider[/]")
        raise typer.Exit(1)
    raise typer.Exit(0 if _print_findings(providers, home, model, timeout) else 1)


def _set_enabled(name: str, enabled: bool, nats_url: str | None, home: Path | None) -> None:
    from codeswitch.admin import get_provider, put_provider

    async def go(nc: Any) -> str | None:
        p = await get_provider(nc, name)
        if p is None:
            return None
        await put_provider(nc, msgspec.structs.replace(p, enabled=enabled))
        await _audit(nc, home).record("provider.enabled" if enabled else "provider.disabled",
                                      f"provider:{name}")
        return await _applied(nc)

    applied = _with_nats(nats_url_for(home, nats_url), go)
    if applied is None:
        err.print(f"[red]no provider named {name!r}[/]")
        raise typer.Exit(1)
    console.print(f"provider [bold]{name}[/] {'enabled' if enabled else 'disabled'}; {applied}")


@provider_app.command("enable")
def provider_enable(name: str, nats_url: NatsOpt = None, home: HomeOpt = None) -> None:
    """Enable a provider."""
    _set_enabled(name, True, nats_url, home)


@provider_app.command("disable")
def provider_disable(name: str, nats_url: NatsOpt = None, home: HomeOpt = None) -> None:
    """Disable a provider (kept, not used)."""
    _set_enabled(name, False, nats_url, home)


@provider_app.command("remove")
def provider_remove(name: str, nats_url: NatsOpt = None, home: HomeOpt = None) -> None:
    """Remove a provider."""
    from codeswitch.admin import delete_provider
    from codeswitch.routes import get_routes

    async def go(nc: Any) -> str | None:
        naming = [r.name for r in (await get_routes(nc)).rules if name in r.to]
        if naming:  # a rule must never name a provider that is not there
            return "!" + ", ".join(naming)
        if not await delete_provider(nc, name):
            return None
        await _audit(nc, home).record("provider.removed", f"provider:{name}")
        return await _applied(nc)

    applied = _with_nats(nats_url_for(home, nats_url), go)
    if applied is not None and applied.startswith("!"):
        err.print(f"[red]provider {name!r} is named by route rule(s) {applied[1:]}:[/] change "
                  "or remove them first (`codeswitch route list`)")
        raise typer.Exit(1)
    if applied is None:
        err.print(f"[red]no provider named {name!r}[/]")
        raise typer.Exit(1)
    console.print(f"provider [bold]{name}[/] removed; {applied}")


@provider_app.command("status")
def provider_status(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every second.")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    nats_url: NatsOpt = None, home: HomeOpt = None,
) -> None:
    """Providers with their circuit breakers (shared by all routers), live with --watch."""
    from codeswitch.admin import get_setting, list_circuits, list_providers

    url = nats_url_for(home, nats_url)

    async def snapshot(nc: Any) -> tuple[Any, Any, Any, Any]:
        return (await list_providers(nc), await list_circuits(nc),
                await get_setting(nc, "active"), await get_setting(nc, "unified"))

    def render(data: tuple[Any, Any, Any, Any]) -> Table:
        providers, circuits, active, unified = data
        now = time.time()
        table = Table("provider", "dialect", "priority", "enabled", "active for", "circuit",
                      "since", "recent failures", "reason",
                      title="providers" + ("  (unified upstream ON: "
                                           f"{unified.url})" if unified.enabled else ""))
        for p in providers:
            keys = [k for k in circuits if k == p.name or k.startswith(p.name + ".")]
            apps = ", ".join(a for a, n in active.by_app.items() if n == p.name) or ""
            if not keys:
                table.add_row(p.name, p.dialect, str(p.priority), "yes" if p.enabled else "no",
                              apps, "[green]closed[/]", "", "", "")
            for k in keys:
                st = circuits[k]
                color = {"open": "red", "half_open": "yellow"}.get(st.state, "green")
                label = st.state if k == p.name else f"{st.state} ({k[len(p.name) + 1:]})"
                since = f"{now - st.opened_at:.0f}s" if st.opened_at else ""
                table.add_row(p.name, p.dialect, str(p.priority), "yes" if p.enabled else "no",
                              apps, f"[{color}]{label}[/]", since, str(len(st.failures)),
                              st.reason or "")
        return table

    if json_out:
        providers, circuits, active, unified = _with_nats(url, snapshot)
        sys.stdout.write(msgspec.json.encode({
            "providers": [_masked(p, home) for p in providers], "circuits": circuits,
            "active": active, "unified": {"enabled": unified.enabled, "url": unified.url},
        }).decode() + "\n")
        return
    if not watch:
        console.print(render(_with_nats(url, snapshot)))
        return
    _watch(lambda: render(_with_nats(url, snapshot)))


@app.command()
def status(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every second.")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    nats_url: NatsOpt = None, home: HomeOpt = None,
) -> None:
    """Is the gateway up: edge readiness, routers taking work, the queue, and how far each
    worker (ledger, alerts) is behind the event log. Exit code 1 when degraded."""
    from codeswitch.status import as_json, gather, render
    from runtime.home import read_run_file

    url = nats_url_for(home, nats_url)
    run_info = read_run_file(home_dir(home))

    def snap() -> Any:
        return _with_nats(url, lambda nc: gather(nc, url, run_info))

    if json_out:
        got = snap()
        sys.stdout.write(msgspec.json.encode(as_json(got)).decode() + "\n")
        raise typer.Exit(0 if got.healthy else 1)
    if not watch:
        got = snap()
        console.print(render(got, run_info))
        raise typer.Exit(0 if got.healthy else 1)
    _watch(lambda: render(snap(), run_info))


@app.command()
def use(
    provider: Annotated[str | None, typer.Argument(help="Provider to use first.")] = None,
    client: Annotated[str, typer.Option(
        "--client", help="claude | codex | gemini | openai | all")] = "all",
    clear: Annotated[bool, typer.Option("--clear", help="Back to normal routing.")] = False,
    nats_url: NatsOpt = None, home: HomeOpt = None,
) -> None:
    """Switch a client's provider at run time (no CLI restart); the others stay as fallback."""
    from codeswitch.admin import get_provider, get_setting, put_setting
    from schemas.config import CLIENT_APPS, ActiveProviders

    apps = list(CLIENT_APPS) if client == "all" else [client]
    if any(a not in CLIENT_APPS for a in apps):
        err.print(f"[red]unknown client {client!r}[/]: claude, codex, gemini, openai or all")
        raise typer.Exit(2)
    if not clear and not provider:
        err.print("[red]name a provider, or pass --clear[/]")
        raise typer.Exit(2)

    async def go(nc: Any) -> tuple[str | None, str]:
        if provider and not clear and await get_provider(nc, provider) is None:
            return f"no provider named {provider!r}", ""
        current: ActiveProviders = await get_setting(nc, "active")
        by_app = dict(current.by_app)
        for a in apps:
            if clear:
                by_app.pop(a, None)
            else:
                by_app[a] = provider  # type: ignore[assignment]
        await put_setting(nc, "active", ActiveProviders(by_app=by_app))
        await _audit(nc, home).record("active.changed", "setting:active", clients=apps,
                                      provider=None if clear else provider, cleared=clear or None)
        return None, await _applied(nc)

    problem, applied = _with_nats(nats_url_for(home, nats_url), go)
    if problem:
        err.print(f"[red]{problem}[/]")
        raise typer.Exit(1)
    what = "normal routing" if clear else f"[bold]{provider}[/] first"
    console.print(f"{', '.join(apps)}: {what}; {applied}")


@app.command()
def unified(
    state: Annotated[str, typer.Argument(help="on | off | show")] = "show",
    url: Annotated[str | None, typer.Option(help="NEW-API/one-api base URL.")] = None,
    token: Annotated[str | None, typer.Option(help="Its token, or env:NAME.")] = None,
    nats_url: NatsOpt = None, home: HomeOpt = None,
) -> None:
    """Unified-upstream mode: every request to one NEW-API/one-api gateway first, the local
    providers as fallback."""
    from codeswitch.admin import get_setting, put_setting
    from schemas.config import UnifiedUpstream

    if state not in ("on", "off", "show"):
        err.print("[red]state must be on, off or show[/]")
        raise typer.Exit(2)

    key = _secret_key(home) if token else None

    async def go(nc: Any) -> tuple[UnifiedUpstream, str]:
        current: UnifiedUpstream = await get_setting(nc, "unified")
        if state == "show":
            return current, ""
        new = UnifiedUpstream(enabled=state == "on", url=url or current.url,
                              token=token if token is not None else current.token)
        await put_setting(nc, "unified", new, secret_key=key)
        await _audit(nc, home).record("unified.changed", "setting:unified", enabled=new.enabled,
                                      url=new.url, token="set" if new.token else None)
        return new, "; " + await _applied(nc)

    try:
        result, applied = _with_nats(nats_url_for(home, nats_url), go)
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    console.print(f"unified upstream: {'[green]on[/]' if result.enabled else 'off'} "
                  f"({result.url}, token {'set' if result.token else 'not set'}){applied}")


# -- tail ------------------------------------------------------------------------------------
@app.command()
def tail(
    provider: Annotated[str | None, typer.Option(help="Only this provider.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model (glob).")] = None,
    status: Annotated[str | None, typer.Option(
        help="Only this status: 200, 4xx, 5xx, error.")] = None,
    attempts: Annotated[bool, typer.Option("--attempts", help="Also show attempts.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON fact per line.")] = False,
    count: Annotated[int | None, typer.Option("--count", "-n", help="Stop after N.")] = None,
    nats_url: NatsOpt = None, home: HomeOpt = None,
) -> None:
    """Live view of the event log (what `nats sub 'llm.>'` shows), filtered."""
    from codeswitch.tail import follow

    try:
        asyncio.run(follow(nats_url_for(home, nats_url), provider=provider, model=model,
                           status=status, attempts=attempts, json_out=json_out, count=count,
                           console=console))
    except KeyboardInterrupt:
        pass
    except ConnectionError as exc:
        url = nats_url_for(home, nats_url)
        err.print(f"[red]{str(exc).replace(url, masked_url(url))}[/]")
        raise typer.Exit(2) from None


# the commands each plugin module adds: only the one a command line names is imported (all of
# them for --help or an unknown command), so that `codeswitch up` and `codeswitch provider list`
# do not pay for httpx, the MCP and skills code and the ledger's and alerts' commands
PLUGINS: dict[str, tuple[str, ...]] = {
    "codeswitch.cli_clients": ("connect", "disconnect", "mcp", "skills"),
    "codeswitch.cli_ledger": ("stats", "log", "heatmap", "replay", "export"),
    "codeswitch.cli_alerts": ("alerts",),
    "codeswitch.cli_bodylog": ("body-log",),
    "codeswitch.cli_users": ("user", "key", "audit"),
    "codeswitch.cli_sessions": ("sessions", "online"),
    "codeswitch.cli_routes": ("route",),
    "codeswitch.cli_sync": ("hub", "sync"),
    "codeswitch.cli_firsthour": ("init", "doctor", "service"),
    "codeswitch.cli_quota": ("quota",),
}


def _own_commands() -> set[str]:
    names = {(c.name or (c.callback.__name__ if c.callback else "")).replace("_", "-")
             for c in app.registered_commands}
    return names | {g.name for g in app.registered_groups if g.name}


def _plugins_for(argv: list[str]) -> list[str]:
    command = next((a for a in argv if not a.startswith("-")), None)
    for module, commands in PLUGINS.items():
        if command in commands:
            return [module]
    if command in _own_commands():
        return []
    return list(PLUGINS)  # --help, no command, a typo: every command, for typer's message


def _register_plugins(argv: list[str] | None = None) -> None:
    """Command groups that live beside their parts (clients, ledger, alerts, body log)."""
    for module in _plugins_for(sys.argv[1:] if argv is None else argv):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        register = getattr(mod, "register", None)
        if register is not None:
            register(app)


_register_plugins()


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version.")]
          = False) -> None:
    if version:
        console.print(f"codeswitch {__version__}")
        raise typer.Exit()


def main() -> None:
    # before anything is written: the NATS store, DuckDB, logs, run.json and the outbox files
    # of this process and of every process it starts are this user's only
    from runtime.process import private_umask

    private_umask()
    from runtime.bus import HubUnavailableError

    try:
        app()
    except HubUnavailableError as exc:  # a shared setting changed while the hub is away
        err.print(f"[red]{exc}[/]")
        sys.exit(2)
