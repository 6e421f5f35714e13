"""Ledger replies under a NATS server's max_payload: big answers compressed, answers too big
even then refused in words, never a query that silently times out."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats

from runtime import bus
from runtime.natsd import EmbeddedNats
from schemas.events import encode_event
from tests.ledger.conftest import ask, publish, wait_caught_up
from tests.ledger.eventgen import generate, subject_of
from tests.ledger.test_service import ledger
from workers.ledger.wire import COMPRESS_ABOVE, ENCODING_HEADER, decode_reply, encode_reply


def test_small_answers_stay_plain_json() -> None:
    data, headers = encode_reply({"ok": True, "result": [1, 2]}, 1024 * 1024)
    assert headers is None and json.loads(data) == {"ok": True, "result": [1, 2]}


def test_big_answers_are_compressed_and_read_back() -> None:
    rows = [{"ts": i, "provider": "main", "model": "claude-sonnet-4-5"} for i in range(20_000)]
    body = {"ok": True, "result": rows}
    data, headers = encode_reply(body, 1024 * 1024)
    assert headers == {ENCODING_HEADER: "zlib"} and len(data) < 1024 * 1024 < len(
        json.dumps(body))
    assert decode_reply(data, headers) == body


def test_too_big_even_compressed_is_a_clear_error() -> None:
    import random

    rng = random.Random(1)
    noise = [rng.getrandbits(64) for _ in range(40_000)]  # barely compressible
    data, headers = encode_reply({"ok": True, "result": noise}, 128 * 1024)
    body = decode_reply(data, headers)
    assert headers is None and body["ok"] is False
    assert "max_payload" in body["error"] and "narrow the time range" in body["error"]
    assert len(data) < COMPRESS_ABOVE


async def test_a_long_log_through_a_server_with_a_small_max_payload(tmp_path: Path) -> None:
    """256 KB max_payload (an operator's server): a 1,000-request log is several times that
    as JSON; it arrives whole."""
    server = EmbeddedNats(tmp_path / "nats", max_payload=256 * 1024)
    await asyncio.to_thread(server.start)
    try:
        nc = await nats.connect(server.url)
        try:
            events = [(subject_of(e), encode_event(e)) for e in generate(1000, seed=5)]
            await bus.ensure_all(nc.jetstream())
            await publish(nc, events)
            async with ledger(server.url, tmp_path / "home"):
                await wait_caught_up(nc, len(events))
                raw = await nc.request("cs.ledger.log", b'{"limit": 5000}', timeout=10)
                assert raw.headers and raw.headers[ENCODING_HEADER] == "zlib"
                assert len(raw.data) < 256 * 1024
                log = await ask(nc, "log", {"limit": 5000})
                assert len(log) == 1000
                assert len(json.dumps(log)) > 256 * 1024
        finally:
            await nc.close()
    finally:
        await asyncio.to_thread(server.stop)
