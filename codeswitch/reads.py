"""Reads the CLI and the console share, without typer or rich (the console runs inside the
edge process): a ledger query over NATS (``cs.ledger.<query>``), the body-log entries of
requests, the gateways alive (KV ``cs_presence``) and the names of user and key ids."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from runtime import bus, names
from schemas.subjects import ledger_query_subject
from workers.ledger.wire import decode_reply

__all__ = ["NOT_RUNNING", "LedgerError", "LedgerUnavailableError", "body_entries", "gateways",
           "id_labels", "ledger", "quota", "quota_records", "quota_rows"]

NOT_RUNNING = "ledger not running: start the gateway with `codeswitch up`"


class LedgerUnavailableError(RuntimeError):
    pass


class LedgerError(RuntimeError):
    pass


async def ledger(nc: NATS, query: str, params: dict[str, Any], timeout: float = 30.0) -> Any:
    """One ledger query; LedgerUnavailableError when no ledger answers, LedgerError when it
    refuses the query (its message says why)."""
    try:
        msg = await nc.request(ledger_query_subject(query), json.dumps(params).encode(),
                               timeout=timeout)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError) as exc:
        raise LedgerUnavailableError(NOT_RUNNING) from exc
    body = decode_reply(msg.data, msg.headers)
    if not body.get("ok"):
        raise LedgerError(body.get("error", "ledger error"))
    return body.get("result")


async def body_entries(nc: NATS, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Body-log entries by request id (those it holds; none when it was never on)."""
    out: dict[str, dict[str, Any]] = {}
    # this device's body log, then (joined to a hub) the other devices' (runtime/sync.py)
    for bucket in (names.BODY_LOG_BUCKET, names.PEER_BODIES_BUCKET):
        try:
            obs = await nc.jetstream().object_store(bucket)
        except Exception:
            continue
        for rid in dict.fromkeys(r for r in request_ids if r and r not in out):
            try:
                out[rid] = json.loads((await obs.get(rid)).data or b"{}")
            except Exception:  # not kept (body log off then, expired, or dropped when full)
                continue
    return out


async def gateways(nc: NATS) -> list[dict[str, Any]]:
    """The heartbeats in cs_presence, grouped by device (runtime/presence.py)."""
    from runtime.presence import Presence

    try:
        kv = await nc.jetstream().key_value(names.PRESENCE_BUCKET)
        entries = await bus.read_bucket(kv)
    except Exception:
        return []
    try:  # joined to a hub (codeswitch up --join): every device's heartbeats are there
        from runtime.sync import HUB_DOMAIN

        hub = await nc.jetstream(domain=HUB_DOMAIN, timeout=1.0).key_value(
            names.PRESENCE_BUCKET)
        entries = {**entries, **(await bus.read_bucket(hub))}
    except Exception:
        pass  # not joined, or the hub is away: this device's own
    devices: dict[str, dict[str, Any]] = {}
    for raw, _ in entries.values():
        try:
            beat = msgspec.json.decode(raw, type=Presence)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        d = devices.setdefault(beat.device, {"device": beat.device, "parts": [],
                                             "version": beat.version, "last_beat": 0.0})
        d["parts"].append({"part": beat.part, "id": beat.id, "pid": beat.pid,
                           "started": beat.started, "last_beat": beat.ts})
        d["last_beat"] = max(d["last_beat"], beat.ts)
    for d in devices.values():
        d["parts"].sort(key=lambda x: (x["part"], x["id"]))
    return sorted(devices.values(), key=lambda d: d["device"])


async def id_labels(nc: NATS) -> dict[str, str]:
    """Gateway user and key ids -> names (``alice``, ``alice/laptop``)."""
    from codeswitch.users import load

    d = await load(nc)
    labels = {u.id: u.name for u in d.users.values()}
    labels.update({k.id: d.label(k) for k in d.keys.values()})
    return labels


def quota_rows(users: dict[str, Any], keys: dict[str, Any], spend: dict[str, Any],
               zone: dt.tzinfo, now: float, only_user: str | None = None
               ) -> list[dict[str, Any]]:
    """One row per user, then one per key of that user: spent, limit, period, resets at.
    Pure (records in, rows out). ``spend``: KV key (``user.<id>``/``key.<id>``) -> Spend."""
    from schemas.quota import PERIODS, period_bounds, spent, zone_name

    def row(kind: str, user: Any, key: Any | None) -> dict[str, Any]:
        record = spend.get(f"key.{key.id}" if key else f"user.{user.id}")
        budget = (key or user).limits.budget
        periods = {}
        for name in PERIODS:
            p = record.period(name) if record is not None else None
            live = p is not None and p.start <= now and (p.end is None or now < p.end)
            periods[name] = {"tokens": p.tokens if live and p else 0,
                             "usd": round(p.usd, 9) if live and p else 0.0}
        base: dict[str, Any] = {
            "scope": kind, "user": user.name, "user_id": user.id,
            "key": key.name if key else None, "key_id": key.id if key else None,
            "spend": periods, "budget": None, "period": None, "unit": None, "spent": None,
            "limit": None, "used_pct": None, "period_start": None, "resets_at": None,
            "resets_at_local": None, "exhausted": False, "soft_pct": (key or user).limits.soft_pct,
            "zone": zone_name(zone)}
        if budget is None:
            return base
        used, _ = spent(record, budget, now)
        start, end = period_bounds(budget.period, now, zone)
        base.update({
            "budget": budget.label(), "period": budget.period, "unit": budget.unit,
            "spent": used, "limit": budget.amount,
            "used_pct": round(used / budget.amount * 100, 2),
            "period_start": start if budget.period != "total" else None, "resets_at": end,
            "resets_at_local": (dt.datetime.fromtimestamp(end, zone).isoformat()
                                if end is not None else None),
            "exhausted": used >= budget.amount})
        return base

    rows = []
    for user in sorted(users.values(), key=lambda u: u.name):
        if only_user is not None and only_user not in (user.name, user.id):
            continue
        rows.append(row("user", user, None))
        for key in sorted((k for k in keys.values() if k.user == user.id),
                          key=lambda k: (k.created, k.id)):
            if key.revoked is None:
                rows.append(row("key", user, key))
    return rows


async def quota_records(nc: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
    from codeswitch import users as u
    from runtime import bus, names
    from schemas.config import GatewaySettings
    from schemas.quota import Spend

    directory = await u.load(nc)
    js = nc.jetstream()
    decoder = msgspec.json.Decoder(Spend)
    spend = {}
    for key, (value, _) in (await bus.read_bucket(await js.key_value(names.QUOTA_BUCKET))
                            ).items():
        try:
            spend[key] = decoder.decode(value)
        except (msgspec.ValidationError, msgspec.DecodeError):
            continue
    zone = ""
    try:
        entry = await (await js.key_value(names.SETTINGS_BUCKET)).get("gateway")
        if entry.value:
            zone = msgspec.json.decode(entry.value, type=GatewaySettings).timezone
    except Exception:  # no gateway settings written: the machine's zone
        pass
    return directory.users, directory.keys, spend, zone


async def quota(nc: NATS, only_user: str | None = None) -> list[dict[str, Any]]:
    """``quota_rows`` now, in the gateway's time zone (``quota show``, the console's bars)."""
    import time

    from schemas.quota import resolve_zone

    users, keys, spend, setting = await quota_records(nc)
    try:
        zone = resolve_zone(setting)
    except ValueError:
        zone = resolve_zone(None)
    return quota_rows(users, keys, spend, zone, time.time(), only_user)
