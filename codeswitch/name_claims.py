"""Names locked, not only checked: a user's name and a user's live key names are claimed in KV
``cs_names`` with a create (``kv.create`` fails when the entry exists), before the record is
written; two ``user add`` (or ``key create``) of one name at the same instant cannot both
succeed. The record write that follows a claim is undone (the claim given back) when it fails,
so nothing is half-written.

An entry whose owner no longer exists (a CLI killed between its claim and its record, a user
removed by an older version) is taken over with a compare-and-set once it is older than
``STALE_S`` (a younger one may be a claim whose record is being written right now).
Entries: ``user.<hex name>`` -> ``{"id": user id, "ts": when}``, ``key.<user id>.<hex name>``
-> ``{"id": key id, "ts"}`` (hex: names may hold ``@``, which KV keys may not).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from runtime import names

__all__ = ["STALE_S", "NameTaken", "claim", "key_entry", "release", "user_entry"]

STALE_S = 30.0


class NameTaken(Exception):
    pass


class _Claim(msgspec.Struct):
    id: str
    ts: float = 0.0


_dec = msgspec.json.Decoder(_Claim)
_enc = msgspec.json.Encoder()


def user_entry(name: str) -> str:
    return f"user.{name.encode().hex()}"


def key_entry(user_id: str, name: str) -> str:
    return f"key.{user_id}.{name.encode().hex()}"


async def claim(nc: NATS, entry: str, owner: str,
                alive: Callable[[str], Awaitable[bool]], now: float | None = None) -> None:
    """Claim ``entry`` for ``owner`` (an id), or raise :class:`NameTaken`. ``alive(id)``: the
    id an existing entry names still has its record (then the name is taken)."""
    kv = await nc.jetstream().key_value(names.NAMES_BUCKET)
    now = time.time() if now is None else now
    value = _enc.encode(_Claim(id=owner, ts=now))
    try:
        await kv.create(entry, value)
        return
    except KeyWrongLastSequenceError:
        pass
    try:
        held = await kv.get(entry)
    except KeyNotFoundError:  # released meanwhile: once more
        try:
            await kv.create(entry, value)
            return
        except KeyWrongLastSequenceError:
            raise NameTaken(entry) from None
    try:
        cur = _dec.decode(held.value or b"")
    except (msgspec.ValidationError, msgspec.DecodeError):
        cur = _Claim(id="", ts=0.0)
    if cur.id == owner:
        return
    if now - cur.ts < STALE_S or (cur.id and await alive(cur.id)):
        raise NameTaken(entry)
    try:  # a stale entry: its owner is gone
        await kv.update(entry, value, last=held.revision)
    except KeyWrongLastSequenceError:
        raise NameTaken(entry) from None


async def release(nc: NATS, entry: str, owner: str) -> None:
    """Give the name back, if ``owner`` holds it."""
    kv = await nc.jetstream().key_value(names.NAMES_BUCKET)
    try:
        held = await kv.get(entry)
        if _dec.decode(held.value or b"").id != owner:
            return
        await kv.delete(entry, last=held.revision)
    except (KeyNotFoundError, KeyWrongLastSequenceError, msgspec.ValidationError,
            msgspec.DecodeError):
        return
