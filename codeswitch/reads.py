"""Reads the CLI and the console share, without typer or rich (the console runs inside the
edge process): a ledger query over NATS (``cs.ledger.<query>``), the body-log entries of
requests, the gateways alive (KV ``cs_presence``) and the names of user and key ids."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from runtime import bus, names
from schemas.subjects import ledger_query_subject
from workers.ledger.wire import decode_reply

__all__ = ["NOT_RUNNING", "LedgerError", "LedgerUnavailableError", "body_entries", "gateways",
           "id_labels", "ledger"]

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
