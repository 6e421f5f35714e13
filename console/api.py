"""The admin API (``/admin/api/…``): every endpoint the console's pages use, declared with
``console.web.endpoint`` (the OpenAPI document comes from these declarations). Reads ask the
ledger over NATS (``codeswitch.reads``) and read KV; writes call the same functions as the CLI
(``codeswitch.users``, ``codeswitch.admin``), each recording its admin fact with the signed-in
user's id as the actor (``local:<OS user>`` in open mode).

Non-admins reach only the ``access="user"`` endpoints, and those limit every read to their
own user id (``Call.only_own``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import msgspec

from console import auth
from console.app import Call
from console.web import HttpError, Response, endpoint, openapi

__all__ = ["VERSION"]

VERSION = "1"
MINUTE_WINDOW_S = 3600


# -- types (their JSON Schema goes into the OpenAPI document) --------------------------------

class SignIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An admin's (or a user's) API key, or a user name and the password set with
    `codeswitch user passwd`."""

    key: str | None = None
    name: str | None = None
    password: str | None = None


class Me(msgspec.Struct, kw_only=True):
    actor: str
    name: str
    role: str
    mode: str
    user_id: str | None = None
    key_id: str | None = None
    expires: float | None = None
    csrf: str | None = None


class TzQuery(msgspec.Struct, kw_only=True):
    tz_offset_s: int = 0  # seconds east of UTC: "today" and day buckets are the browser's


class ProviderIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A provider as the form sends it; ``api_key`` absent or null on an edit keeps the stored
    one. A literal key is stored encrypted; ``env:NAME`` is read by the router."""

    name: str
    dialect: Literal["anthropic", "openai-chat", "openai-responses", "gemini"]
    base_url: str
    api_key: str | None = None
    models: list[str] = []
    priority: int = 1
    weight: int = 1
    enabled: bool = True


class UserIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    role: Literal["admin", "user"] = "user"
    display_name: str = ""


class KeyIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str | None = None
    models: list[str] = []
    expires: str | None = None  # "30d", "12h", an ISO date, or unix seconds


class SessionsQuery(msgspec.Struct, kw_only=True):
    user: str | None = None
    active: bool = False
    since: float | None = None
    until: float | None = None
    limit: int = 50


class DeleteQuery(msgspec.Struct, kw_only=True):
    force: bool = False


class LogQuery(msgspec.Struct, kw_only=True):
    provider: str | None = None
    model: str | None = None
    status: str | None = None  # ok | error | 429 | 4xx | 5xx
    user: str | None = None
    session: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    before_seq: int | None = None


class StatsQuery(msgspec.Struct, kw_only=True):
    since: float | None = None
    until: float | None = None
    bucket: Literal["minute", "hour", "day"] = "hour"
    by: Literal["provider", "model", "user", "key", "dialect", "client", "route"] = "provider"
    tz_offset_s: int = 0
    # comma-separated metrics (requests and errors always come; `/stats`: latency quantiles
    # for the totals only, first_ts/last_ts not per bucket): only those are computed and sent
    # (the statistics page asks for what it shows); empty: every one
    fields: str = ""


def _fields(q: StatsQuery, drop: tuple[str, ...] = ()) -> list[str] | None:
    if not q.fields:
        return None
    return [f for f in (x.strip() for x in q.fields.split(",")) if f and not f.startswith(drop)]


class AuditQuery(msgspec.Struct, kw_only=True):
    since: float | None = None
    until: float | None = None
    actor: str | None = None
    action: str | None = None
    limit: int = 500


# -- helpers ---------------------------------------------------------------------------------

async def _ledger(c: Call, query: str, params: dict[str, Any], timeout: float = 15) -> Any:
    from codeswitch.reads import ledger

    return await ledger(c.nc, query, {k: v for k, v in params.items() if v is not None},
                        timeout)


def _labels(c: Call) -> dict[str, str]:
    """User and key ids -> names, from the edge's live copy of the buckets (no I/O)."""
    d = c.app.host.directory
    out = {u.id: u.name for u in d.users.values()}
    for k in d.keys.values():
        owner = d.users.get(k.user)
        out[k.id] = f"{owner.name if owner else k.user}/{k.name}"
    return out


def _today(tz_offset_s: int, now: float) -> float:
    """The start of the browser's day, in unix seconds."""
    return (now + tz_offset_s) // 86400 * 86400 - tz_offset_s


def _user_view(u: Any, keys: list[Any], now: float) -> dict[str, Any]:
    return {"id": u.id, "name": u.name, "display_name": u.display_name, "role": u.role,
            "enabled": u.enabled, "created": u.created, "source": u.source,
            "limits": msgspec.to_builtins(u.limits), "password": bool(u.password),
            "keys": [_key_view(k, now) for k in keys]}


def _key_view(k: Any, now: float) -> dict[str, Any]:
    return {"id": k.id, "name": k.name, "user": k.user, "prefix": k.prefix,
            "models": k.models, "expires": k.expires, "state": k.state(now),
            "created": k.created, "revoked": k.revoked, "source": k.source}


