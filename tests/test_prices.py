"""runtime.prices.LivePrices against a real NATS: the file and the KV overrides, the KV watch,
bad documents, and the strict reload the ledger's ``prices`` query uses."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from runtime import names
from runtime.prices import LivePrices
from schemas.prices import PRICES_KV_KEY, Price, PriceBook, PriceError


def price_of(live: LivePrices, model: str) -> Price | None:
    priced = live.book.lookup(None, model)
    return None if priced is None else priced.price


async def until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_file_then_kv_watched_bad_documents_and_strict_reload(
    nc: NATS, tmp_path: Path
) -> None:
    (tmp_path / "prices.toml").write_text('[models."my-model"]\ninput = 1.0\noutput = 2.0\n')
    books: list[PriceBook] = []
    live = LivePrices(tmp_path, on_change=books.append)
    js = nc.jetstream()
    await live.load(js)
    assert price_of(live, "my-model") == Price(input=1.0, output=2.0)
    assert books == [live.book]

    stop = asyncio.Event()
    watching = asyncio.create_task(live.watch(js, stop))
    kv = await js.key_value(names.SETTINGS_BUCKET)
    await kv.put(PRICES_KV_KEY, b'{"models": {"my-model": {"input": 5.0, "output": 6.0}}}')
    await until(lambda: price_of(live, "my-model") == Price(input=5.0, output=6.0))  # KV wins
    assert books[-1] is live.book
    good = live.book
    await kv.put(PRICES_KV_KEY, b'{"models": {"my-model": {"input": "cheap"}}}')
    await kv.put("unrelated", b"1")  # another setting: not the price document
    await asyncio.sleep(0.3)
    assert live.book is good  # a bad document keeps the prices that were in force
    await kv.delete(PRICES_KV_KEY)
    await until(lambda: price_of(live, "my-model") == Price(input=1.0, output=2.0))
    stop.set()
    await asyncio.wait_for(watching, 5)

    (tmp_path / "prices.toml").write_text("[models.x\n")  # not TOML
    before = live.book
    with pytest.raises(PriceError, match="cannot read price overrides"):
        await live.load(js, strict=True)
    assert live.book is before
    await live.load(js)  # lenient: logged, the file's previous overrides stay
    assert price_of(live, "my-model") == Price(input=1.0, output=2.0)
    fresh = LivePrices(tmp_path)  # at start there is nothing before: built-in prices only
    await fresh.load(js)
    assert price_of(fresh, "my-model") is None and price_of(fresh, "gpt-5") is not None


async def test_no_home_and_no_kv_document_is_the_builtin_book(nc: NATS) -> None:
    live = LivePrices(None)
    await live.load(nc.jetstream())
    assert live.book.table() == PriceBook().table()
