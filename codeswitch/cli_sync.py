"""`codeswitch hub` (a hub for several devices: the embedded nats-server with JetStream in
domain ``hub``, accepting leaf nodes) and `codeswitch sync` (what this device's sync part last
saw). How devices sync: ``runtime/sync.py`` and docs/architecture.md, "Several devices"."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from runtime.home import home_dir

__all__ = ["hub_join_url", "register", "run_hub"]

err = Console(stderr=True)
out = Console()
LEAF_USER = "leaf"
HUB_PORT = 18222
HUB_LEAF_PORT = 17422


def hub_join_url(host: str, leaf_port: int, password: str) -> str:
    """What a device joins with; a hub listening on every address is named by its host name
    (the devices must be able to resolve it: replace it by an address otherwise)."""
    import socket

    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    return f"nats://{LEAF_USER}:{password}@{shown}:{leaf_port}"


def run_hub(home: Path, *, host: str, port: int, leaf_port: int,
            on_ready: Any = None) -> int:
    """Run the hub's nats-server until SIGINT/SIGTERM (restarted if it dies)."""
    from runtime.natsd import EmbeddedNats, NatsAuth, load_or_create_auth
    from runtime.process import write_private
    from runtime.sync import HUB_DOMAIN

    store = home / "hub"
    client_auth = load_or_create_auth(store / "credentials.json")
    leaf = load_or_create_auth(store / "leaf.json")
    leaf_auth = NatsAuth(user=LEAF_USER, password=leaf.password)
    server = EmbeddedNats(store, host=host, port=port, auth=client_auth, domain=HUB_DOMAIN,
                          leaf_port=leaf_port, leaf_auth=leaf_auth,
                          log_file=home / "logs" / "hub.log")
    join = hub_join_url(host, leaf_port, leaf_auth.password)
    write_private(store / "join-url", join + "\n")
    server.start()
    stopping: list[int] = []
    signal.signal(signal.SIGINT, lambda s, f: stopping.append(s))
    signal.signal(signal.SIGTERM, lambda s, f: stopping.append(s))
    if on_ready is not None:
        on_ready(server, join)
    try:
        while not stopping:
            time.sleep(0.2)
            if server.proc is not None and server.proc.poll() is not None:
                err.print(f"nats-server exited ({server.proc.returncode}); restarting")
                server.start()
    finally:
        server.stop()
    return 0


def register(app: typer.Typer) -> None:
    @app.command()
    def hub(
        port: Annotated[int, typer.Option(help="Client port (the nats CLI, monitoring).")]
        = HUB_PORT,
        leaf_port: Annotated[int, typer.Option(
            "--leaf-port", help="The port gateways join (codeswitch up --join).")]
        = HUB_LEAF_PORT,
        host: Annotated[str, typer.Option(help="Listen address.")] = "0.0.0.0",
        home: Annotated[Path | None, typer.Option(
            help="Data directory (the hub's store is <home>/hub).", show_default=False)]
        = None,
    ) -> None:
        """Run a hub for several devices: a nats-server with JetStream (domain `hub`) that
        gateways join as leaf nodes (`codeswitch up --join`). Ctrl-C stops it."""
        from runtime.home import masked_url

        where = home_dir(home)

        def ready(server: Any, join: str) -> None:
            out.print(f"[bold green]codeswitch hub[/] on {server.url} (JetStream domain "
                      f"hub), leaf nodes on port {leaf_port}")
            out.print(f"  data      {where / 'hub'}")
            out.print(f"  join URL  {masked_url(join)}  (with its password in "
                      f"{where / 'hub' / 'join-url'}, 0600)")
            out.print("  on each device:  CODESWITCH_JOIN=\"$(cat join-url)\" codeswitch up")
            out.print("Ctrl-C stops it; the gateways keep serving and catch up when it "
                      "is back.")

        try:
            sys.exit(run_hub(where, host=host, port=port, leaf_port=leaf_port,
                             on_ready=ready))
        except RuntimeError as exc:
            err.print(f"[red]hub[/] {exc}")
            raise typer.Exit(1) from None

    @app.command("sync")
    def sync_status(
        home: Annotated[Path | None, typer.Option(help="Data directory.",
                                                  show_default=False)] = None,
        as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    ) -> None:
        """What this device's sync with its hub last saw (`codeswitch up --join`)."""
        from runtime.sync import read_state

        state = read_state(home_dir(home))
        if as_json:
            print(json.dumps(state, indent=2))
            return
        if not state:
            out.print("not joined to a hub (codeswitch up --join URL)")
            return
        age = time.time() - float(state.get("checked") or 0)
        status = ("[red]diverged[/]" if state.get("diverged") else
                  "[green]connected[/]" if state.get("connected") else
                  "[yellow]hub unreachable[/]")
        out.print(f"device {state.get('device')} (domain {state.get('domain')}): {status}, "
                  f"checked {age:.0f} s ago")
        if state.get("peers") is not None:
            out.print(f"  other devices: {', '.join(state['peers']) or '(none yet)'}")
        for problem in (state.get("error"), state.get("key_warning")):
            if problem:
                out.print(f"  {problem}")