def _parse_expiry(text: str | None) -> float | None:
    if not text:
        return None
    from codeswitch.users import UserError, parse_expiry

    try:
        return parse_expiry(text)
    except UserError as exc:
        raise HttpError(400, str(exc)) from None


async def _user_op(c: Call, fn: Any) -> Any:
    from codeswitch.users import UserError

    try:
        return await fn
    except UserError as exc:
        raise HttpError(409 if "changed by someone else" in str(exc) else 400,
                        str(exc)) from None


# -- session ---------------------------------------------------------------------------------

@endpoint("GET", "/openapi.json", access="public")
async def get_openapi(c: Call) -> Any:
    """This document."""
    return openapi(VERSION)


@endpoint("GET", "/me", access="public", result=Me)
async def me(c: Call) -> Any:
    """Who is signed in, and the CSRF token their writes carry. In open mode (no users, a
    loopback client) this starts the local person's session."""
    p = c.p
    if p.role == "none":
        d = c.app.host.directory
        raise HttpError(401, "not signed in" + (
            "" if d.users else " (open mode is only for a loopback client at a loopback "
            "address)"), "unauthenticated")
    if p.mode == "open" and not p.via_cookie:
        p = c.app.keys.new_session(actor=p.actor, name=p.name, role="admin", mode="open",
                                   now=time.time())
        return Response(auth.as_dict(p, c.app.keys.csrf(p.nonce)),
                        headers=[c.app.cookie_header(p, c.scheme)])
    return auth.as_dict(p, c.app.keys.csrf(p.nonce) if p.via_cookie else None)


@endpoint("POST", "/signin", access="public", body=SignIn, result=Me)
async def signin(c: Call) -> Any:
    """Sign in with an API key, or a user name and password; sets the session cookie."""
    b: SignIn = c.body
    d = c.app.host.directory
    now = time.time()
    if not d.users:
        raise HttpError(400, "this gateway has no users: the console is open to a loopback "
                        "client (create one with `codeswitch user add NAME --role admin`)")
    try:
        if b.key:
            p = auth.sign_in_key(c.app.keys, d, b.key.strip(), now)
        elif b.name and b.password:
            p = await asyncio.get_running_loop().run_in_executor(
                None, auth.sign_in_password, c.app.keys, d, b.name.strip(), b.password, now)
        else:
            raise HttpError(400, "give an API key, or a user name and password")
    except HttpError:
        raise
    except Exception as exc:  # AuthError, AccessDenied
        raise HttpError(401, getattr(exc, "message", str(exc)), "signin_failed") from None
    return Response(auth.as_dict(p, c.app.keys.csrf(p.nonce)),
                    headers=[c.app.cookie_header(p, c.scheme)])


@endpoint("POST", "/signout", access="user")
async def signout(c: Call) -> Any:
    """End this session (the cookie is cleared and its nonce refused from now on)."""
    c.app.keys.sign_out(c.p, time.time())
    return Response({"signed_out": True}, headers=[c.app.cookie_header(None, c.scheme)])


# -- dashboard -------------------------------------------------------------------------------

@endpoint("GET", "/dashboard", access="user", query=TzQuery)
async def dashboard(c: Call) -> Any:
    """Parts alive, today's requests/errors/tokens/cost, requests per minute over the last
    hour, who is online, open circuits and alerts firing (admins see all; a user their own
    usage)."""
    q: TzQuery = c.query
    now = time.time()
    own = c.only_own()
    base = {"user": own, "tz_offset_s": q.tz_offset_s}

    async def safe(coro: Any) -> Any:
        try:
            return await coro
        except Exception as exc:
            return {"error": str(exc)}

    jobs: dict[str, Any] = {
        # light: no latency quantiles (most of a query's time; the dashboard shows none)
        "today": _ledger(c, "overview", {**base, "since": _today(q.tz_offset_s, now),
                                         "fields": ["total_tokens", "cost"]}),
        "minutes": _ledger(c, "series", {**base, "since": (now - MINUTE_WINDOW_S) // 60 * 60,
                                         "bucket": "minute", "fields": []}),
        "recent": _ledger(c, "log", {"user": own, "limit": 15}),
    }
    if own is None:
        from codeswitch.reads import gateways

        jobs["online"] = _ledger(c, "online", {})
        jobs["gateways"] = gateways(c.nc)
        jobs["circuits"] = _circuits(c)
        jobs["alerts"] = _alert_states(c)
    values = await asyncio.gather(*(safe(j) for j in jobs.values()))
    out = dict(zip(jobs, values, strict=True))
    out["now"] = now
    out["labels"] = _labels(c)
    if own is None:
        out["parts"] = _parts()
    return out


def _parts() -> dict[str, Any] | None:
    """The supervisor's view of every part (under `codeswitch up`), else None."""
    from runtime.health import parts_health, supervised_home

    home = supervised_home()
    if home is None:
        return None
    ok, detail = parts_health(home)
    return {"ok": ok, **detail}


async def _circuits(c: Call) -> list[dict[str, Any]]:
    from codeswitch.admin import list_circuits

    return [{"key": k, **msgspec.to_builtins(v)} for k, v in (await list_circuits(c.nc)).items()]


