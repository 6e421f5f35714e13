"""Where ``codeswitch connect`` points the clients, and with which key.

The URL: ``--base-url``, else the running gateway's (``<home>/run.json``, written by
``codeswitch up``: the port it really listens on), else the default with a note. The key:
``--key``, else whatever the gateway accepts: any key while it has no users and no
``[gateway] api_keys`` (the placeholder ``codeswitch-local``); once it has users, the person's
own key — a new one for the gateway user named like the OS user (``connect-<host>``), shown
once — or a refusal that says what to do; with ``api_keys`` (stored as hashes: nothing to copy)
a refusal asking for ``--key``.
"""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from typing import Any, NamedTuple

from runtime.home import read_run_file

__all__ = ["KeyChoice", "KeyRequired", "choose_key", "gateway_url"]


class KeyRequired(Exception):
    """The gateway needs a key this command cannot make: the message says what to do."""


class KeyChoice(NamedTuple):
    key: str | None  # None: the placeholder (the gateway accepts any key)
    note: str | None  # what the user should know


def gateway_url(home: Path, given: str | None, default: str) -> tuple[str, str | None]:
    """(URL, note): ``given``, else the running gateway's, else ``default`` with a note."""
    if given:
        return given.rstrip("/"), None
    info = read_run_file(home) or {}
    url = info.get("edge_url")
    if isinstance(url, str) and url:
        return url, None
    return default, (f"no running gateway in {home} (no run.json): using {default}; start "
                     "it with `codeswitch up` first, or pass --base-url")


async def choose_key(nc: Any, audit: Any, *, os_user: str | None = None,
                     host: str | None = None) -> KeyChoice:
    """The key to write when none was given (see the module's doc)."""
    from codeswitch import users as u
    from codeswitch.admin import get_setting

    d = await u.load(nc)
    if d.users:
        me = os_user or getpass.getuser()
        owner = next((x for x in d.users.values() if x.name == me), None)
        if owner is None:
            raise KeyRequired(
                f"this gateway has users, so every client needs one of their keys, and there "
                f"is no user named {me!r}. Pass your key with --key (an admin creates one with "
                f"`codeswitch key create --user NAME`), or create the user {me!r} first "
                "(`codeswitch user add`)")
        if not owner.enabled:
            raise KeyRequired(f"user {me} is disabled on this gateway: ask its admin")
        wanted = f"connect-{host or socket.gethostname()}"[:64]
        taken = any(k.user == owner.id and k.name == wanted for k in d.keys.values())
        key, secret = await u.create_key(nc, audit, owner.id, name=None if taken else wanted)
        return KeyChoice(secret, f"created key {me}/{key.name} ({key.prefix}…) for the clients; "
                                 "revoke it with `codeswitch key revoke`")
    settings = await get_setting(nc, "gateway")
    if settings.key_hashes:
        raise KeyRequired(
            "this gateway requires one of its [gateway] api_keys (stored as hashes, so they "
            "cannot be copied from it): pass yours with --key")
    return KeyChoice(None, None)
