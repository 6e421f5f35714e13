"""Provider keys at rest: a literal key is stored in NATS KV as ``enc:v1:<Fernet token>``.

The key that encrypts them is ``<home>/secret.key`` (generated on first use, mode 0600), or
``$CODESWITCH_SECRET_KEY`` (a Fernet key: 32 url-safe base64 bytes) for a router on another
machine. ``env:NAME`` references are not secrets themselves and stay as they are; empty values
stay empty. Routers decrypt where they make the upstream call (``resolve_secret``).

Nothing here puts a secret, or part of one, in an exception message or a log line.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

__all__ = ["KEY_ENV", "KEY_FILE", "PREFIX", "SecretKeyError", "decrypt_secret",
           "encrypt_secret", "generate_key", "is_encrypted", "key_file", "load_key",
           "resolve_secret", "reveal",
           "seal", "use_home"]

log = logging.getLogger("codeswitch.secrets")

PREFIX = "enc:v1:"
KEY_ENV = "CODESWITCH_SECRET_KEY"
KEY_FILE = "secret.key"

_lock = threading.Lock()
_home: Path | None = None
_cached: dict[Path, bytes] = {}
_warned: set[str] = set()


class SecretKeyError(RuntimeError):
    """The secret key is missing or wrong, or a stored value cannot be decrypted."""


def is_encrypted(value: str) -> bool:
    return value.startswith(PREFIX)


def generate_key() -> bytes:
    """A Fernet key (what ``Fernet.generate_key`` makes: 32 random bytes, url-safe base64)."""
    return base64.urlsafe_b64encode(os.urandom(32))


def key_file(home: Path) -> Path:
    return home / KEY_FILE


def use_home(home: Path | None) -> None:
    """The data directory whose key ``load_key()`` (no argument) reads: the worker's --home."""
    global _home
    _home = Path(home) if home is not None else None


def _default_home() -> Path:
    if _home is not None:
        return _home
    from runtime.home import home_dir

    return home_dir()


def _valid(key: bytes) -> bytes:
    # as Fernet(key) checks it, without importing cryptography (10 MB of RSS in every
    # process; only one that decrypts or encrypts pays for it)
    try:
        ok = len(base64.urlsafe_b64decode(key)) == 32
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise SecretKeyError("the secret key is not a valid Fernet key (32 url-safe base64 "
                             "bytes)") from None
    return key


def load_key(home: Path | None = None, *, create: bool = False) -> bytes | None:
    """``$CODESWITCH_SECRET_KEY``, else ``<home>/secret.key`` (created 0600 with ``create``).
    None when there is none and ``create`` is false."""
    env = os.environ.get(KEY_ENV, "").strip()
    if env:
        return _valid(env.encode())
    path = key_file(home if home is not None else _default_home())
    with _lock:
        if path in _cached:
            return _cached[path]
        try:
            key = path.read_bytes().strip()
        except FileNotFoundError:
            if not create:
                return None
            key = _create(path)
        _cached[path] = _valid(key)
        return key


def _create(path: Path) -> bytes:
    key = generate_key()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_bytes().strip()
    try:
        os.write(fd, key + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


@functools.lru_cache(maxsize=8)
def _fernet(key: bytes) -> Fernet:
    from cryptography.fernet import Fernet

    return Fernet(key)


def encrypt_secret(value: str, key: bytes) -> str:
    """``enc:v1:<token>`` for a literal; empty, ``env:NAME`` and encrypted values unchanged."""
    if not value or value.startswith("env:") or is_encrypted(value):
        return value
    return PREFIX + _fernet(key).encrypt(value.encode()).decode("ascii")


@functools.lru_cache(maxsize=256)
def _decrypt(value: str, key: bytes) -> str:
    from cryptography.fernet import InvalidToken

    try:
        return _fernet(key).decrypt(value[len(PREFIX):].encode("ascii")).decode()
    except (InvalidToken, ValueError, UnicodeError):
        raise SecretKeyError("a stored secret cannot be decrypted with this secret key (was "
                             "it encrypted with another data directory's secret.key?)") \
            from None


def decrypt_secret(value: str, key: bytes) -> str:
    """The literal behind ``enc:v1:...``; other values unchanged. SecretKeyError when the key
    does not fit."""
    if not is_encrypted(value):
        return value
    return _decrypt(value, key)


def seal(value: str, home: Path | None = None) -> str:
    """Encrypt a literal with the data directory's key (created when missing)."""
    if not value or value.startswith("env:") or is_encrypted(value):
        return value
    key = load_key(home, create=True)
    assert key is not None
    return encrypt_secret(value, key)


def reveal(value: str, home: Path | None = None) -> str:
    """Decrypt with the data directory's key (or $CODESWITCH_SECRET_KEY). SecretKeyError when
    there is no key or it does not fit."""
    if not is_encrypted(value):
        return value
    key = load_key(home)
    if key is None:
        raise SecretKeyError(f"a stored secret is encrypted but there is no secret key: set "
                             f"{KEY_ENV} or run with the data directory (--home) that holds "
                             f"{KEY_FILE}")
    return decrypt_secret(value, key)


def reveal_or_empty(value: str) -> str:
    """For the request path: the literal, or "" (logged once per value) when it cannot be
    decrypted here; the upstream then refuses the call, which the client sees."""
    try:
        return reveal(value)
    except SecretKeyError as exc:
        marker = value[-12:]
        if marker not in _warned:
            _warned.add(marker)
            log.error("%s", exc)
        return ""


_revealed: dict[str, str] = {}


def resolve_secret(value: str) -> str:
    """Resolve "env:NAME" to the variable's value ("" when unset) and "enc:v1:..." to the
    literal it encrypts (with the data directory's secret.key or $CODESWITCH_SECRET_KEY; ""
    when it cannot be decrypted here, logged); literals pass through."""
    if value.startswith("env:"):
        return os.environ.get(value[4:], "")
    if value.startswith(PREFIX):
        known = _revealed.get(value)
        if known is not None:  # the hot path: once per upstream call (it was 5 % of the
            return known       # router's CPU to find and read the key each time)
        plain = reveal_or_empty(value)
        if plain and len(_revealed) < 1024:
            _revealed[value] = plain
        return plain
    return value
