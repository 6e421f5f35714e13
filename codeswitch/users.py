"""Users and API keys in NATS KV (``cs_users``, ``cs_keys``): the operations behind ``codeswitch
user …``, ``codeswitch key …`` and the config file's ``[[users]]``/``[[keys]]``. Each checks
everything first and then writes (one KV write per record, compare-and-set against the revision
it read), and records each change as an admin fact (``codeswitch.audit``). Every edge watches
both buckets, so a change applies to the next request (milliseconds).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from codeswitch.audit import AdminLog
from codeswitch.name_claims import NameTaken, claim, key_entry, release, user_entry
from runtime import bus, names
from schemas.users import (
    Key,
    Limits,
    User,
    config_key_id,
    hash_password,
    hash_secret,
    new_key_id,
    new_secret,
    new_user_id,
    parse_budget,
    secret_prefix,
)

__all__ = [
    "Directory",
    "KeySpec",
    "UserError",
    "add_user",
    "apply_users_config",
    "create_key",
    "limits_from",
    "load",
    "parse_expiry",
    "remove_user",
    "revoke_key",
    "set_enabled",
    "set_password",
    "set_role",
    "update_key",
    "update_user",
]

_enc = msgspec.json.Encoder()
_user_dec = msgspec.json.Decoder(User)
_key_dec = msgspec.json.Decoder(Key)


class UserError(ValueError):
    """A request the CLI refuses with a clear message (nothing was written)."""


@dataclass
class Directory:
    """Users and keys as read from KV, with the revisions (for compare-and-set)."""

    users: dict[str, User] = field(default_factory=dict)  # by id
    keys: dict[str, Key] = field(default_factory=dict)  # by id
    revisions: dict[tuple[str, str], int] = field(default_factory=dict)

    def user(self, ref: str) -> User:
        """By name or id; UserError when there is none."""
        found = self.users.get(ref) or next(
            (u for u in self.users.values() if u.name == ref), None)
        if found is None:
            raise UserError(f"no user named {ref!r}" + (
                f" (users: {', '.join(sorted(u.name for u in self.users.values()))})"
                if self.users else " (there are no users yet: `codeswitch user add NAME`)"))
        return found

    def keys_of(self, user_id: str) -> list[Key]:
        return sorted((k for k in self.keys.values() if k.user == user_id),
                      key=lambda k: (k.created, k.id))

    def key(self, ref: str) -> Key:
        """By id (``k_…``) or ``user/name`` (the live key of that name, else the latest)."""
        if ref in self.keys:
            return self.keys[ref]
        owner, sep, name = ref.partition("/")
        if sep:
            user = self.user(owner)
            same = [k for k in self.keys_of(user.id) if k.name == name]
            live = [k for k in same if k.revoked is None]
            if live or same:
                return (live or same)[-1]
            raise UserError(f"user {user.name} has no key named {name!r}")
        raise UserError(f"no key {ref!r}: give its id (k_…, see `codeswitch key list`) or "
                        "USER/NAME")

    def label(self, key: Key) -> str:
        owner = self.users.get(key.user)
        return f"{owner.name if owner else key.user}/{key.name}"


async def load(nc: NATS) -> Directory:
    js = nc.jetstream()
    out = Directory()
    for bucket, decoder, target in ((names.USERS_BUCKET, _user_dec, out.users),
                                    (names.KEYS_BUCKET, _key_dec, out.keys)):
        for key, (value, revision) in (await bus.read_bucket(await js.key_value(bucket))).items():
            try:
                target[key] = decoder.decode(value)  # type: ignore[assignment]
            except (msgspec.ValidationError, msgspec.DecodeError):
                continue
            out.revisions[(bucket, key)] = revision
    return out


async def _write(nc: NATS, d: Directory, bucket: str, key: str, record: Any) -> None:
    """Create (no revision known) or compare-and-set (the revision read): a concurrent change
    in between is refused rather than overwritten."""
    kv = await nc.jetstream().key_value(bucket)
    revision = d.revisions.get((bucket, key))
    try:
        if revision is None:
            new = await kv.create(key, _enc.encode(record))
        else:
            new = await kv.update(key, _enc.encode(record), last=revision)
    except KeyWrongLastSequenceError:
        raise UserError(f"{key} was changed by someone else meanwhile: run the command "
                        "again") from None
    d.revisions[(bucket, key)] = new
    if bucket == names.USERS_BUCKET:
        d.users[key] = record
    else:
        d.keys[key] = record


async def _live(nc: NATS, bucket: str, record_id: str) -> bool:
    """The record exists (a key: and is not revoked): its name is taken."""
    kv = await nc.jetstream().key_value(bucket)
    try:
        entry = await kv.get(record_id)
    except KeyNotFoundError:
        return False
    if bucket == names.KEYS_BUCKET:
        try:
            return _key_dec.decode(entry.value or b"").revoked is None
        except (msgspec.ValidationError, msgspec.DecodeError):
            return False
    return True


async def _claimed_write(nc: NATS, d: Directory, bucket: str, record: Any, entry: str,
                         taken: str) -> None:
    """Claim the record's name (``cs_names``), then write it; a failed write gives the name
    back (nothing half-written)."""
    try:
        await claim(nc, entry, record.id, lambda rid: _live(nc, bucket, rid))
    except NameTaken:
        raise UserError(taken) from None
    try:
        await _write(nc, d, bucket, record.id, record)
    except BaseException:
        await release(nc, entry, record.id)
        raise


async def _delete(nc: NATS, d: Directory, bucket: str, key: str) -> None:
    kv = await nc.jetstream().key_value(bucket)
    await kv.delete(key)
    d.revisions.pop((bucket, key), None)
    (d.users if bucket == names.USERS_BUCKET else d.keys).pop(key, None)


def _limits_json(limits: Limits) -> Any:
    return msgspec.to_builtins(limits)


_UNSET: Any = object()


def limits_from(base: Limits | None = None, *, budget: str | None = _UNSET,
                soft: str | float | None = _UNSET, rpm: int | None = _UNSET,
                tpm: int | None = _UNSET, concurrency: int | None = _UNSET) -> Limits:
    """``base`` with the given limits changed (a value of None or "none" removes that limit):
    ``budget="5usd/day"``, ``soft="80%"``, ``rpm=60``. UserError for a malformed one."""
    changes: dict[str, Any] = {}
    if budget is not _UNSET:
        try:
            changes["budget"] = None if budget in (None, "", "none") else parse_budget(
                str(budget))
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if soft is not _UNSET:
        if soft in (None, "", "none"):
            changes["soft_pct"] = None
        else:
            text = str(soft).strip().rstrip("%").strip()
            try:
                changes["soft_pct"] = float(text)
            except ValueError:
                raise UserError(f"soft threshold {soft!r}: write a percentage of the "
                                "budget, e.g. 80%") from None
    for name, value in (("rpm", rpm), ("tpm", tpm), ("concurrency", concurrency)):
        if value is not _UNSET:
            changes[name] = value
    merged = {**msgspec.to_builtins(base or Limits()), **changes}
    try:
        limits = msgspec.convert({k: v for k, v in merged.items() if v is not None}, Limits)
    except msgspec.ValidationError as exc:
        raise UserError(f"invalid limit: {exc}") from None
    if limits.soft_pct is not None and limits.budget is None:
        raise UserError("a soft threshold is a share of a budget: set --budget too")
    return limits


# -- users -----------------------------------------------------------------------------------

async def add_user(nc: NATS, audit: AdminLog, name: str, *, role: str = "user",
                   display_name: str = "", limits: Limits | None = None) -> User:
    if role not in ("admin", "user"):
        raise UserError(f"role {role!r} must be admin or user")
    d = await load(nc)
    if any(u.name == name for u in d.users.values()):
        raise UserError(f"a user named {name!r} exists")
    try:
        user = User(id=new_user_id(), name=name, display_name=display_name,
                    role=role,  # type: ignore[arg-type]
                    created=time.time(), limits=limits or Limits())
    except (ValueError, msgspec.ValidationError) as exc:
        raise UserError(str(exc)) from None
    await _claimed_write(nc, d, names.USERS_BUCKET, user, user_entry(name),
                         f"a user named {name!r} exists")
    await audit.record("user.created", f"user:{name}", id=user.id, role=user.role,
                       display_name=display_name or None,
                       limits=_limits_json(user.limits) if not user.limits.empty() else None,
                       first_user=len(d.users) == 1 or None)
    return user


async def update_user(nc: NATS, audit: AdminLog, ref: str, *,
                      display_name: str | None = None,
                      limits: Limits | None = None) -> tuple[User, list[str]]:
    """Change the display name and/or the limits; returns the user and what changed."""
    d = await load(nc)
    user = d.user(ref)
    new = user
    if display_name is not None:
        new = msgspec.structs.replace(new, display_name=display_name)
    if limits is not None:
        new = msgspec.structs.replace(new, limits=limits)
    if new == user:
        return user, []
    await _write(nc, d, names.USERS_BUCKET, user.id, new)
    changed = []
    if new.display_name != user.display_name:
        await audit.record("user.updated", f"user:{user.name}", id=user.id,
                           display_name=new.display_name, before=user.display_name)
        changed.append("display name")
    if new.limits != user.limits:
        await audit.record("limit.changed", f"user:{user.name}", id=user.id,
                           limits=_limits_json(new.limits), before=_limits_json(user.limits))
        changed.append("limits")
    return new, changed


async def set_enabled(nc: NATS, audit: AdminLog, ref: str, enabled: bool, *,
                      d: Directory | None = None) -> User | None:
    """None when it already was."""
    d = d or await load(nc)
    user = d.user(ref)
    if user.enabled == enabled:
        return None
    new = msgspec.structs.replace(user, enabled=enabled)
    await _write(nc, d, names.USERS_BUCKET, user.id, new)
    await audit.record("user.enabled" if enabled else "user.disabled", f"user:{user.name}",
                       id=user.id)
    return new


async def set_role(nc: NATS, audit: AdminLog, ref: str, role: str) -> User | None:
    """admin (promote) or user (demote); None when it already had that role."""
    d = await load(nc)
    user = d.user(ref)
    if user.role == role:
        return None
    new = msgspec.structs.replace(user, role=role)
    await _write(nc, d, names.USERS_BUCKET, user.id, new)
    await audit.record("user.promoted" if role == "admin" else "user.demoted",
                       f"user:{user.name}", id=user.id, role=role)
    return new


async def set_password(nc: NATS, audit: AdminLog, ref: str, password: str | None) -> User:
    """Set (scrypt-hashed, ``schemas.users.hash_password``) or clear (None) the password the
    user signs in to the console with. The fact says which, never the hash."""
    d = await load(nc)
    user = d.user(ref)
    try:
        stored = hash_password(password) if password is not None else ""
    except ValueError as exc:
        raise UserError(str(exc)) from None
    new = msgspec.structs.replace(user, password=stored)
    await _write(nc, d, names.USERS_BUCKET, user.id, new)
    await audit.record("user.password_set" if stored else "user.password_cleared",
                       f"user:{user.name}", id=user.id)
    return new


async def remove_user(nc: NATS, audit: AdminLog, ref: str, *,
                      d: Directory | None = None) -> tuple[User, int]:
    """Remove a user and its keys (the user first: its keys stop working at once)."""
    d = d or await load(nc)
    user = d.user(ref)
    keys = d.keys_of(user.id)
    await _delete(nc, d, names.USERS_BUCKET, user.id)
    await release(nc, user_entry(user.name), user.id)
    for key in keys:
        await _delete(nc, d, names.KEYS_BUCKET, key.id)
        await release(nc, key_entry(user.id, key.name), key.id)
        if key.revoked is None:
            await audit.record("key.revoked", f"key:{user.name}/{key.name}", id=key.id,
                               user=user.id, reason="user removed")
    await audit.record("user.removed", f"user:{user.name}", id=user.id, keys=len(keys),
                       last_user=not d.users or None)
    return user, len(keys)


# -- keys ------------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdwy])\s*$", re.I)
_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_expiry(text: str, now: float | None = None) -> float | None:
    """``30d``, ``12h``, ``2w``, ``1y`` from now; an ISO date or date-time (local time unless
    it has an offset); ``never`` -> None."""
    now = time.time() if now is None else now
    value = text.strip()
    if value.lower() in ("never", "none", ""):
        return None
    m = _DURATION.match(value)
    if m:
        return now + float(m.group(1)) * _SECONDS[m.group(2).lower()]
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise UserError(f"expiry {text!r}: write 30d, 12h, 2w, 1y, an ISO date "
                        "(2026-01-31) or never") from None


def _models(models: list[str]) -> list[str]:
    out: list[str] = []
    for item in models:
        for glob in item.split(","):
            glob = glob.strip()
            if glob and glob not in out:
                out.append(glob)
    return out


def _key_name(d: Directory, user: User, name: str | None) -> str:
    live = {k.name for k in d.keys_of(user.id) if k.revoked is None}
    if name is None:
        n = len(d.keys_of(user.id)) + 1
        while f"key-{n}" in live:
            n += 1
        return f"key-{n}"
    if name in live:
        raise UserError(f"user {user.name} has a key named {name!r} already (revoke it, or "
                        "choose another --name)")
    return name


async def create_key(nc: NATS, audit: AdminLog, user_ref: str, *, name: str | None = None,
                     models: list[str] | None = None, expires: float | None = None,
                     limits: Limits | None = None) -> tuple[Key, str]:
    """A new key for a user: the record (stored) and its secret (never stored: show it once)."""
    d = await load(nc)
    user = d.user(user_ref)
    if expires is not None and expires <= time.time():
        raise UserError("the expiry is in the past")
    secret = new_secret()
    try:
        key = Key(id=new_key_id(), name=_key_name(d, user, name), user=user.id,
                  hash=hash_secret(secret), prefix=secret_prefix(secret),
                  models=_models(models or []), expires=expires, created=time.time(),
                  limits=limits or Limits())
    except (ValueError, msgspec.ValidationError) as exc:
        raise UserError(str(exc)) from None
    await _claimed_write(nc, d, names.KEYS_BUCKET, key, key_entry(user.id, key.name),
                         f"user {user.name} has a key named {key.name!r} already (revoke it, "
                         "or choose another --name)")
    await audit.record("key.created", f"key:{user.name}/{key.name}", id=key.id, user=user.id,
                       prefix=key.prefix, models=key.models or None, expires=expires,
                       limits=_limits_json(key.limits) if not key.limits.empty() else None)
    return key, secret


async def update_key(nc: NATS, audit: AdminLog, ref: str, *, name: str | None = None,
                     models: list[str] | None = None, expires: float | bool | None = False,
                     enabled: bool | None = None,
                     limits: Limits | None = None) -> tuple[Key, list[str]]:
    """Change a key (``expires=False``: unchanged; None: never expires). Returns what
    changed."""
    d = await load(nc)
    key = d.key(ref)
    if key.revoked is not None:
        raise UserError(f"key {d.label(key)} is revoked: create a new one")
    user = d.users.get(key.user)
    new = key
    if name is not None and name != key.name:
        if user is not None:
            _key_name(d, user, name)
        new = msgspec.structs.replace(new, name=name)
    if models is not None:
        new = msgspec.structs.replace(new, models=_models(models))
    if expires is not False:
        new = msgspec.structs.replace(new, expires=expires)
    if enabled is not None:
        new = msgspec.structs.replace(new, enabled=enabled)
    if limits is not None:
        new = msgspec.structs.replace(new, limits=limits)
    try:
        new = msgspec.convert(msgspec.to_builtins(new), Key)  # validates (name, hash)
    except msgspec.ValidationError as exc:
        raise UserError(str(exc)) from None
    if new == key:
        return key, []
    if new.name != key.name:  # the new name claimed, the old one given back
        await _claimed_write(nc, d, names.KEYS_BUCKET, new, key_entry(key.user, new.name),
                             f"user {user.name if user else key.user} has a key named "
                             f"{new.name!r} already (revoke it, or choose another name)")
        await release(nc, key_entry(key.user, key.name), key.id)
    else:
        await _write(nc, d, names.KEYS_BUCKET, key.id, new)
    target = f"key:{d.label(key)}"
    changed: dict[str, Any] = {}
    for f in ("name", "models", "expires", "enabled"):
        if getattr(new, f) != getattr(key, f):
            changed[f] = getattr(new, f)
    if changed:
        await audit.record("key.updated", target, id=key.id, user=key.user,
                           before={f: getattr(key, f) for f in changed}, **changed)
    if new.limits != key.limits:
        await audit.record("limit.changed", target, id=key.id, user=key.user,
                           limits=_limits_json(new.limits), before=_limits_json(key.limits))
    return new, [*changed, *(["limits"] if new.limits != key.limits else [])]


async def revoke_key(nc: NATS, audit: AdminLog, ref: str, *,
                     d: Directory | None = None) -> Key:
    d = d or await load(nc)
    key = d.key(ref)
    if key.revoked is not None:
        raise UserError(f"key {d.label(key)} was revoked already")
    new = msgspec.structs.replace(key, revoked=time.time())
    await _write(nc, d, names.KEYS_BUCKET, key.id, new)
    await release(nc, key_entry(key.user, key.name), key.id)  # the name is free again
    await audit.record("key.revoked", f"key:{d.label(key)}", id=key.id, user=key.user)
    return new


# -- the config file -------------------------------------------------------------------------

@dataclass
class KeySpec:
    """A ``[[keys]]`` table: the owner by name (a file user or one added with the CLI)."""

    name: str
    user: str
    hash: str
    prefix: str = ""
    models: list[str] = field(default_factory=list)
    expires: float | None = None
    enabled: bool = True
    limits: Limits = field(default_factory=Limits)


async def apply_users_config(nc: NATS, audit: AdminLog | None, users: list[User],
                             keys: list[KeySpec]) -> list[str]:
    """Make KV hold the file's users and keys: add or update them (a CLI user of the same name
    is taken over), remove file users no longer in it (with their keys) and revoke file keys
    no longer in it. Checked before anything is written; an unchanged file writes nothing."""
    d = await load(nc)
    log = audit or AdminLog(None)
    changes: list[str] = []
    by_name = {u.name: u for u in d.users.values()}
    owners: dict[str, str] = {}  # user name -> id, after this apply
    wanted_users: list[tuple[User, User | None]] = []
    for user in users:
        cur = by_name.get(user.name) or d.users.get(user.id)
        uid = cur.id if cur is not None else user.id
        owners[user.name] = uid
        want = msgspec.structs.replace(user, id=uid, source="config",
                                       created=cur.created if cur else time.time())
        wanted_users.append((want, cur))
    for name, u in by_name.items():
        owners.setdefault(name, u.id)
    file_user_names = {u.name for u in users}
    gone_users = [u for u in d.users.values()
                  if u.source == "config" and u.name not in file_user_names]
    for u in gone_users:
        owners.pop(u.name, None)
    wanted_keys: list[tuple[Key, Key | None]] = []
    file_kids = {config_key_id(k.user, k.name) for k in keys}
    gone_ids = {u.id for u in gone_users}
    # keys this apply revokes or removes: their secret may move to a key of the file
    going = {k.id for k in d.keys.values()
             if k.user in gone_ids or (k.source == "config" and k.id not in file_kids)}
    for spec in keys:
        if spec.user not in owners:
            raise UserError(f"[[keys]] {spec.name!r}: no user named {spec.user!r} (define it in "
                            "[[users]] or with `codeswitch user add`)")
        kid = config_key_id(spec.user, spec.name)
        cur_key = d.keys.get(kid)
        want_key = Key(id=kid, name=spec.name, user=owners[spec.user], hash=spec.hash,
                       prefix=spec.prefix, models=spec.models, expires=spec.expires,
                       enabled=spec.enabled, created=cur_key.created if cur_key else time.time(),
                       limits=spec.limits, source="config")
        clash = next((k for k in d.keys.values() if k.hash == spec.hash and k.id != kid
                      and k.revoked is None and k.id not in going), None)
        if clash is not None:
            raise UserError(f"[[keys]] {spec.name!r}: the same secret is already key "
                            f"{d.label(clash)}")
        wanted_keys.append((want_key, cur_key))
    # everything checked: write
    for want, cur in wanted_users:
        if cur is not None and want == cur:
            continue
        await _write(nc, d, names.USERS_BUCKET, want.id, want)
        target = f"user:{want.name}"
        if cur is None:
            await log.record("user.created", target, id=want.id, role=want.role,
                             display_name=want.display_name or None, via="config file",
                             limits=_limits_json(want.limits) if not want.limits.empty()
                             else None)
            changes.append(f"user {want.name} added")
            continue
        if cur.enabled != want.enabled:
            await log.record("user.enabled" if want.enabled else "user.disabled", target,
                             id=want.id, via="config file")
        if cur.role != want.role:
            await log.record("user.promoted" if want.role == "admin" else "user.demoted",
                             target, id=want.id, role=want.role, via="config file")
        if cur.limits != want.limits:
            await log.record("limit.changed", target, id=want.id, via="config file",
                             limits=_limits_json(want.limits), before=_limits_json(cur.limits))
        if (cur.display_name, cur.source) != (want.display_name, want.source):
            await log.record("user.updated", target, id=want.id, via="config file",
                             display_name=want.display_name, source=want.source)
        changes.append(f"user {want.name} updated")
    for u in gone_users:
        await remove_user(nc, log, u.id, d=d)
        changes.append(f"user {u.name} removed (no longer in the config file)")
    for want_key, cur_key in wanted_keys:
        if cur_key is not None and want_key == cur_key:
            continue
        await _write(nc, d, names.KEYS_BUCKET, want_key.id, want_key)
        target = f"key:{d.label(want_key)}"
        if cur_key is None:
            await log.record("key.created", target, id=want_key.id, user=want_key.user,
                             prefix=want_key.prefix or None, models=want_key.models or None,
                             expires=want_key.expires, via="config file")
            changes.append(f"key {d.label(want_key)} added")
            continue
        fields = {f: getattr(want_key, f) for f in ("user", "models", "expires", "enabled",
                                                    "revoked", "prefix")
                  if getattr(want_key, f) != getattr(cur_key, f)}
        if want_key.hash != cur_key.hash:
            fields["secret"] = "changed"
        if fields:
            await log.record("key.updated", target, id=want_key.id, via="config file",
                             **fields)
        if cur_key.limits != want_key.limits:
            await log.record("limit.changed", target, id=want_key.id, via="config file",
                             limits=_limits_json(want_key.limits),
                             before=_limits_json(cur_key.limits))
        changes.append(f"key {d.label(want_key)} updated")
    for key in list(d.keys.values()):
        if key.source == "config" and key.id not in file_kids and key.revoked is None:
            await _write(nc, d, names.KEYS_BUCKET, key.id,
                         msgspec.structs.replace(key, revoked=time.time()))
            await log.record("key.revoked", f"key:{d.label(key)}", id=key.id, user=key.user,
                             via="config file", reason="no longer in the config file")
            changes.append(f"key {d.label(key)} revoked (no longer in the config file)")
    return changes

