"""Who is asking the console, and whether a write may go through. Pure: no I/O (the caller
passes the edge's ``Directory`` of users and keys, the clock and the request's headers).

* **Session cookie** ``cs_console``: ``<payload>.<HMAC-SHA256>`` (base64url), HttpOnly,
  SameSite=Strict, 8 hours. The payload names the user (or ``local:<OS user>`` in open mode),
  how they signed in (``key`` / ``password`` / ``open``), a random nonce and the expiry. It is
  checked against the live directory on every request: a disabled or demoted user, a revoked
  key or a changed password ends the session at once (the payload carries the key id, or a
  fingerprint of the password hash). Sign-out forgets the nonce (per edge process; see
  ``docs/console.md``).
* **CSRF**: every write (POST, PUT, PATCH, DELETE) authenticated by the cookie must carry
  ``X-CSRF-Token`` = HMAC(nonce), which only a page that read ``/admin/api/me`` knows, and an
  ``Origin`` (when the browser sends one) equal to the console's own. A bearer key in
  ``Authorization`` (scripts) is no ambient credential, so it needs no token.
* **Open mode**: no users defined and a loopback client (and a loopback ``Host``, against DNS
  rebinding): the local person is the admin, as the gateway lets them through; the cookie and
  the CSRF and Origin checks still apply to writes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from typing import Any, Literal, NamedTuple

import msgspec

from edge.auth import AuthError, Directory, hash_key
from schemas.errors import GatewayError
from schemas.users import User, verify_password

__all__ = ["COOKIE", "SESSION_S", "Principal", "SessionKeys", "check_origin", "is_loopback",
           "principal_from_cookie", "principal_from_key", "sign_in_key", "sign_in_password"]

COOKIE = "cs_console"
SESSION_S = 8 * 3600
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Mode = Literal["open", "key", "password"]


class Principal(NamedTuple):
    actor: str  # what admin facts record: the user's id, or local:<OS user>
    name: str  # for display
    role: str  # admin | user
    mode: Mode
    user_id: str | None = None
    key_id: str | None = None
    nonce: str = ""  # the cookie session's (empty for a bearer key)
    expires: float = 0.0
    via_cookie: bool = False
    fingerprint: str = ""  # of the password hash (mode password)

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class _Payload(msgspec.Struct, frozen=True):
    m: str  # mode
    a: str  # actor (user id or local:<OS user>)
    n: str  # nonce
    e: float  # expires (unix seconds)
    k: str = ""  # key id (mode key)
    p: str = ""  # fingerprint of the password hash (mode password)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _fingerprint(stored: str) -> str:
    return hashlib.sha256(stored.encode()).hexdigest()[:16]


class SessionKeys:
    """The HMAC key of this console's cookies and CSRF tokens, and the signed-out nonces."""

    def __init__(self, key: bytes) -> None:
        self._key = hashlib.sha256(b"codeswitch-console-v1\0" + key).digest()
        self._signed_out: dict[str, float] = {}  # nonce -> its expiry

    def _mac(self, what: bytes) -> str:
        return _b64(hmac.new(self._key, what, hashlib.sha256).digest())

    def cookie(self, p: Principal) -> str:
        payload = _b64(msgspec.json.encode(_Payload(
            m=p.mode, a=p.actor, n=p.nonce, e=p.expires, k=p.key_id or "", p=p.fingerprint)))
        return f"{payload}.{self._mac(payload.encode())}"

    def csrf(self, nonce: str) -> str:
        return self._mac(b"csrf\0" + nonce.encode())

    def check_csrf(self, nonce: str, token: str | None) -> bool:
        return bool(token) and bool(nonce) and hmac.compare_digest(self.csrf(nonce), token or "")

    def sign_out(self, p: Principal, now: float) -> None:
        self._signed_out = {n: e for n, e in self._signed_out.items() if e > now}
        if p.nonce:
            self._signed_out[p.nonce] = p.expires

    def read(self, value: str, now: float) -> _Payload | None:
        payload, _, mac = value.partition(".")
        if not payload or not mac or not hmac.compare_digest(self._mac(payload.encode()), mac):
            return None
        try:
            got = msgspec.json.decode(_unb64(payload), type=_Payload)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            return None
        if got.e <= now or got.n in self._signed_out:
            return None
        return got

    def new_session(self, *, actor: str, name: str, role: str, mode: Mode, now: float,
                    user: User | None = None, key_id: str | None = None) -> Principal:
        return Principal(actor, name, role, mode, user.id if user else None, key_id,
                         secrets.token_urlsafe(16), now + SESSION_S, True,
                         _fingerprint(user.password) if user and mode == "password" else "")


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def loopback_host(host_header: str | None) -> bool:
    """The ``Host`` the browser asked for is this machine (not a rebinding attacker's name)."""
    if not host_header:
        return False
    name = _host_name(host_header)
    return name in ("localhost", "localhost.") or is_loopback(name)


