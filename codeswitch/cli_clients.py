"""CLI commands that touch the coding CLIs' own files: ``connect``/``disconnect``, the ``mcp``
group and the ``skills`` group. The lead's ``codeswitch/cli.py`` calls ``register(app)``.
See docs/clients.md for what each command writes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from codeswitch.clients import connect as conn
from codeswitch.clients import mcp_writes
from codeswitch.clients._errors import ClientsError, FileChangedError
from codeswitch.clients.mcp import McpServer
from codeswitch.clients.mcp_files import apply_sync, file_servers, plan_sync, sync_diff
from codeswitch.clients.mcp_store import McpStore, open_store
from codeswitch.clients.paths import ClientPaths
from codeswitch.clients.skills import SkillsManager
from runtime.home import home_dir, nats_url_for

__all__ = ["connect_all", "register"]

connect_all = conn.connect_all

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
T = TypeVar("T")

HOME_OPT = typer.Option(None, "--home", help="Data directory (default $CODESWITCH_HOME or "
                        "~/.code-switch).")
NATS_OPT = typer.Option(None, "--nats-url", help="NATS of the running gateway (default: "
                        "found from the data directory).")
DRY_OPT = typer.Option(False, "--dry-run", help="Print the diff and write nothing.")

mcp_app = typer.Typer(help="MCP servers for Claude Code and Codex (one list, kept in NATS KV).",
                      no_args_is_help=True)
skills_app = typer.Typer(help="Claude Skills: browse repositories, install into "
                         "~/.claude/skills.", no_args_is_help=True)
repos_app = typer.Typer(help="Skill repositories.", no_args_is_help=True)
skills_app.add_typer(repos_app, name="repos")


def _fails_cleanly(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn our errors into one red line and exit status 1, without a traceback."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except (ClientsError, OSError) as exc:  # OSError: disk full, permissions, ...
            err.print(f"[red]error:[/red] {exc}", markup=True)
            raise typer.Exit(1) from None
    return wrapper


def _targets(target: str, known: list[str]) -> list[str]:
    if target == "all":
        return known
    if target not in conn.CLIENT_NAMES:
        raise ClientsError(f"unknown client {target!r}: use claude, codex, gemini or all")
    return [target]


# -- connect / disconnect -----------------------------------------------------------------
@_fails_cleanly
def connect_cmd(
    target: str = typer.Argument("all", help="claude, codex, gemini or all (detected ones)."),
    dry_run: bool = DRY_OPT,
    base_url: str | None = typer.Option(None, "--base-url", help="Gateway URL (default: the "
                                        "running gateway's, from its run.json).",
                                        show_default=False),
    key: str | None = typer.Option(None, "--key", help="Gateway key the clients send "
                                   "(default: none needed, or your own when it has users)."),
    home: Path | None = HOME_OPT,
) -> None:
    """Point Claude Code, Codex and/or Gemini CLI at the gateway."""
    from codeswitch.clients.target import KeyRequired, gateway_url

    data = home_dir(home)
    paths = ClientPaths.discover()
    names = _targets(target, conn.detected(paths))
    if not names:
        out.print("no coding CLI detected; name one: codeswitch connect claude|codex|gemini")
        return
    base_url, note = gateway_url(data, base_url, conn.DEFAULT_BASE_URL)
    if note:
        err.print(f"[yellow]note:[/yellow] {note}", markup=True)
    if key is None and not dry_run:
        try:
            key = _gateway_key(home, note is None)
        except KeyRequired as exc:
            err.print(f"[red]error:[/red] {exc}", markup=True)
            raise typer.Exit(2) from None
    state = conn.load_clients_state(data)
    plans = []  # plan everything first: one malformed file stops all writes
    for name in names:
        plans.append(conn.plan_connect(name, conn.edits_for(name, paths, base_url, key), state))
    for plan in plans:
        for note in plan.notes:
            err.print(f"[yellow]note:[/yellow] {note}", markup=True)
        if dry_run:
            out.print(plan.diff() or f"{plan.client}: no changes\n", markup=False, end="")
            continue
        plan = _apply_fresh(plan, data, lambda c: conn.plan_connect(
            c, conn.edits_for(c, paths, base_url, key), conn.load_clients_state(data)))
        files = ", ".join(str(c.path) for c in plan.changes)
        out.print(f"{plan.client}: {'connected' if plan.changed else 'already connected'} "
                  f"({files})", markup=False)
        if plan.client == "gemini":  # checked against Gemini CLI 0.61's loadEnvironment
            out.print("  Gemini CLI reads ~/.gemini/.env only in folders it trusts (it asks "
                      "the first time it starts in one). For `gemini -p` in other folders: "
                      "GEMINI_CLI_TRUST_WORKSPACE=true, or export GOOGLE_GEMINI_BASE_URL="
                      f"{base_url} in your shell.", markup=False)
    if not dry_run and any(p.changed for p in plans):
        out.print(f"backups in {data / 'backups'}; undo with `codeswitch disconnect`",
                  markup=False)


def _gateway_key(home: Path | None, running: bool) -> str | None:
    """The key the clients need (``codeswitch/clients/target.py``); None: any key works."""
    from codeswitch.clients.target import choose_key

    if not running:
        err.print("[yellow]note:[/yellow] the gateway is not running, so whether it requires a "
                  "key was not checked: the placeholder key is written", markup=True)
        return None

    async def go() -> str | None:
        from codeswitch.audit import AdminLog
        from runtime import bus

        try:
            nc = await bus.connect(nats_url_for(home, None), name="codeswitch-connect",
                                   once=True)
        except Exception:
            err.print("[yellow]note:[/yellow] cannot reach the gateway's NATS: whether it "
                      "requires a key was not checked", markup=True)
            return None
        try:
            await bus.ensure_all(nc.jetstream())
            choice = await choose_key(nc, AdminLog(nc, home=home_dir(home)))
        finally:
            await nc.drain()
        if choice.note:
            err.print(f"[yellow]note:[/yellow] {choice.note}", markup=True)
        return choice.key

    return asyncio.run(go())


@_fails_cleanly
def disconnect_cmd(
    target: str = typer.Argument("all", help="claude, codex, gemini or all."),
    dry_run: bool = DRY_OPT,
    home: Path | None = HOME_OPT,
) -> None:
    """Restore the clients' files as they were before `connect`."""
    data = home_dir(home)
    state = conn.load_clients_state(data)
    names = _targets(target, [n for n in conn.CLIENT_NAMES if n in state])
    if not names:
        out.print("nothing connected by codeswitch")
        return
    plans = [conn.plan_disconnect(name, state) for name in names]
    for plan in plans:
        for note in plan.notes:
            err.print(f"[yellow]note:[/yellow] {note}", markup=True)
        if dry_run:
            out.print(plan.diff() or f"{plan.client}: no changes\n", markup=False, end="")
            continue
        plan = _apply_fresh(plan, data, lambda c: conn.plan_disconnect(
            c, conn.load_clients_state(data)))
        if plan.changes:
            out.print(f"{plan.client}: disconnected", markup=False)


