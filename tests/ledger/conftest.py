"""Helpers for the ledger tests: recorded event sequences, publishing, table comparison."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from tests.conftest import FIXTURES
from workers.ledger.projection import TABLES
from workers.ledger.store import Store
from workers.ledger.wire import decode_reply

EVENTS = FIXTURES / "events"


def recorded(name: str) -> list[tuple[str, bytes]]:
    """(subject, data) pairs of a recorded sequence in tests/fixtures/events."""
    out = []
    for line in (EVENTS / name).read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            out.append((item["subject"], json.dumps(item["event"]).encode()))
    return out


async def publish(nc: NATS, events: Iterable[tuple[str, bytes]]) -> int:
    js = nc.jetstream()
    n = 0
    for subject, data in events:
        msg_id = json.loads(data).get("id") or f"anon-{n}"
        await js.publish_async(subject, data, headers={"Nats-Msg-Id": msg_id})
        n += 1
    await js.publish_async_completed()
    return n


async def ask(nc: NATS, query: str, params: dict[str, Any] | None = None,
              timeout: float = 10.0) -> Any:
    msg = await nc.request(f"cs.ledger.{query}", json.dumps(params or {}).encode(),
                           timeout=timeout)
    body = decode_reply(msg.data, msg.headers)
    assert body["ok"], body
    return body["result"]


async def wait_caught_up(nc: NATS, last_seq: int, timeout: float = 30.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            status = await ask(nc, "status", timeout=2.0)
            if status["state"]["last_seq"] >= last_seq:
                return status  # type: ignore[no-any-return]
        except Exception:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"ledger did not reach seq {last_seq}")
        await asyncio.sleep(0.05)


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, ordered by seq (and all columns)."""
    with Store(path, read_only=True) as store:
        out = {}
        for table in TABLES:
            out[table] = store.con.execute(
                f'SELECT * FROM "{table}" ORDER BY ALL').fetchall()
        return out


def assert_same_tables(a: Path, b: Path) -> None:
    da, db = dump(a), dump(b)
    for table in TABLES:
        assert len(da[table]) == len(db[table]), table
        for ra, rb in zip(da[table], db[table], strict=True):
            assert ra == rb, (table, ra, rb)
