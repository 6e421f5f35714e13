"""What each provider says it serves, from its own model list, for ``GET /v1/models``.

A provider configured with globs (``models = ["claude-*"]``) serves models nobody wrote down;
listing only exact names from the config would show such a gateway as empty. The router asks
each enabled provider's model endpoint (Anthropic ``/v1/models``, OpenAI ``/models``, Gemini
``/v1beta/models``), keeps the answer for five minutes (a failure for one), and lists the names
that route back to that provider unchanged. ``parse_model_list`` is pure; ``ModelCatalog`` does
the I/O and never holds a models request up for longer than ``timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec

from schemas.config import ProviderConfig
from workers.router.upstream import models_url, upstream_headers

__all__ = ["ModelCatalog", "parse_model_list"]

log = logging.getLogger("codeswitch.router")


def parse_model_list(dialect: str, doc: Any) -> list[str]:
    """Model ids out of a provider's list answer (anything unexpected gives none)."""
    if not isinstance(doc, dict):
        return []
    if dialect == "gemini":
        items = doc.get("models")
        key = "name"
    else:
        items = doc.get("data")
        key = "id"
    if not isinstance(items, list):
        return []
    names = []
    for item in items:
        value = item.get(key) if isinstance(item, dict) else None
        if isinstance(value, str) and value:
            names.append(value.removeprefix("models/"))
    return names


def _fingerprint(p: ProviderConfig) -> tuple[str, str, str]:
    return (p.dialect, p.base_url, p.api_key)


class ModelCatalog:
    def __init__(self, http: aiohttp.ClientSession, *, ttl: float = 300.0,
                 fail_ttl: float = 60.0, timeout: float = 1.5) -> None:
        self.http = http
        self.ttl, self.fail_ttl, self.timeout = ttl, fail_ttl, timeout
        # provider name -> (good until, names, config fingerprint)
        self._cache: dict[str, tuple[float, list[str], tuple[str, str, str]]] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}

    def _fresh(self, p: ProviderConfig, now: float) -> bool:
        got = self._cache.get(p.name)
        return got is not None and got[0] > now and got[2] == _fingerprint(p)

    async def names(self, providers: list[ProviderConfig],
                    timeout: float | None = None) -> dict[str, list[str]]:
        """Provider name -> the model ids it lists (stale or missing entries are refreshed;
        this waits at most ``timeout`` (default ``self.timeout``) for them, then answers with
        what it has)."""
        now = time.monotonic()
        tasks = []
        for p in providers:
            if not p.enabled or self._fresh(p, now):
                continue
            task = self._refreshing.get(p.name)
            if task is None:
                task = asyncio.create_task(self._refresh(p))
                self._refreshing[p.name] = task
                task.add_done_callback(self._forget(p.name))
            tasks.append(task)
        wait = self.timeout if timeout is None else timeout
        if tasks and wait > 0:
            await asyncio.wait(tasks, timeout=wait)
        return {p.name: self._cache[p.name][1] for p in providers
                if p.name in self._cache and self._cache[p.name][2] == _fingerprint(p)}

    def _forget(self, name: str) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self._refreshing.pop(name, None)
        return done

    async def _refresh(self, p: ProviderConfig) -> None:
        headers = upstream_headers(p, {}, same_dialect=False)
        headers.pop("content-type", None)
        try:
            timeout = aiohttp.ClientTimeout(total=10, sock_connect=p.timeouts.connect)
            async with self.http.get(models_url(p), headers=headers, timeout=timeout) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                names = parse_model_list(p.dialect, msgspec.json.decode(await resp.read()))
            self._cache[p.name] = (time.monotonic() + self.ttl, names, _fingerprint(p))
        except Exception as exc:  # a provider without a list: its exact names still show
            log.info("model list of %s unavailable (%s)", p.name, type(exc).__name__)
            old = self._cache.get(p.name)
            keep = old[1] if old and old[2] == _fingerprint(p) else []
            self._cache[p.name] = (time.monotonic() + self.fail_ttl, keep, _fingerprint(p))
