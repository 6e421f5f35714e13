"""The price book of a running part: ``schemas.prices``' built-in table plus the user's
overrides, kept current. The ledger bills with it and the alerts' ``cost`` metric fires on it,
so both price a request the same way.

Overrides (the document shape is in ``schemas/prices.py``), later ones winning:

    <home>/prices.toml (or prices.json)     read on ``load()`` (start, the ledger's reload query)
    KV cs_settings, key ledger.prices       read on ``load()`` and watched: a change rebuilds
                                            the book at once, in every part that ``watch()``es

A document that does not parse is logged, and what was read from that source before stays in
force (nothing, at start); ``load(strict=True)`` raises a bad file as ``PriceError`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats.errors
from nats.js import JetStreamContext

from runtime import names
from schemas.events import Usage
from schemas.prices import PRICES_KV_KEY, PriceBook, PriceError, parse_overrides

__all__ = ["LivePrices", "load_overrides_file", "nano_usd"]

_log = logging.getLogger("codeswitch.prices")


def load_overrides_file(home: Path) -> dict[str, Any]:
    """``<home>/prices.toml`` or ``<home>/prices.json``; empty when neither exists."""
    toml_path, json_path = home / "prices.toml", home / "prices.json"
    try:
        if toml_path.exists():
            return parse_overrides(tomllib.loads(toml_path.read_text()))
        if json_path.exists():
            return parse_overrides(json.loads(json_path.read_text()))
    except (OSError, ValueError) as exc:
        raise PriceError(f"cannot read price overrides: {exc}") from exc
    return {}


def nano_usd(book: PriceBook, provider: str | None, model: str, usage: Usage | None) -> int:
    """What a request's usage cost, in integer nano-USD (0 when unpriced): what budgets count
    (the quota worker, and the edges' early view of a request's spend)."""
    if usage is None:
        return 0
    priced = book.lookup(provider, model)
    if priced is None:
        return 0
    return round(priced.price.cost(usage.input_tokens, usage.output_tokens,
                                   usage.cache_read_tokens, usage.cache_write_tokens,
                                   usage.reasoning_tokens) * 1_000_000_000)


class LivePrices:
    """``book`` is the current ``PriceBook``; it is replaced, never changed in place, and
    ``on_change`` is called with each new one."""

    def __init__(self, home: Path | None, *,
                 on_change: Callable[[PriceBook], None] | None = None,
                 log: logging.Logger = _log) -> None:
        self.home = home
        self.book = PriceBook()
        self._file: dict[str, Any] = {}
        self._kv: dict[str, Any] = {}
        self._on_change = on_change
        self._log = log

    async def load(self, js: JetStreamContext, *, strict: bool = False) -> None:
        """(Re)read the file and the KV document, then rebuild the book."""
        if self.home is not None:
            try:
                self._file = load_overrides_file(self.home)
            except PriceError as exc:
                if strict:
                    raise
                self._log.error("%s; %s", exc, "keeping the file's previous overrides"
                                if self._file else "without the file's overrides")
        self._kv = await self._read_kv(js)
        self._rebuild()

    def _rebuild(self) -> None:
        try:
            book = PriceBook(self._file, self._kv)
        except PriceError as exc:
            self._log.error("%s; keeping the previous prices", exc)
            return
        self.book = book
        if self._on_change is not None:
            self._on_change(book)

    async def _read_kv(self, js: JetStreamContext) -> dict[str, Any]:
        try:
            kv = await js.key_value(names.SETTINGS_BUCKET)
            entry = await kv.get(PRICES_KV_KEY)
        except Exception:  # no bucket or no key: no overrides
            return {}
        try:
            return parse_overrides(entry.value or b"{}")
        except PriceError as exc:
            self._log.error("KV %s: %s", PRICES_KV_KEY, exc)
            return {}

    def apply_kv(self, value: bytes | None) -> None:
        """The KV document as a watch of ``cs_settings`` hands it over (the edge's)."""
        try:
            self._kv = parse_overrides(value or b"{}")
        except PriceError as exc:
            self._log.error("KV %s: %s", PRICES_KV_KEY, exc)
            return
        self._rebuild()

    async def watch(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        """Rebuild the book whenever the KV document changes, until ``stop`` is set."""
        try:
            kv = await js.key_value(names.SETTINGS_BUCKET)
            watcher = await kv.watch(PRICES_KV_KEY)
        except Exception as exc:
            self._log.warning("not watching %s: %s", PRICES_KV_KEY, exc)
            return
        try:
            while not stop.is_set():
                try:
                    entry = await watcher.updates(timeout=1.0)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    continue
                if entry is None:
                    continue
                try:
                    self._kv = parse_overrides(entry.value) if entry.value else {}
                except PriceError as exc:
                    self._log.error("KV %s: %s", PRICES_KV_KEY, exc)
                    continue
                self._rebuild()
                self._log.info("price overrides reloaded from KV")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(watcher.stop())  # type: ignore[no-untyped-call]