# -- mcp ----------------------------------------------------------------------------------
def _admin_log(store: McpStore, home: Path | None) -> Any:
    """The command's admin facts, on the store's connection (codeswitch/audit.py)."""
    from codeswitch.audit import AdminLog

    return AdminLog(store.nc, home=home_dir(home))


def _skill_fact(home: Path | None, action: str, target: str, **details: Any) -> None:
    """Skills and their repositories live on disk: the fact goes to the running gateway's
    NATS, or to the outbox when none is running (published when it starts)."""
    from codeswitch.audit import record_detached

    record_detached(home_dir(home), nats_url_for(home, None), action, target, **details)


def _with_store(home: Path | None, nats_url: str | None,
                fn: Callable[[McpStore], Coroutine[Any, Any, T]]) -> T:
    url = nats_url_for(home, nats_url)

    async def run() -> T:
        async with open_store(url) as store:
            return await fn(store)

    return asyncio.run(run())


def _again_if_changed(fn: Callable[[], T], attempts: int = 3) -> T:
    """Run a plan-then-write step again when a client rewrote its file in between (Claude
    Code rewrites ~/.claude.json while it runs); the last FileChangedError goes to the user."""
    for attempt in range(attempts):
        try:
            return fn()
        except FileChangedError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def _apply_fresh(plan: conn.Plan, data: Path,
                 replan: Callable[[str], conn.Plan]) -> conn.Plan:
    """Apply ``plan``; if the client rewrote one of its files since, plan again and apply."""
    plans = iter([plan])

    def once() -> conn.Plan:
        current = next(plans, None) or replan(plan.client)
        conn.apply_plan(current, data)
        return current

    return _again_if_changed(once)