def open_mode(directory: Directory, client: str | None, host_header: str | None) -> bool:
    return not directory.users and is_loopback(client) and loopback_host(host_header)


def check_origin(headers: dict[str, str], scheme: str) -> bool:
    """A browser's ``Origin`` (or, without one, ``Sec-Fetch-Site``) says the request comes from
    the console's own pages. Scripts send neither and pass."""
    origin = headers.get("origin")
    host = headers.get("host", "")
    if origin is not None:
        return origin in (f"{scheme}://{host}", f"http://{host}", f"https://{host}") \
            if scheme == "https" else origin == f"http://{host}"
    site = headers.get("sec-fetch-site")
    return site in (None, "same-origin", "none")


def principal_from_key(directory: Directory, key: str, now: float) -> Principal:
    """A bearer key (scripts) or the key given at sign-in: its user, if the key may be used."""
    p = directory.check(hash_key(key), now)  # AuthError / AccessDenied (GatewayError)
    user = directory.users[p.user_id or ""]
    return Principal(user.id, user.name, user.role, "key", user.id, p.key_id)


def principal_from_cookie(keys: SessionKeys, directory: Directory, value: str, now: float,
                          open_now: bool) -> Principal | None:
    """The session the cookie names, if it is still good against the live directory."""
    got = keys.read(value, now)
    if got is None:
        return None
    if got.m == "open":
        if not open_now:
            return None
        return Principal(got.a, got.a, "admin", "open", None, None, got.n, got.e, True)
    user = directory.users.get(got.a)
    if user is None or not user.enabled:
        return None
    if got.m == "key":
        key = directory.keys.get(got.k)
        if key is None or key.user != user.id or key.state(now) != "active":
            return None
        return Principal(user.id, user.name, user.role, "key", user.id, key.id, got.n, got.e,
                         True)
    if got.m == "password":
        if not user.password or not hmac.compare_digest(_fingerprint(user.password), got.p):
            return None
        return Principal(user.id, user.name, user.role, "password", user.id, None, got.n,
                         got.e, True, got.p)
    return None


def sign_in_key(keys: SessionKeys, directory: Directory, key: str, now: float) -> Principal:
    p = principal_from_key(directory, key, now)
    return keys.new_session(actor=p.actor, name=p.name, role=p.role, mode="key", now=now,
                            user=directory.users[p.actor], key_id=p.key_id)


def sign_in_password(keys: SessionKeys, directory: Directory, name: str, password: str,
                     now: float) -> Principal:
    user = next((u for u in directory.users.values() if u.name == name), None)
    # the same answer for an unknown name, no password set and a wrong one; a check is
    # still made for an unknown name so its time does not tell which it was
    ok = verify_password(password, user.password if user and user.password else _DUMMY)
    if user is None or not user.password or not ok:
        raise AuthError("wrong user name or password")
    if not user.enabled:
        raise AuthError(f"user {user.name} is disabled on this gateway")
    return keys.new_session(actor=user.id, name=user.name, role=user.role, mode="password",
                            now=now, user=user)


# a hash of a random password: verified against when the user is unknown (same cost)
_DUMMY = "scrypt$32768$8$1$" + "00" * 16 + "$" + "00" * 32


def now() -> float:
    return time.time()


def describe(exc: GatewayError) -> str:
    return exc.message if hasattr(exc, "message") else str(exc)


def as_dict(p: Principal, csrf: str | None) -> dict[str, Any]:
    return {"actor": p.actor, "name": p.name, "role": p.role, "mode": p.mode,
            "user_id": p.user_id, "key_id": p.key_id, "expires": p.expires or None,
            "csrf": csrf}
