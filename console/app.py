"""The console as an ASGI app the edge hands ``/console…`` and ``/admin/api/…`` to (loaded by
module path on the first such request: an edge nobody opens the console of never imports it,
and the LLM routes never reach it). It talks only to NATS: the edge's connection, its watched
copy of the users and keys, ledger queries, KV, and the facts.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import json
import logging
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Protocol

import msgspec
from nats.aio.client import Client as NATS

from console import auth
from console.live import Hub
from console.web import HttpError, Response, resolve
from edge.auth import Directory, client_key
from schemas.errors import GatewayError

__all__ = ["Call", "ConsoleApp", "build"]

log = logging.getLogger("codeswitch.console")

STATIC = Path(__file__).parent / "static"
MAX_BODY = 256 * 1024
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".md": "text/plain",
          ".png": "image/png", ".ico": "image/x-icon"}
_SECURITY = [
    ("content-security-policy", "default-src 'self'; img-src 'self' data:; style-src 'self' "
     "'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
     "form-action 'self'"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
]
_enc = msgspec.json.Encoder()


class Host(Protocol):
    """What the console needs of the edge that serves it."""

    nc: NATS | None
    directory: Directory
    home: Path | None
    stopping: bool  # the server is shutting down: live streams end


@dataclass
class Call:
    """One API call as a handler sees it."""

    app: ConsoleApp
    p: auth.Principal
    params: dict[str, str]
    query: Any
    body: Any
    headers: dict[str, str]
    scheme: str

    @property
    def nc(self) -> NATS:
        nc = self.app.host.nc
        if nc is None or not nc.is_connected:
            raise HttpError(503, "the gateway is not connected to NATS (reconnecting)")
        return nc

    def audit(self) -> Any:
        from codeswitch.audit import AdminLog

        return AdminLog(self.nc, actor=self.p.actor, home=self.app.host.home)

    def only_own(self) -> str | None:
        """The user id a non-admin's reads are limited to (None for an admin)."""
        return None if self.p.admin else (self.p.user_id or "-")


def _local_actor() -> str:
    try:
        return f"local:{getpass.getuser()}"
    except Exception:
        return "local:unknown"


def _session_key(home: Path | None) -> bytes:
    """Under `codeswitch up`: derived from the data directory's secret key (sessions survive a
    restart of the gateway); otherwise random per process."""
    if home is not None:
        try:
            from runtime.secrets import load_key

            key = load_key(home, create=True)
            if key:
                return key
        except Exception as exc:  # unreadable key file: sessions end with the process
            log.warning("console sessions: no key in %s (%s); sessions last until restart",
                        home, exc)
    return secrets.token_bytes(32)