async def _alert_states(c: Call) -> list[dict[str, Any]]:
    from runtime import bus, names
    from workers.alerts.rules import AlertState

    kv = await c.nc.jetstream().key_value(names.ALERT_STATE_BUCKET)
    out = []
    for raw, _ in (await bus.read_bucket(kv)).values():
        try:
            out.append(msgspec.to_builtins(msgspec.json.decode(raw, type=AlertState)))
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
    return sorted(out, key=lambda s: s["rule"])


# -- providers -------------------------------------------------------------------------------

@endpoint("GET", "/providers")
async def providers(c: Call) -> Any:
    """Providers (keys masked), circuit states, the active provider per client, unified
    mode."""
    from codeswitch.admin import get_setting, list_providers

    plist, circuits, active, unified = await asyncio.gather(
        list_providers(c.nc), _circuits(c), get_setting(c.nc, "active"),
        get_setting(c.nc, "unified"))
    u = msgspec.to_builtins(unified) if unified is not None else None
    if u:
        u.pop("token", None)
    return {"providers": [msgspec.to_builtins(_masked(c, p)) for p in plist],
            "circuits": circuits,
            "active": msgspec.to_builtins(active) if active is not None else None,
            "unified": u}


def _masked(c: Call, p: Any) -> Any:
    """A provider safe to show: an encrypted key decrypted here (never shown) so that its
    last 4 characters are, as for a literal (the CLI's `provider list` does the same)."""
    from runtime.secrets import SecretKeyError, is_encrypted, reveal

    home = c.app.host.home
    if home is not None and is_encrypted(p.api_key):
        try:
            p = msgspec.structs.replace(p, api_key=reveal(p.api_key, home))
        except SecretKeyError:
            pass  # shown as "enc:…"
    return p.masked()


async def _save_provider(c: Call, body: ProviderIn, *, existing: Any) -> Any:
    from codeswitch.admin import provider_details, put_provider, wait_applied
    from schemas.config import ProviderConfig

    data = msgspec.to_builtins(body)
    if body.api_key is None:
        data["api_key"] = existing.api_key if existing is not None else ""
    base = msgspec.to_builtins(existing) if existing is not None else {}
    try:
        provider = msgspec.convert({**base, **data}, ProviderConfig)
    except msgspec.ValidationError as exc:
        raise HttpError(400, str(exc)) from None
    secret_key = None
    if body.api_key and not body.api_key.startswith("env:"):
        secret_key = _secret_key(c)
    await put_provider(c.nc, provider, secret_key=secret_key)
    await c.audit().record("provider.updated" if existing is not None else "provider.added",
                           f"provider:{provider.name}", **provider_details(provider))
    caught, answering = await wait_applied(c.nc)
    return {"provider": msgspec.to_builtins(_masked(c, provider)),
            "in_effect_on": caught, "routers": answering}


def _secret_key(c: Call) -> bytes:
    home = c.app.host.home
    if home is None:
        raise HttpError(400, "a literal API key is stored encrypted with the gateway's data "
                        "directory key, and this gateway runs without one: give env:NAME")
    from runtime.secrets import load_key

    key = load_key(home, create=True)
    assert key is not None
    return key


@endpoint("POST", "/providers", body=ProviderIn)
async def add_provider(c: Call) -> Any:
    """Add a provider (routers use it on their next request; the answer comes once they
    have it)."""
    from codeswitch.admin import get_provider

    if await get_provider(c.nc, c.body.name) is not None:
        raise HttpError(409, f"a provider named {c.body.name!r} exists: edit it")
    return await _save_provider(c, c.body, existing=None)


@endpoint("PUT", "/providers/{name}", body=ProviderIn)
async def edit_provider(c: Call) -> Any:
    """Change a provider (its name stays)."""
    from codeswitch.admin import get_provider

    name = c.params["name"]
    existing = await get_provider(c.nc, name)
    if existing is None:
        raise HttpError(404, f"no provider named {name!r} (removed meanwhile?)")
    if c.body.name != name:
        raise HttpError(400, "a provider's name cannot change: add a new one")
    return await _save_provider(c, c.body, existing=existing)


async def _provider_enabled(c: Call, enabled: bool) -> Any:
    from codeswitch.admin import get_provider, put_provider, wait_applied

    name = c.params["name"]
    p = await get_provider(c.nc, name)
    if p is None:
        raise HttpError(404, f"no provider named {name!r} (removed meanwhile?)")
    if p.enabled != enabled:
        await put_provider(c.nc, msgspec.structs.replace(p, enabled=enabled))
        await c.audit().record("provider.enabled" if enabled else "provider.disabled",
                               f"provider:{name}")
    caught, answering = await wait_applied(c.nc)
    return {"name": name, "enabled": enabled, "in_effect_on": caught, "routers": answering}


@endpoint("POST", "/providers/{name}/enable")
async def enable_provider(c: Call) -> Any:
    """Enable a provider."""
    return await _provider_enabled(c, True)


@endpoint("POST", "/providers/{name}/disable")
async def disable_provider(c: Call) -> Any:
    """Disable a provider (kept, not used)."""
    return await _provider_enabled(c, False)


