"""Where a running gateway lives: the data directory and the run file ``codeswitch up`` writes,
so that the other commands (provider, stats, tail, mcp, ...) find its NATS without flags, and
the credentials to connect to it.

Credentials never travel in a URL on a command line. ``bus.connect`` asks
``nats_auth_options(url)`` for them when the caller passed none:

1. credentials registered for that URL in this process (``use_nats_credentials``; the CLI
   registers the running gateway's when ``nats_url_for`` resolves to its NATS);
2. ``$CODESWITCH_NATS_CREDS``: a NATS ``.creds`` file (an operator's NATS);
3. ``$CODESWITCH_NATS_AUTH``: the embedded server's ``credentials.json`` (the supervisor sets
   it for the parts it starts).

A URL carrying ``user:password@`` is used as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["AUTH_ENV", "CREDS_ENV", "DEFAULT_NATS_URL", "home_dir", "masked_url",
           "nats_auth_options",
           "nats_env_lines", "nats_url_for", "read_run_file", "run_file", "url_has_auth",
           "use_nats_credentials"]

DEFAULT_NATS_URL = "nats://127.0.0.1:18122"
# a NATS .creds file (JWT + nkey seed) for an operator's NATS: nats-py's user_credentials
CREDS_ENV = "CODESWITCH_NATS_CREDS"
# the embedded nats-server's credentials.json ({"user", "password"})
AUTH_ENV = "CODESWITCH_NATS_AUTH"

_registered: dict[str, dict[str, str]] = {}


def home_dir(flag: str | Path | None = None) -> Path:
    """--home, else $CODESWITCH_HOME, else ~/.code-switch."""
    raw = flag or os.environ.get("CODESWITCH_HOME") or Path.home() / ".code-switch"
    return Path(raw).expanduser()


def run_file(home: Path) -> Path:
    return home / "run.json"


def read_run_file(home: Path) -> dict[str, object] | None:
    try:
        data = json.loads(run_file(home).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def url_has_auth(url: str) -> bool:
    try:
        return any("@" in urlsplit(u.strip()).netloc for u in url.split(","))
    except ValueError:
        return False


def masked_url(url: str) -> str:
    """nats://user:pass@host -> nats://user:***@host: for messages and banners."""
    out = []
    for one in url.split(","):
        scheme, sep, rest = one.partition("://")
        creds, at, host = rest.rpartition("@")
        out.append(f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}" if at else one)
    return ",".join(out)


def use_nats_credentials(url: str, *, auth_file: str | Path | None = None,
                         creds_file: str | Path | None = None) -> None:
    """Connections of this process to ``url`` use these credentials (``auth_file``: a JSON
    ``{"user", "password"}``, read at connect time; ``creds_file``: a NATS .creds file)."""
    entry: dict[str, str] = {}
    if auth_file:
        entry["auth_file"] = str(auth_file)
    if creds_file:
        entry["creds_file"] = str(creds_file)
    if entry:
        _registered[url] = entry
    else:
        _registered.pop(url, None)


def _read_auth(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
        return {"user": str(data["user"]), "password": str(data["password"])}
    except (OSError, ValueError, KeyError, TypeError):
        # no secret in the message: the path only
        raise ConnectionError(f"cannot read the NATS credentials file {path}") from None


def nats_auth_options(url: str) -> dict[str, Any]:
    """nats-py connect options with the credentials for ``url`` ({} when none apply)."""
    if url_has_auth(url):
        return {}
    entry = _registered.get(url)
    if entry is None:
        entry = {}
        if os.environ.get(CREDS_ENV):
            entry["creds_file"] = os.environ[CREDS_ENV]
        elif os.environ.get(AUTH_ENV):
            entry["auth_file"] = os.environ[AUTH_ENV]
    if entry.get("creds_file"):
        return {"user_credentials": entry["creds_file"]}
    if entry.get("auth_file"):
        return _read_auth(entry["auth_file"])
    return {}


def nats_url_for(home: Path | None = None, override: str | None = None) -> str:
    """--nats-url, else $CODESWITCH_NATS_URL, else the running gateway's, else the default.
    When the result is the running gateway's NATS, its credentials (named in the run file)
    are registered for it, so ``bus.connect`` uses them."""
    info = read_run_file(home_dir(home))
    url = override or os.environ.get("CODESWITCH_NATS_URL")
    if not url and info and isinstance(info.get("nats_url"), str):
        url = str(info["nats_url"])
    url = url or DEFAULT_NATS_URL
    if info and info.get("nats_url") == url and url not in _registered:
        auth, creds = info.get("nats_credentials"), info.get("nats_creds")
        if isinstance(auth, str) or isinstance(creds, str):
            use_nats_credentials(url, auth_file=auth if isinstance(auth, str) else None,
                                 creds_file=creds if isinstance(creds, str) else None)
    return url


def nats_env_lines(url: str) -> list[str]:
    """``export NATS_URL=...`` (credentials inside) and ``NATS_CREDS`` for the nats CLI:
    ``eval "$(codeswitch nats env)"``. Environment variables are visible to this user only,
    unlike a password on a command line."""
    import shlex

    opts = nats_auth_options(url)
    lines = []
    if "user" in opts:
        scheme, _, rest = url.partition("://")
        from urllib.parse import quote

        url = (f"{scheme}://{quote(opts['user'], safe='')}:"
               f"{quote(opts['password'], safe='')}@{rest}")
    lines.append(f"export NATS_URL={shlex.quote(url)}")
    if "user_credentials" in opts:
        lines.append(f"export NATS_CREDS={shlex.quote(str(opts['user_credentials']))}")
    return lines
