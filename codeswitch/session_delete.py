"""Deleting a session for real, as ``codeswitch sessions delete`` and the console do it: the
ledger erases it (``cs.ledger.session_delete``), then the admin fact. The fact names the
session by the sha256 of its id, as the ledger's tombstone does: the id itself was just erased
from the event log and must not go back on it."""

from __future__ import annotations

import hashlib
from typing import Any

from nats.aio.client import Client as NATS

from codeswitch.audit import AdminLog
from codeswitch.reads import ledger

__all__ = ["delete_session", "session_target"]


def session_target(session: str) -> tuple[str, str]:
    """The audit target and the full digest of a deleted session."""
    digest = hashlib.sha256(session.encode()).hexdigest()
    return f"session:sha256:{digest[:16]}", digest


async def delete_session(nc: NATS, audit: AdminLog, session: str, *,
                         force: bool = False) -> dict[str, Any]:
    done: dict[str, Any] = await ledger(nc, "session_delete",
                                        {"session": session, "force": force}, 180)
    target, digest = session_target(session)
    await audit.record("session.deleted", target, session_hash=digest,
                       requests=done.get("requests"), facts_erased=done.get("facts_erased"))
    return done
