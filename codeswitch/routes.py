"""Route rules in NATS KV (``cs_settings`` key ``routes``, one ordered list), shared by
``codeswitch route ...`` and ``codeswitch up``: read, write, merge the config file's rules with
the CLI's, and the admin facts of a change. Routers and edges watch the key, so a change
applies to the next request without a restart (``admin.wait_applied`` waits for the routers).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError

from runtime import names
from schemas.routes import ROUTES_KEY, RouteRule, RouteTable, check_rules

if TYPE_CHECKING:
    from codeswitch.audit import AdminLog

__all__ = ["apply_file_routes", "get_routes", "known_providers", "merge_file_routes",
           "put_routes", "rule_details", "summary"]

_dec = msgspec.json.Decoder(RouteTable)
_enc = msgspec.json.Encoder()


async def get_routes(nc: NATS) -> RouteTable:
    kv = await nc.jetstream().key_value(names.SETTINGS_BUCKET)
    try:
        entry = await kv.get(ROUTES_KEY)
    except KeyNotFoundError:
        return RouteTable()
    return _dec.decode(entry.value) if entry.value else RouteTable()


async def put_routes(nc: NATS, table: RouteTable) -> None:
    kv = await nc.jetstream().key_value(names.SETTINGS_BUCKET)
    await kv.put(ROUTES_KEY, _enc.encode(table))


async def known_providers(nc: NATS) -> set[str]:
    from codeswitch.admin import list_providers

    return {p.name for p in await list_providers(nc)}


def merge_file_routes(file_rules: list[RouteRule], current: Iterable[RouteRule]) -> list[RouteRule]:
    """The config file's rules first (in its order), then the rules added with the CLI (in
    theirs); a CLI rule with the name of a file rule gives way to it."""
    mine = {r.name for r in file_rules}
    return [*file_rules, *(r for r in current if r.source != "config" and r.name not in mine)]


def rule_details(rule: RouteRule) -> dict[str, Any]:
    """What an admin fact says about a rule (nothing in a rule is secret)."""
    return {"match": msgspec.to_builtins(rule.match), "to": rule.to, "model": rule.model,
            "fallback": rule.fallback}


def summary(rule: RouteRule) -> str:
    """The match as one line: ``model=*haiku* thinking=true``."""
    parts = []
    for key, value in msgspec.to_builtins(rule.match).items():
        if isinstance(value, dict):
            value = ",".join(f"{k}:{v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = str(value).lower()
        parts.append(f"{key}={value}")
    return " ".join(parts) or "(every request)"


async def apply_file_routes(nc: NATS, file_rules: list[RouteRule], providers: set[str],
                            audit: AdminLog | None) -> list[str]:
    """Put the file's rules in KV (before the CLI's), checked against ``providers`` (the
    providers there will be); ``RouteError`` when a rule cannot be used. Each change an admin
    fact."""
    current = (await get_routes(nc)).rules
    merged = merge_file_routes(file_rules, current)
    check_rules(merged, providers)
    if merged == current:
        return []
    await put_routes(nc, RouteTable(rules=merged))
    changes: list[str] = []
    before = {r.name: r for r in current}
    after = {r.name: r for r in merged}
    for rule in merged:
        old = before.get(rule.name)
        if old == rule:
            continue
        verb = "added" if old is None else "updated"
        changes.append(f"route {rule.name} {verb}")
        if audit is not None:
            await audit.record(f"route.{verb}", f"route:{rule.name}", via="config file",
                               **rule_details(rule))
    for name in before:
        if name not in after:
            changes.append(f"route {name} removed (no longer in the config file)")
            if audit is not None:
                await audit.record("route.removed", f"route:{name}", via="config file")
    if not changes:  # only the order changed
        changes.append("route order changed")
        if audit is not None:
            await audit.record("route.updated", "route:*", via="config file",
                               order=[r.name for r in merged])
    return changes
