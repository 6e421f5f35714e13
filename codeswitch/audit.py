"""Admin facts from the CLI and ``codeswitch up``: every change an administrator makes (users,
keys, limits, providers, settings, alert rules, MCP servers, skills, the body log) is published
as an ``AdminAction`` on ``admin.<action>`` right after the change is written, with the actor
and the time. The ledger keeps them in its audit table (``codeswitch audit``).

Publishing is awaited (a JetStream ack, ``Nats-Msg-Id`` = the fact's id, so a retry is
de-duplicated): the command returns once its fact is on the event log. When the publish fails
(NATS went away between the write and the fact), the fact is written to the data directory's
write-ahead outbox (``<home>/outbox/cli.*.wal``, the format of ``runtime.facts``) and the next
gateway part that starts on that directory publishes it; the change itself is already in KV.

The actor is ``local:<OS user>`` for the CLI and ``codeswitch up``, the signed-in user's id
(or ``local:<OS user>`` in open mode) for the console (``console/``).
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from runtime.facts import WriteAhead
from schemas.events import AdminAction, encode_event, new_id
from schemas.subjects import admin_subject

__all__ = ["AdminLog", "local_actor", "record_detached"]

log = logging.getLogger("codeswitch.audit")


def local_actor() -> str:
    """``local:<the OS user running this command>``."""
    try:
        who = getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        who = "unknown"
    return f"local:{who}"


def _subject(action: str) -> str:
    thing, _, verb = action.partition(".")
    return admin_subject(thing, verb)


def _fact(action: str, target: str, details: dict[str, Any], actor: str) -> AdminAction:
    return AdminAction(id=new_id(), ts=time.time(), actor=actor, action=action, target=target,
                       details={k: v for k, v in details.items() if v is not None})


def _keep(home: Path | None, facts: list[AdminAction]) -> None:
    """Facts that could not be published: into the outbox for the next part to publish."""
    if home is None or not facts:
        for fact in facts:
            log.error("admin fact %s %s not published and not kept (no data directory)",
                      fact.action, fact.target)
        return
    wal = WriteAhead(home / "outbox", "cli")
    try:
        for fact in facts:
            wal.fact(_subject(fact.action), fact.id, encode_event(fact), None)
    finally:
        wal.close(clean=False)  # left for adoption: the next part publishes them


class AdminLog:
    """The admin facts of one command. ``await record(...)`` after each change."""

    def __init__(self, nc: NATS | None, *, actor: str | None = None,
                 home: Path | None = None) -> None:
        self.nc = nc
        self.actor = actor or local_actor()
        self.home = home
        self.recorded: list[AdminAction] = []

    async def record(self, action: str, target: str, **details: Any) -> AdminAction:
        fact = _fact(action, target, details, self.actor)
        self.recorded.append(fact)
        try:
            if self.nc is None or not self.nc.is_connected:
                raise ConnectionError("not connected")
            await self.nc.jetstream().publish(
                _subject(action), encode_event(fact), headers={"Nats-Msg-Id": fact.id},
                timeout=5.0)
        except Exception as exc:
            log.warning("admin fact %s %s kept for later: %s", action, target, exc)
            _keep(self.home, [fact])
        return fact


def record_detached(home: Path | None, nats_url: str, action: str, target: str,
                    **details: Any) -> None:
    """For commands that change something without NATS (skills on disk): connect once and
    publish; a gateway that is not running gets the fact from the outbox when it starts."""
    from runtime import bus

    async def main() -> None:
        try:
            nc = await asyncio.wait_for(bus.connect(nats_url, name="codeswitch-cli", once=True),
                                        3)
        except Exception:
            _keep(home, [_fact(action, target, details, local_actor())])
            return
        try:
            await AdminLog(nc, home=home).record(action, target, **details)
        finally:
            await nc.close()

    asyncio.run(main())