@endpoint("DELETE", "/providers/{name}")
async def remove_provider(c: Call) -> Any:
    """Remove a provider."""
    from codeswitch.admin import delete_provider, wait_applied
    from codeswitch.routes import get_routes

    name = c.params["name"]
    naming = [r.name for r in (await get_routes(c.nc)).rules if name in r.to]
    if naming:  # as `provider remove`: a rule must never name a provider that is not there
        raise HttpError(409, f"provider {name!r} is named by route rule(s) "
                        f"{', '.join(naming)}: change or remove them first "
                        "(`codeswitch route list`)")
    if not await delete_provider(c.nc, name):
        raise HttpError(404, f"no provider named {name!r}")
    await c.audit().record("provider.removed", f"provider:{name}")
    caught, answering = await wait_applied(c.nc)
    return {"removed": name, "in_effect_on": caught, "routers": answering}


# -- users and keys --------------------------------------------------------------------------

@endpoint("GET", "/users")
async def users(c: Call) -> Any:
    """Every user with their keys (never a secret or a password hash)."""
    from codeswitch.users import load

    d = await load(c.nc)
    now = time.time()
    return {"users": [_user_view(u, d.keys_of(u.id), now)
                      for u in sorted(d.users.values(), key=lambda u: u.name)]}


@endpoint("POST", "/users", body=UserIn)
async def add_user(c: Call) -> Any:
    """Create a user (the first one turns key checking on for every request)."""
    from codeswitch import users as u

    b: UserIn = c.body
    user = await _user_op(c, u.add_user(c.nc, c.audit(), b.name, role=b.role,
                                        display_name=b.display_name))
    return _user_view(user, [], time.time())


def _user_action(verb: str, doc: str) -> None:
    async def action(c: Call) -> Any:
        from codeswitch import users as u

        ref = c.params["id"]
        if verb in ("enable", "disable"):
            op = u.set_enabled(c.nc, c.audit(), ref, verb == "enable")
        else:
            op = u.set_role(c.nc, c.audit(), ref, "admin" if verb == "promote" else "user")
        changed = await _user_op(c, op)
        d = await u.load(c.nc)
        user = d.user(ref)
        return {**_user_view(user, d.keys_of(user.id), time.time()), "changed": bool(changed)}

    action.__name__ = f"{verb}_user"
    action.__doc__ = doc
    endpoint("POST", f"/users/{{id}}/{verb}")(action)


_user_action("enable", "Accept the user's requests again.")
_user_action("disable", "Refuse the user's requests (every edge, within milliseconds).")
_user_action("promote", "Make the user an admin.")
_user_action("demote", "Make an admin a plain user.")


@endpoint("DELETE", "/users/{id}")
async def remove_user(c: Call) -> Any:
    """Remove a user and their keys (their usage on record stays)."""
    from codeswitch import users as u

    user, keys = await _user_op(c, u.remove_user(c.nc, c.audit(), c.params["id"]))
    return {"removed": user.id, "name": user.name, "keys": keys}


@endpoint("POST", "/users/{id}/keys", body=KeyIn)
async def create_key(c: Call) -> Any:
    """A new API key for the user: the secret is in this answer only."""
    from codeswitch import users as u

    b: KeyIn = c.body
    key, secret = await _user_op(c, u.create_key(
        c.nc, c.audit(), c.params["id"], name=b.name or None, models=b.models or None,
        expires=_parse_expiry(b.expires)))
    return {"key": _key_view(key, time.time()), "secret": secret}


@endpoint("POST", "/keys/{id}/revoke")
async def revoke_key(c: Call) -> Any:
    """Revoke a key for good."""
    from codeswitch import users as u

    key = await _user_op(c, u.revoke_key(c.nc, c.audit(), c.params["id"]))
    return _key_view(key, time.time())


@endpoint("GET", "/keys", access="user")
async def my_keys(c: Call) -> Any:
    """The signed-in user's keys (prefixes and states, never a secret)."""
    d = c.app.host.directory
    now = time.time()
    uid = c.p.user_id
    return {"keys": [_key_view(k, now) for k in sorted(d.keys.values(), key=lambda k: k.created)
                     if uid is not None and k.user == uid]}


@endpoint("GET", "/quota", access="user")
async def quota(c: Call) -> Any:
    """Budgets: what each user and key has spent in the current period, its limit and when it
    resets (``codeswitch quota show``; a non-admin sees their own)."""
    from codeswitch.reads import quota as quota_rows

    own = c.only_own()
    return {"quota": await quota_rows(c.nc, own)}


# -- sessions --------------------------------------------------------------------------------

@endpoint("GET", "/sessions", access="user", query=SessionsQuery)
async def sessions(c: Call) -> Any:
    """Sessions, most recently seen first, with titles from the body log when it kept them."""
    from codeswitch.conversation import conversation, title
    from codeswitch.reads import body_entries

    q: SessionsQuery = c.query
    own = c.only_own()
    rows = await _ledger(c, "sessions", {
        "user": own or q.user, "active": q.active or None, "since": q.since,
        "until": q.until, "limit": max(1, min(q.limit, 500))})
    entries = await body_entries(c.nc, [r["main_request_id"] for r in rows][:100])
    for r in rows:
        entry = entries.get(r["main_request_id"])
        r["title"] = title(conversation(entry)) if entry else None
    return {"sessions": rows, "labels": _labels(c)}


