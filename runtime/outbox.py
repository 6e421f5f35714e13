"""Facts handed to the write-ahead outbox for a part to publish, with the standard library only.

The supervisor (``codeswitch up``) lives as long as the gateway and keeps no NATS connection
(nats-py, msgspec and asyncio would triple its size). Its facts (``PartChanged``) go into
``<home>/outbox`` in the format of ``runtime.facts`` as the files of a process that is gone:
``<name>.1.wal`` written whole first, then ``<name>.lock`` (unlocked), so a part's
``FactPublisher`` adopts them (at its start and every ``ADOPT_EVERY_S``), publishes them with
``Nats-Msg-Id`` = event id and deletes them. A fact waits there while every part or NATS is
down, and survives the supervisor's own death.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from runtime.process import write_private

__all__ = ["SPOOLED", "spool", "spool_event"]

SPOOLED = "~spool-"  # in an outbox name: facts handed over on purpose, not a dead process's


def spool(directory: Path, name: str, facts: list[tuple[str, str, bytes]]) -> Path:
    """Write ``facts`` (subject, event id, JSON) as an orphaned outbox name of their own
    (``<name>~spool-<ns>``); returns its segment file."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    orphan = f"{name}{SPOOLED}{time.time_ns()}"
    segment = directory / f"{orphan}.1.wal"
    write_private(segment, b"".join(
        b"F %s %s - %s\n" % (subject.encode(), event_id.encode(), data)
        for subject, event_id, data in facts))
    # the lock last: a publisher looks at a name once its lock is there, its file complete
    os.close(os.open(directory / f"{orphan}.lock", os.O_CREAT | os.O_WRONLY, 0o600))
    return segment


def spool_event(directory: Path, name: str, subject: str, event: dict[str, Any]) -> Path:
    """One event given as its JSON fields (``type`` the tag, ``id``, ``ts``, ...)."""
    data = json.dumps(event, separators=(",", ":")).encode()
    if b"\n" in data:  # one line per fact (JSON escapes newlines inside strings)
        raise ValueError("an event's JSON has no raw newline")
    return spool(directory, name, [(subject, str(event["id"]), data)])