class ConsoleApp:
    def __init__(self, host: Host) -> None:
        from console import api  # registers the endpoints

        self.host = host
        self.version = api.VERSION
        self.keys = auth.SessionKeys(_session_key(host.home))
        self.local_actor = _local_actor()
        self._hub: Hub | None = None
        self._streams: set[asyncio.Task[Any]] = set()
        self._static = {f"/console/static/{p.relative_to(STATIC).as_posix()}": p
                        for p in STATIC.rglob("*") if p.is_file()}
        self._etags: dict[str, tuple[bytes, str]] = {}
        self.closing = asyncio.Event()

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            nc = self.host.nc
            if nc is None:
                raise HttpError(503, "not connected to NATS")
            self._hub = Hub(nc)
        return self._hub

    async def aclose(self) -> None:
        self.closing.set()
        if self._hub is not None:
            await self._hub.aclose()

    # -- ASGI -------------------------------------------------------------------------------
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path: str = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            if path.startswith("/admin/api"):
                await self._api(scope, receive, send, headers)
            elif scope["method"] not in ("GET", "HEAD"):
                raise HttpError(405, "the console's pages are read with GET")
            elif path in ("/console", "/console/", "/console/index.html"):
                await self._file(send, headers, STATIC / "index.html", "/console/index.html")
            elif path in self._static:
                # asked for with ?v=<its hash> (the page's links): cached for good, a new
                # version has a new URL; without it: revalidated each time
                versioned = scope.get("query_string", b"").startswith(b"v=")
                await self._file(send, headers, self._static[path], path, versioned)
            else:
                raise HttpError(404, f"no such page: {path}")
        except HttpError as exc:
            out = {"error": exc.message, "code": exc.code}
            if exc.field:
                out["field"] = exc.field
            await self._json(send, exc.status, out)
        except Exception as exc:  # never a dropped connection: a 500 with what it was
            log.exception("console %s %s", scope.get("method"), path)
            with contextlib.suppress(Exception):
                await self._json(send, 500, {"error": f"internal error ({type(exc).__name__})",
                                             "code": "internal"})

    async def _send(self, send: Any, status: int, body: bytes, ctype: str,
                    extra: list[tuple[str, str]] | None = None) -> None:
        hdrs = [("content-type", ctype), ("content-length", str(len(body))),
                ("cache-control", "no-store"), *_SECURITY, *(extra or [])]
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode("latin-1")) for k, v in hdrs]})
        await send({"type": "http.response.body", "body": body})

    async def _json(self, send: Any, status: int, body: Any,
                    extra: list[tuple[str, str]] | None = None) -> None:
        await self._send(send, status, _enc.encode(body), "application/json", extra)

    def _load(self, key: str, file: Path) -> tuple[bytes, str]:
        cached = self._etags.get(key)
        if cached is None:
            data = file.read_bytes()
            if key == "/console/index.html":  # its links carry their files' versions
                for url, static in self._static.items():
                    version = self._load(url, static)[1].strip('"')[:12]
                    data = data.replace(f'"{url}"'.encode(), f'"{url}?v={version}"'.encode())
            cached = (data, '"' + hashlib.sha256(data).hexdigest()[:20] + '"')
            self._etags[key] = cached
        return cached

    async def _file(self, send: Any, headers: dict[str, str], file: Path, key: str,
                    versioned: bool = False) -> None:
        data, etag = self._load(key, file)
        ctype = _TYPES.get(file.suffix, "application/octet-stream")
        extra = [("etag", etag)]
        if headers.get("if-none-match") == etag:
            await send({"type": "http.response.start", "status": 304, "headers": [
                (b"etag", etag.encode()), (b"cache-control", b"no-cache")]})
            await send({"type": "http.response.body", "body": b""})
            return
        cache = "public, max-age=31536000, immutable" if versioned else "no-cache"
        hdrs = [("content-type", ctype), ("content-length", str(len(data))),
                ("cache-control", cache), *_SECURITY, *extra]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(k.encode(), v.encode("latin-1")) for k, v in hdrs]})
        await send({"type": "http.response.body", "body": data})

    # -- the API ----------------------------------------------------------------------------
    def principal(self, scope: Any, headers: dict[str, str]) -> auth.Principal | None:
        """Who is asking: a bearer key, the session cookie, or the local person in open mode."""
        now = time.time()
        directory = self.host.directory
        client = (scope.get("client") or (None,))[0]
        open_now = auth.open_mode(directory, client, headers.get("host"))
        if "authorization" in headers and directory.users:
            key = client_key({"authorization": headers["authorization"]}, "")
            if key:
                try:
                    return auth.principal_from_key(directory, key, now)
                except GatewayError as exc:
                    raise HttpError(401 if exc.status == 401 else 403, exc.message) from None
        cookie = SimpleCookie()
        with contextlib.suppress(Exception):
            cookie.load(headers.get("cookie", ""))
        if auth.COOKIE in cookie:
            found = auth.principal_from_cookie(self.keys, directory,
                                               cookie[auth.COOKIE].value, now, open_now)
            if found is not None:
                return found
        if open_now:
            return auth.Principal(self.local_actor, self.local_actor, "admin", "open")
        return None

    def cookie_header(self, p: auth.Principal | None, scheme: str) -> tuple[str, str]:
        secure = "; Secure" if scheme == "https" else ""
        if p is None:
            return ("set-cookie", f"{auth.COOKIE}=; Path=/; Max-Age=0; HttpOnly; "
                    f"SameSite=Strict{secure}")
        age = max(0, int(p.expires - time.time()))
        return ("set-cookie", f"{auth.COOKIE}={self.keys.cookie(p)}; Path=/; Max-Age={age}; "
                f"HttpOnly; SameSite=Strict{secure}")

    async def _api(self, scope: Any, receive: Any, send: Any, headers: dict[str, str]) -> None:
        method = scope["method"]
        path = scope["path"].rstrip("/") or "/"
        # a write's body is read before anything is answered: a refusal sent while its body
        # is still arriving makes the server close the connection, and a client that sends its
        # next request on it (keep-alive) gets no answer at all
        data = await _read(receive) if method in auth.WRITE_METHODS else b""
        ep, params, exists = resolve(method, path)
        if ep is None:
            raise HttpError(405 if exists else 404,
                            f"{method} {path}: " + ("method not allowed" if exists
                                                    else "no such endpoint"))
        scheme = scope.get("scheme", "http")
        p = self.principal(scope, headers)
        if method in auth.WRITE_METHODS and not auth.check_origin(headers, scheme):
            raise HttpError(403, "cross-origin write refused (Origin does not match)", "origin")
        if ep.access != "public":
            if p is None:
                raise HttpError(401, "sign in first (POST /admin/api/signin, or an admin key "
                                "as Authorization: Bearer)")
            if ep.access == "admin" and not p.admin:
                raise HttpError(403, "admins only: you can see your own usage, sessions and "
                                "keys", "admin_only")
            # cookie sessions and open mode: writes carry the CSRF token; a bearer key (no
            # ambient credential) needs none
            bearer = p.mode == "key" and not p.via_cookie
            if method in auth.WRITE_METHODS and not bearer and (
                    not p.via_cookie
                    or not self.keys.check_csrf(p.nonce, headers.get("x-csrf-token"))):
                raise HttpError(403, "missing or wrong CSRF token (X-CSRF-Token from "
                                "GET /admin/api/me)", "csrf")
        query: Any = None
        if ep.query is not None:
            raw = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            try:
                query = msgspec.convert(raw, ep.query, strict=False)
            except msgspec.ValidationError as exc:
                raise HttpError(400, f"query: {exc}") from None
        body: Any = None
        if ep.body is not None:
            try:
                body = msgspec.json.decode(data or b"{}", type=ep.body)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                raise HttpError(400, str(exc)) from None
        if ep.path.endswith("/events"):
            assert p is not None
            await self._events(send, receive, p)
            return
        call = Call(self, p or auth.Principal("", "", "none", "open"), params, query, body,
                    headers, scheme)
        try:
            result = await ep.handler(call)
        except HttpError:
            raise
        except GatewayError as exc:
            raise HttpError(exc.status if exc.status < 500 else 400, exc.message) from None
        except (ValueError, msgspec.ValidationError) as exc:
            raise HttpError(400, str(exc)) from None
        except Exception as exc:
            from codeswitch.reads import LedgerError, LedgerUnavailableError

            if isinstance(exc, LedgerUnavailableError):
                raise HttpError(503, str(exc), "ledger_unavailable") from None
            if isinstance(exc, LedgerError):
                raise HttpError(400, str(exc)) from None
            log.exception("console %s %s", method, path)
            raise HttpError(500, f"internal error ({type(exc).__name__})", "internal") from None
        if isinstance(result, Response):
            await self._json(send, result.status, result.body, result.headers)
        else:
            await self._json(send, 200, result)

    async def _events(self, send: Any, receive: Any, p: auth.Principal) -> None:
        """Server-sent events: ``request``, ``circuit``, ``alert``, ``admin`` as they happen."""
        listener = await self.hub.listen(None if p.admin else (p.user_id or "-"))
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        watcher = asyncio.create_task(watch())
        hdrs = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store"),
                (b"x-accel-buffering", b"no")]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": hdrs})
            await send({"type": "http.response.body", "body": b"retry: 1000\n: hello\n\n",
                        "more_body": True})
            idle = 0
            while not gone.is_set() and not self.closing.is_set() and not self.host.stopping:
                try:
                    kind, data = await asyncio.wait_for(listener.queue.get(), 1)
                except TimeoutError:
                    idle += 1
                    if idle >= 15:  # a comment now and then keeps proxies from closing it
                        idle = 0
                        await send({"type": "http.response.body", "body": b": ping\n\n",
                                    "more_body": True})
                    continue
                idle = 0
                chunk = f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b""})
        except OSError:
            pass
        finally:
            watcher.cancel()
            self.hub.leave(listener)


async def _read(receive: Any) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise HttpError(413, "body too large")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def build(host: Host) -> ConsoleApp:
    """What the edge calls (by module path, ``console.app:build``)."""
    return ConsoleApp(host)