def _sync(servers: list[McpServer], home: Path | None, dry_run: bool = False) -> None:
    data = home_dir(home)

    def plan_and_apply() -> list[Any]:
        results = plan_sync(servers, data, ClientPaths.discover())
        if not dry_run:
            apply_sync(results, data)
        return results

    results = _again_if_changed(plan_and_apply)
    for r in results:
        for note in r.notes:
            err.print(f"[yellow]note:[/yellow] {note}", markup=True)
    if dry_run:
        out.print(sync_diff(results) or "no changes", markup=False)
        return
    for r in results:
        hand = f"; kept {len(r.hand_added)} added by hand" if r.hand_added else ""
        out.print(f"{r.client}: {len(r.owned)} server(s) from codeswitch in {r.path}{hand}",
                  markup=False)


@mcp_app.command("list")
@_fails_cleanly
def mcp_list(home: Path | None = HOME_OPT, nats_url: str | None = NATS_OPT) -> None:
    """Show codeswitch's servers and the ones added by hand in the clients' files."""
    async def fetch(store: McpStore) -> list[McpServer]:
        return await store.list()

    servers = _with_store(home, nats_url, fetch)
    found = file_servers(home_dir(home), ClientPaths.discover())
    table = Table("name", "transport", "command / url", "enabled", "in", "source")
    for s in servers:
        where = ",".join(c for c, entries in found.items() if s.name in entries) or "-"
        table.add_row(s.name, s.transport, s.target(), "yes" if s.enabled else "no", where,
                      "codeswitch")
    ours = {s.name for s in servers}
    for client, entries in found.items():
        for name, (entry, owned) in entries.items():
            if owned and name in ours:
                continue
            target = entry.get("url") or " ".join(
                [str(entry.get("command", "")), *map(str, entry.get("args", []))]
            ) if isinstance(entry, dict) else "?"
            kind = entry.get("type", "http" if "url" in entry else "stdio") \
                if isinstance(entry, dict) else "?"
            table.add_row(name, str(kind), str(target), "-", client, "added by hand")
    out.print(table)


