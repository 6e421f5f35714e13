"""Config operations on NATS KV shared by the CLI and ``codeswitch up``: providers and
gateway settings. Every process watches these keys, so writes apply on the next request.

Literal secrets (a provider's ``api_key``, the unified upstream's ``token``) are written
encrypted when the caller passes ``secret_key`` (the CLI and ``codeswitch up`` always do):
``enc:v1:...``, see ``codeswitch/secrets.py``. ``seal_stored_secrets`` encrypts the literals an
older version left in KV and purges the plain-text history from the store."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError

from runtime import bus, names
from runtime.secrets import SecretKeyError, decrypt_secret, encrypt_secret, is_encrypted
from schemas.config import (
    ActiveProviders,
    GatewaySettings,
    ProviderConfig,
    RoutingSettings,
    UnifiedUpstream,
)
from schemas.subjects import ROUTER_ROLLCALL
from workers.router.breaker import BreakerState

if TYPE_CHECKING:
    from codeswitch.audit import AdminLog
    from codeswitch.users import KeySpec
    from schemas.users import User

__all__ = [
    "apply_file_config",
    "get_setting",
    "list_circuits",
    "put_setting",
    "delete_provider",
    "get_provider",
    "list_providers",
    "provider_details",
    "put_provider",
    "put_settings",
    "roll_call",
    "seal_provider",
    "seal_stored_secrets",
    "seal_unified",
    "wait_applied",
]

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(ProviderConfig)


async def _values(nc: NATS, bucket: str) -> dict[str, bytes]:
    kv = await nc.jetstream().key_value(bucket)
    return {key: value for key, (value, _) in (await bus.read_bucket(kv)).items()}


async def list_providers(nc: NATS) -> list[ProviderConfig]:
    providers = [_dec.decode(v) for v in (await _values(nc, names.PROVIDERS_BUCKET)).values()]
    return sorted(providers, key=lambda p: (p.priority, p.name))


async def get_provider(nc: NATS, name: str) -> ProviderConfig | None:
    kv = await nc.jetstream().key_value(names.PROVIDERS_BUCKET)
    try:
        entry = await kv.get(name)
    except KeyNotFoundError:
        return None
    return _dec.decode(entry.value) if entry.value else None


def seal_provider(provider: ProviderConfig, key: bytes) -> ProviderConfig:
    """The provider with a literal api_key encrypted (env:NAME and empty keys unchanged)."""
    sealed = encrypt_secret(provider.api_key, key)
    if sealed == provider.api_key:
        return provider
    return msgspec.structs.replace(provider, api_key=sealed)


def seal_unified(unified: UnifiedUpstream, key: bytes) -> UnifiedUpstream:
    sealed = encrypt_secret(unified.token, key)
    if sealed == unified.token:
        return unified
    return msgspec.structs.replace(unified, token=sealed)


def _plain_provider(provider: ProviderConfig, key: bytes | None) -> ProviderConfig | None:
    """With the key decrypted (to compare with a file's literal); None when it cannot be."""
    if not is_encrypted(provider.api_key):
        return provider
    if key is None:
        return None
    try:
        return msgspec.structs.replace(provider,
                                       api_key=decrypt_secret(provider.api_key, key))
    except SecretKeyError:
        return None


def _plain_unified(unified: UnifiedUpstream, key: bytes | None) -> UnifiedUpstream | None:
    if not is_encrypted(unified.token):
        return unified
    if key is None:
        return None
    try:
        return msgspec.structs.replace(unified, token=decrypt_secret(unified.token, key))
    except SecretKeyError:
        return None


async def put_provider(nc: NATS, provider: ProviderConfig, *,
                       secret_key: bytes | None = None) -> None:
    """Write a provider; with ``secret_key`` a literal api_key is stored encrypted."""
    if secret_key is not None:
        provider = seal_provider(provider, secret_key)
    kv = await nc.jetstream().key_value(names.PROVIDERS_BUCKET)
    await kv.put(provider.name, _enc.encode(provider))


async def delete_provider(nc: NATS, name: str) -> bool:
    if await get_provider(nc, name) is None:
        return False
    kv = await nc.jetstream().key_value(names.PROVIDERS_BUCKET)
    await kv.delete(name)
    return True


async def put_settings(nc: NATS, settings: GatewaySettings) -> None:
    kv = await nc.jetstream().key_value(names.SETTINGS_BUCKET)
    await kv.put("gateway", _enc.encode(settings))


_SETTING_TYPES: dict[str, type] = {
    "gateway": GatewaySettings,
    "routing": RoutingSettings,
    "active": ActiveProviders,
    "unified": UnifiedUpstream,
}


async def get_setting(nc: NATS, key: str) -> Any:
    """A cs_settings document, or its default when unset."""
    kv = await nc.jetstream().key_value(names.SETTINGS_BUCKET)
    kind = _SETTING_TYPES[key]
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return kind()
    return msgspec.json.decode(entry.value, type=kind) if entry.value else kind()


async def put_setting(nc: NATS, key: str, value: Any, *,
                      secret_key: bytes | None = None) -> None:
    """Write a cs_settings document; with ``secret_key`` the unified upstream's literal token
    is stored encrypted."""
    if secret_key is not None and isinstance(value, UnifiedUpstream):
        value = seal_unified(value, secret_key)
    kv = await nc.jetstream().key_value(names.SETTINGS_BUCKET)
    await kv.put(key, _enc.encode(value))


async def list_circuits(nc: NATS) -> dict[str, BreakerState]:
    return {key: msgspec.json.decode(value, type=BreakerState)
            for key, value in (await _values(nc, names.CIRCUITS_BUCKET)).items()}


def provider_details(p: ProviderConfig) -> dict[str, Any]:
    """What an admin fact says about a provider: never its key (only whether it is an
    ``env:`` reference or a literal)."""
    key = p.api_key
    return {"dialect": p.dialect, "base_url": p.base_url, "models": p.models or None,
            "priority": p.priority, "weight": p.weight, "enabled": p.enabled,
            "api_key": None if not key else key if key.startswith("env:") else "literal"}


def gateway_details(settings: GatewaySettings) -> dict[str, Any]:
    """The gateway settings in an admin fact: how many client keys, never their hashes."""
    return {"api_keys": len(settings.key_hashes), "max_body_bytes": settings.max_body_bytes,
            "pickup_timeout": settings.pickup_timeout, "body_log": settings.body_log}


async def apply_file_config(nc: NATS, providers: list[ProviderConfig],
                            settings: GatewaySettings | None,
                            routing: RoutingSettings | None = None,
                            unified: UnifiedUpstream | None = None, *,
                            secret_key: bytes | None = None,
                            users: list[User] | None = None, keys: list[KeySpec] | None = None,
                            audit: AdminLog | None = None) -> list[str]:
    """Upsert the file's providers; drop file-sourced providers no longer in it. With
    ``secret_key``, literal keys are stored encrypted (and compared decrypted, so an unchanged
    file writes nothing). With ``users``/``keys`` (lists, possibly empty) the file's users and
    keys are synced too (``codeswitch.users.apply_users_config``). With ``audit``, each change
    is an admin fact."""
    changes = []

    async def record(action: str, target: str, **details: Any) -> None:
        if audit is not None:
            await audit.record(action, target, via="config file", **details)

    if users is not None or keys is not None:  # first: a bad [[keys]] owner writes nothing
        from codeswitch.users import apply_users_config

        changes += await apply_users_config(nc, audit, users or [], keys or [])
    current = {p.name: p for p in await list_providers(nc)}
    wanted = {p.name for p in providers}
    for p in providers:
        cur = current.get(p.name)
        if cur is None or _plain_provider(cur, secret_key) != p:
            await put_provider(nc, p, secret_key=secret_key)
            verb = "updated" if p.name in current else "added"
            changes.append(f"provider {p.name} {verb}")
            await record(f"provider.{verb}", f"provider:{p.name}", **provider_details(p))
    for name, p in current.items():
        if p.source == "config" and name not in wanted:
            await delete_provider(nc, name)
            changes.append(f"provider {name} removed (no longer in the config file)")
            await record("provider.removed", f"provider:{name}")
    if settings is not None:
        before = await get_setting(nc, "gateway")
        await put_settings(nc, settings)
        if settings != before:
            await record("settings.changed", "setting:gateway", **gateway_details(settings))
    if routing is not None and routing != await get_setting(nc, "routing"):
        await put_setting(nc, "routing", routing)
        changes.append("routing settings applied")
        await record("routing.changed", "setting:routing", **msgspec.to_builtins(routing))
    if unified is not None and \
            unified != _plain_unified(await get_setting(nc, "unified"), secret_key):
        await put_setting(nc, "unified", unified, secret_key=secret_key)
        changes.append("unified settings applied")
        await record("unified.changed", "setting:unified", enabled=unified.enabled,
                     url=unified.url, token="set" if unified.token else None)
    return changes


async def _rewrite_purged(nc: NATS, bucket: str, values: dict[str, bytes]) -> None:
    """Purge the bucket's stream (its files go: the store no longer holds the old revisions)
    and write the given values back."""
    js = nc.jetstream()
    await js.purge_stream(f"KV_{bucket}")
    kv = await js.key_value(bucket)
    for name, value in values.items():
        await kv.put(name, value)


async def seal_stored_secrets(nc: NATS, key: bytes) -> list[str]:
    """Encrypt the literal keys stored in KV by an older version (providers' api_key, the
    unified token). The bucket's history is purged so no revision keeps the plain text on
    disk; the other entries are written back unchanged (their history goes too)."""
    changes: list[str] = []
    raw = await _values(nc, names.PROVIDERS_BUCKET)
    rewritten: dict[str, bytes] = {}
    for name, value in raw.items():
        try:
            p = _dec.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            rewritten[name] = value
            continue
        sealed = seal_provider(p, key)
        if sealed is not p:
            changes.append(f"provider {name}: literal key encrypted at rest")
        rewritten[name] = _enc.encode(sealed)
    if changes:
        await _rewrite_purged(nc, names.PROVIDERS_BUCKET, rewritten)
    settings = await _values(nc, names.SETTINGS_BUCKET)
    if "unified" in settings:
        try:
            unified = msgspec.json.decode(settings["unified"], type=UnifiedUpstream)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return changes
        sealed_u = seal_unified(unified, key)
        if sealed_u is not unified:
            settings["unified"] = _enc.encode(sealed_u)
            await _rewrite_purged(nc, names.SETTINGS_BUCKET, settings)
            changes.append("unified upstream: literal token encrypted at rest")
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


async def wait_applied(nc: NATS, buckets: tuple[str, ...] = (names.PROVIDERS_BUCKET,
                                                              names.SETTINGS_BUCKET),
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