@endpoint("GET", "/sessions/{id}", access="user")
async def session(c: Call) -> Any:
    """One session: totals, the timeline of its requests, the conversation (body log)."""
    from codeswitch.conversation import conversation, title
    from codeswitch.reads import body_entries

    found = await _ledger(c, "session", {"session": c.params["id"]})
    own = c.only_own()
    if own is not None and found.get("user") != own:
        raise HttpError(404, "no such session among yours")
    entry = (await body_entries(c.nc, [found["main_request_id"]])).get(found["main_request_id"])
    turns = conversation(entry) if entry else []
    found["title"] = title(turns)
    found["conversation"] = [t._asdict() for t in turns] if entry else None
    found["labels"] = _labels(c)
    return found


@endpoint("DELETE", "/sessions/{id}", query=DeleteQuery)
async def delete_session(c: Call) -> Any:
    """Delete a session for real (ledger rows, event-log facts, body-log entries); its cost
    stays in the statistics."""
    sid = c.params["id"]
    found = await _ledger(c, "session", {"session": sid})
    if found["session"] != sid:
        raise HttpError(400, f"{sid!r} is not a session id (did you mean {found['session']}?)")
    from codeswitch.session_delete import delete_session

    done = await delete_session(c.nc, c.audit(), sid, force=c.query.force)
    return done


# -- request log, statistics, audit, alerts --------------------------------------------------

@endpoint("GET", "/log", access="user", query=LogQuery)
async def request_log(c: Call) -> Any:
    """Requests, newest first, with filters; page with before_seq."""
    q: LogQuery = c.query
    params = msgspec.to_builtins(q)
    params["limit"] = max(1, min(q.limit, 1000))
    own = c.only_own()
    if own is not None:
        params["user"] = own
    return {"requests": await _ledger(c, "log", params), "labels": _labels(c)}


@endpoint("GET", "/stats", access="user", query=StatsQuery)
async def stats(c: Call) -> Any:
    """Totals, a series (minute, hour or day buckets) and a breakdown (by provider, model,
    user, key, dialect or client) over a time range."""
    q: StatsQuery = c.query
    base = {"since": q.since, "until": q.until, "user": c.only_own(),
            "tz_offset_s": q.tz_offset_s}
    overview, series, breakdown = await asyncio.gather(
        _ledger(c, "overview", {**base, "fields": _fields(q)}),
        _ledger(c, "series", {**base, "bucket": q.bucket, "light": True,  # the charts
                              "fields": _fields(q, ("p50_", "p95_", "first_ts", "last_ts"))}),
        _ledger(c, "breakdown", {**base, "by": q.by, "limit": 20, "light": True,
                                 "fields": _fields(q, ("p50_", "p95_"))}))
    return {"overview": overview, "series": series, "breakdown": breakdown,
            "labels": _labels(c)}


@endpoint("GET", "/heatmap", access="user", query=StatsQuery)
async def heatmap(c: Call) -> Any:
    """Requests, errors, tokens and cost per day (the browser's days)."""
    q: StatsQuery = c.query
    return {"days": await _ledger(c, "heatmap", {
        "since": q.since, "until": q.until, "user": c.only_own(),
        "tz_offset_s": q.tz_offset_s,
        "fields": [f for f in _fields(q) or [] if f in ("errors", "total_tokens", "cost")]
        if q.fields else None})}


@endpoint("GET", "/audit", query=AuditQuery)
async def audit(c: Call) -> Any:
    """Admin facts: who changed what, when (filter by time, actor, action; globs allowed)."""
    q: AuditQuery = c.query
    rows = await _ledger(c, "audit", {"since": q.since, "until": q.until, "actor": q.actor,
                                      "action": q.action, "limit": max(1, min(q.limit, 5000))})
    rows.reverse()  # newest first
    return {"entries": rows, "labels": _labels(c)}


@endpoint("GET", "/alerts")
async def alerts(c: Call) -> Any:
    """Alert rules (channels by label only: webhook URLs are secrets), their states, history,
    and the choices a rule's form offers (metrics with their units...)."""
    from runtime import bus, names
    from workers.alerts import rules as r

    kv = await c.nc.jetstream().key_value(names.RULES_BUCKET)
    found = []
    for raw, _ in (await bus.read_bucket(kv)).values():
        try:
            found.append(_rule_view(msgspec.json.decode(raw, type=r.Rule)))
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            continue
    from codeswitch.reads import LedgerError, LedgerUnavailableError

    async def history() -> Any:  # the rules are in KV: shown even when the ledger is away
        try:
            return await _ledger(c, "alerts", {"limit": 100})
        except (LedgerError, LedgerUnavailableError) as exc:
            return {"error": str(exc)}

    states, past = await asyncio.gather(_alert_states(c), history())
    return {"rules": sorted(found, key=lambda x: x["name"]), "states": states,
            "history": past if isinstance(past, list) else [],
            "history_error": None if isinstance(past, list) else past["error"],
            "choices": {"metrics": r.METRICS, "percent": sorted(r.PERCENT_METRICS),
                        "comparisons": list(r.COMPARISONS), "severities": list(r.SEVERITIES),
                        "scope_kinds": list(r.SCOPE_KINDS),
                        "channel_formats": list(r.CHANNEL_FORMATS)}}


class RuleIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An alert rule as `codeswitch alerts add` takes it: durations as text (`90s`, `5m`,
    `1h`), the threshold in the metric's unit (percentages as `20%`), each channel as
    `[json|slack|feishu|dingtalk=]URL` or a JSON object (`{"url", "format", "secret", ...}`;
    URL may be `env:NAME`). On an edit, `channels` null keeps the stored channels (their URLs
    are secrets: never sent back)."""

    name: str
    metric: str
    threshold: str | float = "0"
    comparison: str = ">"
    scope: str = "all"
    window: str = "5m"
    severity: str = "warning"
    enabled: bool = True
    cooldown: str = "10m"
    remind: bool = True
    channels: list[str] | None = None
    minutes: float = 0.0
    min_samples: int = 1
    description: str = ""


def _rule_from(body: RuleIn, keep: Any = None) -> Any:
    """The rule, built by the CLI's own ``build_rule``; a refusal names the field."""
    from codeswitch.alert_rules import RuleError, build_rule

    threshold = body.threshold if isinstance(body.threshold, str) else f"{body.threshold!r}"
    try:
        rule = build_rule(
            body.name, body.metric, threshold=threshold, comparison=body.comparison,
            scope=body.scope, window=body.window, severity=body.severity, enabled=body.enabled,
            cooldown=body.cooldown, remind=body.remind, channels=body.channels or [],
            minutes=body.minutes, min_samples=body.min_samples, description=body.description,
            flag="")
    except RuleError as exc:
        raise HttpError(400, str(exc), "invalid_rule", exc.field) from None
    if body.channels is None and keep is not None:
        rule = msgspec.structs.replace(rule, channels=keep.channels)
    return rule


def _rule_view(rule: Any) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(rule)
    # webhook URLs and secrets can hold tokens: a channel by its label only
    out["channels"] = [ch.label for ch in rule.channels]
    return out


@endpoint("POST", "/alerts/rules", body=RuleIn)
async def add_rule(c: Call) -> Any:
    """Add an alert rule (`codeswitch alerts add`); running alert workers pick it up at once."""
    from codeswitch.alert_rules import RuleExistsError, put_rule

    rule = _rule_from(c.body)
    try:
        action = await put_rule(c.nc, c.audit(), rule, replace=False)
    except RuleExistsError:
        raise HttpError(409, f"a rule named {rule.name!r} exists: edit it", "conflict",
                        "name") from None
    return {"rule": _rule_view(rule), "action": action}


@endpoint("PUT", "/alerts/rules/{name}", body=RuleIn)
async def edit_rule(c: Call) -> Any:
    """Change an alert rule (`codeswitch alerts add --replace`; its name stays)."""
    from codeswitch.alert_rules import get_rule, put_rule

    name = c.params["name"]
    existing = await get_rule(c.nc, name)
    if existing is None:
        raise HttpError(404, f"no rule named {name!r} (removed meanwhile?)")
    if c.body.name != name:
        raise HttpError(400, "a rule's name cannot change: add a new one", field="name")
    rule = _rule_from(c.body, keep=existing)
    action = await put_rule(c.nc, c.audit(), rule, replace=True)
    return {"rule": _rule_view(rule), "action": action}


@endpoint("DELETE", "/alerts/rules/{name}")
async def remove_rule(c: Call) -> Any:
    """Remove an alert rule (`codeswitch alerts remove`; a firing alert of it resolves)."""
    from codeswitch.alert_rules import remove_rule as remove

    name = c.params["name"]
    if not await remove(c.nc, c.audit(), name):
        raise HttpError(404, f"no rule named {name!r} (removed meanwhile?)")
    return {"removed": name}


@endpoint("POST", "/alerts/rules/{name}/test")
async def rule_test(c: Call) -> Any:
    """Send the rule's test notification through each of its channels (`codeswitch alerts
    test`): what each channel answered."""
    from codeswitch.alert_rules import RuleError, send_test

    name = c.params["name"]
    try:
        results = await send_test(c.nc, c.audit(), name)
    except RuleError as exc:
        raise HttpError(404 if str(exc).startswith("no rule") else 400, str(exc)) from None
    return {"rule": name, "ok": all(ok for _, ok, _ in results),
            "channels": [{"channel": label, "sent": ok, "detail": detail}
                         for label, ok, detail in results]}


class McpIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An MCP server as `codeswitch mcp add` takes it: a stdio server's command line (split as
    a shell would, no shell runs it) with `env` items `KEY=VALUE`, or an http/sse server's
    `url` with `headers` items `Name: value`. Values may hold tokens: they are stored, never
    shown or recorded (only their names)."""

    name: str
    transport: Literal["stdio", "http", "sse"] | None = None
    command: str = ""
    url: str | None = None
    env: list[str] = []
    headers: list[str] = []
    enabled: bool = True
    replace: bool = False


async def _mcp_store(c: Call) -> Any:
    from codeswitch.clients.mcp_store import McpStore
    from runtime import names

    return McpStore(await c.nc.jetstream().key_value(names.MCP_BUCKET), c.nc)


def _mcp_view(m: Any) -> dict[str, Any]:
    return {"name": m.name, "transport": m.transport, "url": m.url, "command": m.command,
            "args": m.args, "enabled": m.enabled, "headers": sorted(m.headers),
            "env": sorted(m.env)}


async def _mcp_op(fn: Any) -> Any:
    from codeswitch.clients._errors import McpError
    from codeswitch.clients.mcp_writes import McpNotFoundError

    try:
        return await fn
    except McpNotFoundError as exc:
        raise HttpError(404, str(exc)) from None
    except McpError as exc:
        text = str(exc)
        status = 409 if "exists" in text else 400
        # McpServer.check's and parse_pairs's messages, by the words after the server's name
        field = next((f for f, words in (
            ("name", ("invalid server name", " exists")),
            ("env", ("--env ",)), ("headers", ("--header ",)),
            ("command", ("needs a command", "command, args and env")),
            ("url", ("needs an http(s) url", "url and headers")),
            ("transport", ("unknown transport",))) if any(w in text for w in words)), None)
        raise HttpError(status, text.replace("--header", "headers").replace("--env", "env")
                        .replace(" (use --replace)", ": tick replace to overwrite it"),
                        "conflict" if status == 409 else "invalid_server", field) from None


@endpoint("GET", "/mcp")
async def mcp(c: Call) -> Any:
    """MCP servers in KV (``cs_mcp``): header and environment names only, never their
    values. Each machine writes the list into its clients with `codeswitch mcp sync`."""
    store = await _mcp_store(c)
    return {"servers": [_mcp_view(m) for m in await store.list()]}


@endpoint("POST", "/mcp/servers", body=McpIn)
async def add_mcp(c: Call) -> Any:
    """Add an MCP server to the list (`codeswitch mcp add`; `replace` overwrites one)."""
    import shlex

    from codeswitch.clients.mcp_writes import add_server, build_server

    b: McpIn = c.body
    try:
        command = shlex.split(b.command) if b.command.strip() else None
    except ValueError as exc:
        raise HttpError(400, f"command: {exc}", "invalid_server", "command") from None

    async def go() -> Any:
        server = build_server(b.name, command=command, url=b.url, transport=b.transport,
                              env=b.env, headers=b.headers, enabled=b.enabled)
        action = await add_server(await _mcp_store(c), c.audit(), server, replace=b.replace)
        return {"server": _mcp_view(server), "action": action}
    return await _mcp_op(go())


def _mcp_switch(verb: str, doc: str) -> None:
    async def action(c: Call) -> Any:
        from codeswitch.clients.mcp_writes import set_enabled

        server = await _mcp_op(set_enabled(await _mcp_store(c), c.audit(), c.params["name"],
                                           verb == "enable"))
        return {"server": _mcp_view(server)}

    action.__name__ = f"{verb}_mcp"
    action.__doc__ = doc
    endpoint("POST", f"/mcp/servers/{{name}}/{verb}")(action)


_mcp_switch("enable", "Switch an MCP server on (`codeswitch mcp enable`).")
_mcp_switch("disable", "Switch an MCP server off (`codeswitch mcp disable`).")


@endpoint("DELETE", "/mcp/servers/{name}")
async def remove_mcp(c: Call) -> Any:
    """Remove an MCP server from the list (`codeswitch mcp remove`)."""
    from codeswitch.clients.mcp_writes import remove_server

    name = c.params["name"]
    await _mcp_op(remove_server(await _mcp_store(c), c.audit(), name))
    return {"removed": name}


# -- skills (on the gateway's machine: ~/.claude/skills, <home>/skills.json) ----------------

class SkillInstallIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Install the skill `name` (`codeswitch skills install`) from the repository `repo`, or
    from `source` (an archive URL, a GitHub owner/repo, or an archive or directory on the
    gateway's machine), which is added as the repository `repo` first (`codeswitch skills
    repos add`; removed again when the install fails). `force` replaces a folder of that name
    that codeswitch did not install."""

    name: str
    repo: str | None = None
    source: str | None = None
    subdir: str = ""
    force: bool = False


class SkillRepoIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    source: str
    subdir: str = ""
    ref: str | None = None


def _skills(c: Call) -> Any:
    from codeswitch.clients.paths import ClientPaths
    from codeswitch.clients.skills import SkillsManager

    home = c.app.host.home
    if home is None:
        raise HttpError(400, "skills are kept in the gateway's data directory, and this "
                        "gateway runs without one")
    return SkillsManager(home, ClientPaths.discover().claude_skills)


async def _skill_op(fn: Any, *args: Any, **kw: Any) -> Any:
    """A SkillsManager call (file and network I/O) in a thread; its errors as 400/404/409."""
    from codeswitch.clients._errors import ClientsError

    try:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kw))
    except ClientsError as exc:
        text = str(exc)
        status = (404 if text.startswith(("no skill", "no repository")) else
                  409 if "already installed" in text or " exists " in text else
                  502 if text.startswith("download failed") else 400)
        raise HttpError(status, text, getattr(exc, "code", "skill_error")) from None
    except OSError as exc:
        raise HttpError(400, f"{type(exc).__name__}: {exc}") from None


