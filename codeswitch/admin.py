"""Config operations on NATS KV shared by the CLI and ``codeswitch up``: providers and
gateway settings. Every process watches these keys, so writes apply on the next request."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError

from codeswitch import bus
from schemas.config import (
    ActiveProviders,
    GatewaySettings,
    ProviderConfig,
    RoutingSettings,
    UnifiedUpstream,
)
from schemas.subjects import ROUTER_ROLLCALL
from workers.router.breaker import BreakerState

__all__ = [
    "apply_file_config",
    "get_setting",
    "list_circuits",
    "put_setting",
    "delete_provider",
    "get_provider",
    "list_providers",
    "put_provider",
    "put_settings",
    "roll_call",
    "wait_applied",
]

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(ProviderConfig)


async def _values(nc: NATS, bucket: str) -> dict[str, bytes]:
    kv = await nc.jetstream().key_value(bucket)
    return {key: value for key, (value, _) in (await bus.read_bucket(kv)).items()}


async def list_providers(nc: NATS) -> list[ProviderConfig]:
    providers = [_dec.decode(v) for v in (await _values(nc, bus.PROVIDERS_BUCKET)).values()]
    return sorted(providers, key=lambda p: (p.priority, p.name))


async def get_provider(nc: NATS, name: str) -> ProviderConfig | None:
    kv = await nc.jetstream().key_value(bus.PROVIDERS_BUCKET)
    try:
        entry = await kv.get(name)
    except KeyNotFoundError:
        return None
    return _dec.decode(entry.value) if entry.value else None


async def put_provider(nc: NATS, provider: ProviderConfig) -> None:
    kv = await nc.jetstream().key_value(bus.PROVIDERS_BUCKET)
    await kv.put(provider.name, _enc.encode(provider))


async def delete_provider(nc: NATS, name: str) -> bool:
    if await get_provider(nc, name) is None:
        return False
    kv = await nc.jetstream().key_value(bus.PROVIDERS_BUCKET)
    await kv.delete(name)
    return True


async def put_settings(nc: NATS, settings: GatewaySettings) -> None:
    kv = await nc.jetstream().key_value(bus.SETTINGS_BUCKET)
    await kv.put("gateway", _enc.encode(settings))


_SETTING_TYPES: dict[str, type] = {
    "gateway": GatewaySettings,
    "routing": RoutingSettings,
    "active": ActiveProviders,
    "unified": UnifiedUpstream,
}


async def get_setting(nc: NATS, key: str) -> Any:
    """A cs_settings document, or its default when unset."""
    kv = await nc.jetstream().key_value(bus.SETTINGS_BUCKET)
    kind = _SETTING_TYPES[key]
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return kind()
    return msgspec.json.decode(entry.value, type=kind) if entry.value else kind()


async def put_setting(nc: NATS, key: str, value: Any) -> None:
    kv = await nc.jetstream().key_value(bus.SETTINGS_BUCKET)
    await kv.put(key, _enc.encode(value))


async def list_circuits(nc: NATS) -> dict[str, BreakerState]:
    return {key: msgspec.json.decode(value, type=BreakerState)
            for key, value in (await _values(nc, bus.CIRCUITS_BUCKET)).items()}


async def apply_file_config(nc: NATS, providers: list[ProviderConfig],
                            settings: GatewaySettings | None,
                            routing: RoutingSettings | None = None,
                            unified: UnifiedUpstream | None = None) -> list[str]:
    """Upsert the file's providers; drop file-sourced providers no longer in it."""
    changes = []
    current = {p.name: p for p in await list_providers(nc)}
    wanted = {p.name for p in providers}
    for p in providers:
        if current.get(p.name) != p:
            await put_provider(nc, p)
            changes.append(f"provider {p.name} {'updated' if p.name in current else 'added'}")
    for name, p in current.items():
        if p.source == "config" and name not in wanted:
            await delete_provider(nc, name)
            changes.append(f"provider {name} removed (no longer in the config file)")
    if settings is not None:
        await put_settings(nc, settings)
    for key, value in (("routing", routing), ("unified", unified)):
        if value is not None and value != await get_setting(nc, key):
            await put_setting(nc, key, value)
            changes.append(f"{key} settings applied")
    return changes


async def roll_call(nc: NATS, wait: float = 0.3) -> list[dict[str, Any]]:
    """Every router taking work answers ``{"router": id, "in_flight": n}``; collect the answers
    that arrive within ``wait`` seconds."""
    inbox = nc.new_inbox()
    answers: list[dict[str, Any]] = []
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(ROUTER_ROLLCALL, b"", reply=inbox)
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while (left := end - loop.time()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except TimeoutError:
                break
            if not msg.data:  # the server's "no responders" status: nobody is there
                break
            answers.append(msgspec.json.decode(msg.data))
    finally:
        await sub.unsubscribe()
    return sorted(answers, key=lambda a: str(a.get("router")))


async def wait_applied(nc: NATS, buckets: tuple[str, ...] = (bus.PROVIDERS_BUCKET,
                                                              bus.SETTINGS_BUCKET),
                       timeout: float = 3.0) -> tuple[int, int]:
    """Wait until every router taking work has applied the buckets' latest revision (so the
    next request anywhere sees the change). Returns (routers caught up, routers answering)."""
    js = nc.jetstream()
    want = {b: (await (await js.key_value(b)).status()).stream_info.state.last_seq
            for b in buckets}
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        answers = await roll_call(nc, wait=0.2)
        caught = [a for a in answers
                  if all(a.get("applied", {}).get(b, 0) >= rev for b, rev in want.items())]
        if not answers or len(caught) == len(answers) or loop.time() > end:
            return len(caught), len(answers)
