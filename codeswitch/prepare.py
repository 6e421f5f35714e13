"""``codeswitch up``'s one-off work on NATS, in a short-lived process of its own:
``python -m codeswitch.prepare`` with a JSON spec on stdin.

    prepare (default)  the streams, KV buckets and object stores (``bus.ensure_all``), stored
                       literal keys sealed, then the config file, ``app.json`` and the first run
                       (providers from the environment, the demo provider) applied to KV
    join               a joined device's settings buckets shared with the hub (``--join``)

The supervisor (``codeswitch/supervisor.py``) starts it while the parts' interpreters start
and waits for it: nats-py, msgspec and the config, admin, routes and first-run code are loaded
here and gone with this process, so the supervisor that lives as long as the gateway stays at
the size of an interpreter with the standard library (docs/architecture.md, "Process model").

Answer: one JSON line on stdout, ``{"changes": [...]}`` (what was applied, for the banner) or
``{"error": "..."}`` with exit status 1 (the supervisor stops the start with that message).
Log lines go to stderr, as the supervisor's own do. The NATS credentials come from the
environment the supervisor gives its parts (``CODESWITCH_NATS_AUTH``/``..._CREDS``, and
``CODESWITCH_NATS_URL`` for a URL with a password), never from the command line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["join", "main", "prepare"]

log = logging.getLogger("codeswitch.prepare")


async def apply_config(url: str, home: Path, config: str | None, port: int,
                       demo_port: int | None) -> list[str]:
    """The config file (checked by the CLI before ``codeswitch up`` exec'd), ``app.json`` and
    the first run, each change an admin fact."""
    import msgspec

    from codeswitch.admin import apply_file_config, get_setting, put_setting
    from codeswitch.audit import AdminLog
    from codeswitch.config import (
        FileConfig,
        load_config,
        merge_legacy,
        read_legacy_app_json,
    )
    from codeswitch.firstrun import first_run
    from runtime import bus, secrets

    file_cfg = load_config(config) if config else FileConfig()  # checked before the exec
    app_json = home / "app.json"  # the original Code Switch's settings, same data directory
    legacy = read_legacy_app_json(app_json)
    taken = merge_legacy(file_cfg, legacy, app_json)
    # literal keys go to KV encrypted with <home>/secret.key (created 0600 on first use)
    key = secrets.load_key(home, create=True)
    nc = await bus.connect(url, name="codeswitch-up-config")
    audit = AdminLog(nc, home=home)  # each change an admin fact, actor local:<user>
    try:
        if config is not None:
            from codeswitch.admin import list_providers
            from codeswitch.routes import apply_file_routes, get_routes, merge_file_routes
            from schemas.routes import RouteError, check_rules

            # the providers there will be: the file's and those added with the CLI
            providers = {p.name for p in file_cfg.providers} | {
                p.name for p in await list_providers(nc) if p.source != "config"}
            try:  # before anything is written: a bad rule refuses the whole file
                check_rules(merge_file_routes(file_cfg.routes,
                                              (await get_routes(nc)).rules), providers)
            except RouteError as exc:
                raise file_cfg.route_error(exc) from None
            taken += await apply_file_config(
                nc, file_cfg.providers, file_cfg.settings, file_cfg.routing,
                file_cfg.unified, secret_key=key, users=file_cfg.users,
                keys=file_cfg.keys, audit=audit)
            taken += await apply_file_routes(nc, file_cfg.routes, providers, audit)
        # providers from the environment (no config, no provider of the user's yet), the
        # demo provider (--demo) or its removal: codeswitch/firstrun.py
        taken += await first_run(nc, os.environ, audit=audit, config_file=config is not None,
                                 demo_port=demo_port)
        from codeswitch.service import auto_start_once

        started = auto_start_once(home, port, Path(config) if config else None)
        taken += [started] if started else []
        if config is not None:
            return taken
        # only app.json: its two settings, on top of what KV already holds
        if legacy.unified is not None:
            before = await get_setting(nc, "unified")
            await put_setting(nc, "unified", legacy.unified, secret_key=key)
            if (before.enabled, before.url) != (legacy.unified.enabled, legacy.unified.url):
                await audit.record("unified.changed", "setting:unified",
                                   enabled=legacy.unified.enabled, url=legacy.unified.url,
                                   via=str(app_json))
        if legacy.body_log is not None:
            current = await get_setting(nc, "gateway")
            await put_setting(nc, "gateway",
                              msgspec.structs.replace(current, body_log=legacy.body_log))
            if current.body_log != legacy.body_log:
                await audit.record("body_log." + ("on" if legacy.body_log else "off"),
                                   "setting:body_log", via=str(app_json))
        return taken
    finally:
        await nc.drain()


async def prepare(url: str, home: Path, apply: dict[str, Any] | None) -> list[str]:
    """Streams and buckets, stored keys sealed, then (``apply``: config, port, demo_port) the
    config applied."""
    from codeswitch.admin import seal_stored_secrets
    from runtime import bus, secrets
    from runtime.bus import HubUnavailableError

    nc = await bus.connect(url, name="codeswitch-up", max_reconnect_attempts=5)
    try:
        await bus.wait_ready(nc)
        await bus.ensure_all(nc.jetstream())
        key = secrets.load_key(home, create=True)
        assert key is not None
        try:
            changes = await seal_stored_secrets(nc, key)
            if apply is not None:
                changes += await apply_config(url, home, apply.get("config"),
                                              int(apply["port"]), apply.get("demo_port"))
        except HubUnavailableError:  # joined, the hub away: start on what this device has
            return ["the config file was not applied: the settings are shared through the "
                    "hub, which does not answer; it is applied at the next start with the "
                    "hub there (or change them with the CLI then)"]
        return changes
    finally:
        await nc.drain()


async def join(url: str, where: str, wait: float) -> list[str]:
    """This device's shared KV buckets become mirrors of the hub's (the first time; the parts
    then read and write them as they are). A hub that does not answer within ``wait`` seconds
    is no reason not to start. ``where``: the hub's URL without its password."""
    from runtime import bus, sync

    nc = await bus.connect(url, name="codeswitch-up-join", max_reconnect_attempts=5)
    try:
        await bus.wait_ready(nc)
        await bus.ensure_all(nc.jetstream())
        deadline = time.monotonic() + wait
        while True:
            try:
                done = await sync.share_buckets(nc)
                if not done:  # shared before: nothing to ask the hub now
                    return [f"syncing through the hub {where} (codeswitch sync: its state)"]
                return [f"joined the hub {where}", *done]
            except sync.HubError as exc:
                if time.monotonic() > deadline:
                    log.warning("hub %s: %s", where, exc)
                    return [f"the hub {where} does not answer: serving and recording here; "
                            "nats-server retries the connection every second and the "
                            "event log catches up when it answers (shared settings once "
                            "it has answered here once)"]
                await asyncio.sleep(0.2)
    finally:
        await nc.drain()


def main() -> int:
    from runtime.process import private_umask, set_title, skip_nats_websocket

    private_umask()
    skip_nats_websocket()
    logging.basicConfig(level=os.environ.get("CODESWITCH_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec: dict[str, Any] = json.loads(sys.stdin.read())
    set_title(f"codeswitch up --home {spec['home']} ({spec.get('what', 'prepare')})",
              "cs-prepare")
    from runtime.home import nats_url_for

    home = Path(spec["home"])
    url = nats_url_for(home, spec.get("nats_url") or os.environ.get("CODESWITCH_NATS_URL"))
    try:
        if spec.get("what") == "join":
            changes = asyncio.run(join(url, str(spec.get("where", "")),
                                       float(spec.get("wait", 5.0))))
        else:
            changes = asyncio.run(prepare(url, home, spec.get("apply")))
    except Exception as exc:
        log.debug("prepare failed", exc_info=True)
        print(json.dumps({"error": str(exc) or type(exc).__name__}), flush=True)
        return 1
    print(json.dumps({"changes": changes}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