@endpoint("GET", "/skills")
async def skills(c: Call) -> Any:
    """Skills installed by codeswitch on the gateway's machine (with the repository and source
    each came from) and the skill repositories (two built in)."""
    mgr = _skills(c)

    def read() -> dict[str, Any]:
        installed = [{"name": name, **info, "present": (mgr.skills_dir / name).is_dir()}
                     for name, info in sorted(mgr.installed().items())]
        repos = [{"name": r.name, "source": r.source, "subdir": r.subdir,
                  "builtin": r.builtin} for r in mgr.repos().values()]
        return {"installed": installed, "repos": repos, "skills_dir": str(mgr.skills_dir)}
    return await _skill_op(read)


@endpoint("GET", "/skills/repos/{name}")
async def skill_repo(c: Call) -> Any:
    """The skills a repository offers (`codeswitch skills list --repo NAME`); a repository
    on the network is downloaded once and cached."""
    mgr = _skills(c)
    name = c.params["name"]

    def scan() -> dict[str, Any]:
        from codeswitch.clients._errors import SkillError

        repos = mgr.repos()
        if name not in repos:
            raise SkillError(f"no repository named {name!r}")
        installed = mgr.installed()
        return {"repo": name, "skills": [
            {"name": s.name, "description": s.description, "error": s.error,
             "folder": str(s.folder), "installed": s.name in installed}
            for s in mgr.scan(repos[name])]}
    return await _skill_op(scan)


@endpoint("POST", "/skills/repos", body=SkillRepoIn)
async def add_skill_repo(c: Call) -> Any:
    """Add a skill repository (`codeswitch skills repos add`)."""
    b: SkillRepoIn = c.body
    mgr = _skills(c)
    if b.name in mgr.repos():
        raise HttpError(409, f"a repository named {b.name!r} exists", "conflict", "name")
    repo = await _skill_op(mgr.add_repo, b.name, b.source.strip(), subdir=b.subdir,
                           ref=b.ref or None)
    await c.audit().record("skill_repo.added", f"skill_repo:{repo.name}", source=repo.source,
                           subdir=repo.subdir or None, ref=b.ref or None)
    return {"repo": {"name": repo.name, "source": repo.source, "subdir": repo.subdir,
                     "builtin": False}}


@endpoint("DELETE", "/skills/repos/{name}")
async def remove_skill_repo(c: Call) -> Any:
    """Remove an added skill repository (`codeswitch skills repos remove`; its installed
    skills stay)."""
    name = c.params["name"]
    await _skill_op(_skills(c).remove_repo, name)
    await c.audit().record("skill_repo.removed", f"skill_repo:{name}")
    return {"removed": name}


@endpoint("POST", "/skills", body=SkillInstallIn)
async def install_skill(c: Call) -> Any:
    """Install a skill into the gateway machine's ~/.claude/skills/NAME/ (`codeswitch skills
    install`), from a repository or from a URL or directory added as one."""
    from codeswitch.clients.skills import REPO_NAME_RE

    b: SkillInstallIn = c.body
    mgr = _skills(c)
    if not b.name.strip():
        raise HttpError(400, "give the skill's name (its folder, as in SKILL.md)", field="name")
    added = None
    if b.source and b.source.strip():
        if not b.repo or not REPO_NAME_RE.match(b.repo):
            raise HttpError(400, "name the repository this source is added as (letters, "
                            "digits, '.', '_' or '-')", field="repo")
        if b.repo in mgr.repos():
            raise HttpError(409, f"a repository named {b.repo!r} exists: pick it instead",
                            "conflict", "repo")
        added = await _skill_op(mgr.add_repo, b.repo, b.source.strip(), subdir=b.subdir)
    try:
        info = await _skill_op(mgr.install, b.name.strip(), repo=b.repo or None, force=b.force)
    except HttpError:
        if added is not None:  # the source gave nothing: it is not kept as a repository
            await _skill_op(mgr.remove_repo, added.name)
        raise
    audit = c.audit()
    if added is not None:
        await audit.record("skill_repo.added", f"skill_repo:{added.name}", source=added.source,
                           subdir=added.subdir or None)
    await audit.record("skill.installed", f"skill:{info.name}", repo=info.repo)
    return {"installed": info.name, "repo": info.repo,
            "path": str(mgr.skills_dir / info.name)}


@endpoint("DELETE", "/skills/{name}")
async def remove_skill(c: Call) -> Any:
    """Remove a skill codeswitch installed (`codeswitch skills remove`)."""
    name = c.params["name"]
    await _skill_op(_skills(c).remove, name)
    await c.audit().record("skill.removed", f"skill:{name}")
    return {"removed": name}


@endpoint("GET", "/events", access="user")
async def events(c: Call) -> Any:
    """Server-sent events as facts are published: ``request`` (one per completed request),
    ``circuit``, ``alert``, ``admin``. A user gets only their own requests."""
    raise HttpError(500, "served by ConsoleApp._events")  # never called: the app streams it
