"""Cost of one request for the ``cost`` metric, in integer nano-USD.

Priced with the shared price book (``schemas/prices.py``) the ledger bills with: the same lookup
by provider and upstream model, the same long-context tiers, the same formula, and in the worker
the same user overrides (``<home>/prices.toml``, KV ``ledger.prices``), which
``runtime.prices.LivePrices`` keeps current and the service hands to the engine. An unpriced
model costs 0 here (the ledger leaves its cost NULL), so a cost rule never fires on a model
whose price is unknown.

This runs once per request event: each (provider, model) is looked up once and its price
compiled to a function of the usage, cached (a new book starts a new cache).
"""

from __future__ import annotations

from collections.abc import Callable

from schemas.events import Usage
from schemas.prices import Price, PriceBook

__all__ = ["Pricer"]

_Cost = Callable[[Usage], int]
_CACHE_MAX = 10_000


def _free(usage: Usage) -> int:
    return 0


def _compile(price: Price) -> _Cost:
    """``round(price.cost(usage) * 1e9)``, with the same arithmetic in the same order (so the
    same float result), minus the per-call attribute lookups."""
    long, above = price.long, price.above_tokens
    if price.reasoning is not None or (long is not None and long.reasoning is not None):
        cost = price.cost  # reasoning priced apart: rare, the general formula

        def general(u: Usage) -> int:
            return round(cost(u.input_tokens, u.output_tokens, u.cache_read_tokens,
                              u.cache_write_tokens, u.reasoning_tokens) * 1e9)

        return general
    pi, pr, pw, po = price.input, price.cr, price.cw, price.output
    if long is None or above is None:

        def flat(u: Usage) -> int:
            micro = (u.input_tokens * pi + u.cache_read_tokens * pr
                     + u.cache_write_tokens * pw + u.output_tokens * po)
            return round(micro / 1_000_000 * 1e9)

        return flat
    li, lr, lw, lo = long.input, long.cr, long.cw, long.output

    def tiered(u: Usage) -> int:
        i, r, w = u.input_tokens, u.cache_read_tokens, u.cache_write_tokens
        if i + r + w > above:
            micro = i * li + r * lr + w * lw + u.output_tokens * lo
        else:
            micro = i * pi + r * pr + w * pw + u.output_tokens * po
        return round(micro / 1_000_000 * 1e9)

    return tiered


class Pricer:
    """``pricer(provider, model, usage)``: nano-USD of one request under ``book``."""

    __slots__ = ("_fns", "book")

    def __init__(self, book: PriceBook | None = None) -> None:
        self.book = book if book is not None else PriceBook()
        self._fns: dict[tuple[str | None, str], _Cost] = {}

    def __call__(self, provider: str | None, model: str, usage: Usage | None) -> int:
        if usage is None:
            return 0
        fn = self._fns.get((provider, model))
        if fn is None:
            fn = self._resolve(provider, model)
        try:
            return fn(usage)
        except Exception:  # a pricing bug must never stop alert evaluation
            return 0

    def _resolve(self, provider: str | None, model: str) -> _Cost:
        try:
            priced = self.book.lookup(provider, model)
            fn = _free if priced is None else _compile(priced.price)
        except Exception:
            fn = _free
        if len(self._fns) < _CACHE_MAX:
            self._fns[(provider, model)] = fn
        return fn