@mcp_app.command("add")
@_fails_cleanly
def mcp_add(
    name: str = typer.Argument(..., help="Server name (letters, digits, - and _)."),
    command: list[str] | None = typer.Argument(None, help="stdio: command and arguments, "
                                               "after --."),
    url: str | None = typer.Option(None, "--url", help="http/sse: the server URL."),
    transport: str | None = typer.Option(None, "--transport", help="stdio, http or sse."),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE for a stdio server."),
    header: list[str] = typer.Option([], "--header", "-H", help="'Name: value' (http/sse)."),
    disabled: bool = typer.Option(False, "--disabled", help="Add it switched off."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite a server of that name."),
    no_sync: bool = typer.Option(False, "--no-sync", help="Only update the list."),
    home: Path | None = HOME_OPT,
    nats_url: str | None = NATS_OPT,
) -> None:
    """Add a server: `mcp add docs -- npx -y docs-mcp` or `mcp add api --url https://...`."""
    server = mcp_writes.build_server(name, command=command, url=url, transport=transport,
                                     env=env, headers=header, enabled=not disabled)

    async def add(store: McpStore) -> list[McpServer]:
        await mcp_writes.add_server(store, _admin_log(store, home), server, replace=replace)
        return await store.list()

    servers = _with_store(home, nats_url, add)
    out.print(f"added {name}", markup=False)
    if not no_sync:
        _sync(servers, home)


def _set_enabled(name: str, enabled: bool, home: Path | None, nats_url: str | None,
                 no_sync: bool) -> None:
    async def change(store: McpStore) -> list[McpServer]:
        await mcp_writes.set_enabled(store, _admin_log(store, home), name, enabled)
        return await store.list()

    servers = _with_store(home, nats_url, change)
    out.print(f"{'enabled' if enabled else 'disabled'} {name}", markup=False)
    if not no_sync:
        _sync(servers, home)


NO_SYNC_OPT = typer.Option(False, "--no-sync", help="Only update the list.")


@mcp_app.command("enable")
@_fails_cleanly
def mcp_enable(name: str, no_sync: bool = NO_SYNC_OPT, home: Path | None = HOME_OPT,
               nats_url: str | None = NATS_OPT) -> None:
    """Switch a server on (written to both clients)."""
    _set_enabled(name, True, home, nats_url, no_sync)


@mcp_app.command("disable")
@_fails_cleanly
def mcp_disable(name: str, no_sync: bool = NO_SYNC_OPT, home: Path | None = HOME_OPT,
                nats_url: str | None = NATS_OPT) -> None:
    """Switch a server off (removed from Claude Code, `enabled = false` in Codex)."""
    _set_enabled(name, False, home, nats_url, no_sync)


@mcp_app.command("remove")
@_fails_cleanly
def mcp_remove(name: str, no_sync: bool = NO_SYNC_OPT, home: Path | None = HOME_OPT,
               nats_url: str | None = NATS_OPT) -> None:
    """Remove one of codeswitch's servers (servers added by hand are never removed)."""
    async def remove(store: McpStore) -> list[McpServer]:
        await mcp_writes.remove_server(store, _admin_log(store, home), name)
        return await store.list()

    servers = _with_store(home, nats_url, remove)
    out.print(f"removed {name}", markup=False)
    if not no_sync:
        _sync(servers, home)


@mcp_app.command("sync")
@_fails_cleanly
def mcp_sync(dry_run: bool = DRY_OPT, home: Path | None = HOME_OPT,
             nats_url: str | None = NATS_OPT) -> None:
    """Write the list into ~/.claude.json and Codex's config.toml."""
    async def fetch(store: McpStore) -> list[McpServer]:
        return await store.list()

    _sync(_with_store(home, nats_url, fetch), home, dry_run)


# -- skills -------------------------------------------------------------------------------
def _skills(home: Path | None) -> SkillsManager:
    return SkillsManager(home_dir(home), ClientPaths.discover().claude_skills,
                         console=err)


@repos_app.command("list")
@_fails_cleanly
def repos_list(home: Path | None = HOME_OPT) -> None:
    """Show the skill repositories (two are built in)."""
    table = Table("name", "source", "folder", "kind")
    for repo in _skills(home).repos().values():
        table.add_row(repo.name, repo.source, repo.subdir or "/",
                      "built-in" if repo.builtin else "added")
    out.print(table)


@repos_app.command("add")
@_fails_cleanly
def repos_add(
    name: str,
    source: str = typer.Argument(..., help="Archive URL, GitHub owner/repo, archive file or "
                                 "directory."),
    subdir: str = typer.Option("", "--subdir", help="Folder holding the skills."),
    ref: str | None = typer.Option(None, "--ref", help="Branch, for GitHub owner/repo."),
    home: Path | None = HOME_OPT,
) -> None:
    """Add a skill repository."""
    repo = _skills(home).add_repo(name, source, subdir=subdir, ref=ref)
    _skill_fact(home, "skill_repo.added", f"skill_repo:{repo.name}", source=repo.source,
                subdir=repo.subdir or None, ref=ref)
    out.print(f"added repository {repo.name}: {repo.source}", markup=False)


@repos_app.command("remove")
@_fails_cleanly
def repos_remove(name: str, home: Path | None = HOME_OPT) -> None:
    """Remove an added repository (installed skills stay)."""
    _skills(home).remove_repo(name)
    _skill_fact(home, "skill_repo.removed", f"skill_repo:{name}")
    out.print(f"removed repository {name}", markup=False)


@skills_app.command("list")
@_fails_cleanly
def skills_list(
    repo: str | None = typer.Option(None, "--repo", help="Only this repository."),
    refresh: bool = typer.Option(False, "--refresh", help="Download the archives again."),
    home: Path | None = HOME_OPT,
) -> None:
    """Show what each repository offers, with the SKILL.md description."""
    mgr = _skills(home)
    repos = mgr.repos()
    if repo and repo not in repos:
        raise ClientsError(f"no repository named {repo!r}")
    installed = mgr.installed()
    table = Table("repo", "skill", "description", "installed")
    failures = 0
    chosen = [repos[repo]] if repo else list(repos.values())
    for r in chosen:
        try:
            skills = mgr.scan(r, refresh=refresh)
        except ClientsError as exc:
            failures += 1
            err.print(f"[yellow]{r.name}:[/yellow] {exc}", markup=True)
            continue
        for s in skills:
            desc = s.description if not s.error else f"(invalid: {s.error})"
            table.add_row(r.name, s.name, desc, "yes" if s.name in installed else "")
    out.print(table)
    if failures == len(chosen):
        raise typer.Exit(1)


@skills_app.command("install")
@_fails_cleanly
def skills_install(
    name: str,
    repo: str | None = typer.Option(None, "--repo", help="Repository to take it from."),
    force: bool = typer.Option(False, "--force", help="Replace a folder not installed by us."),
    refresh: bool = typer.Option(False, "--refresh", help="Download the archive again."),
    home: Path | None = HOME_OPT,
) -> None:
    """Install a skill into ~/.claude/skills/NAME/."""
    mgr = _skills(home)
    info = mgr.install(name, repo=repo, force=force, refresh=refresh)
    _skill_fact(home, "skill.installed", f"skill:{info.name}", repo=info.repo)
    out.print(f"installed {info.name} from {info.repo} into {mgr.skills_dir / info.name}",
              markup=False)


@skills_app.command("remove")
@_fails_cleanly
def skills_remove(name: str, home: Path | None = HOME_OPT) -> None:
    """Remove a skill installed by codeswitch."""
    _skills(home).remove(name)
    _skill_fact(home, "skill.removed", f"skill:{name}")
    out.print(f"removed {name}", markup=False)


@skills_app.command("update")
@_fails_cleanly
def skills_update(name: str | None = typer.Argument(None), home: Path | None = HOME_OPT) -> None:
    """Download again and reinstall one or all installed skills."""
    done = _skills(home).update(name)
    for skill in done:
        _skill_fact(home, "skill.updated", f"skill:{skill}")
    out.print(f"updated {', '.join(done)}" if done else "no skills installed by codeswitch",
              markup=False)


def register(app: typer.Typer) -> None:
    """Add connect, disconnect, mcp and skills to the main typer app."""
    app.command("connect")(connect_cmd)
    app.command("disconnect")(disconnect_cmd)
    app.add_typer(mcp_app, name="mcp")
    app.add_typer(skills_app, name="skills")
