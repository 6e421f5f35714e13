"""Cost of one request for the ``cost`` metric, in integer nano-USD.

The ledger owns prices (``workers/ledger/prices.py``): its built-in ``PriceBook`` is used
(same lookup by provider and upstream model, same long-context tiers). The user's overrides
(``<home>/prices.toml``, KV ``ledger.prices``) are not loaded here yet. If that module cannot be
imported, a small local table of list prices (USD per million tokens, approximate) stands in.
An unpriced model costs 0 here, so a cost rule never fires on a model whose price is unknown.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from schemas.events import Usage

__all__ = ["LOCAL_PRICES", "cost_nano", "price_source"]

# pattern -> (input, output, cache read, cache write) USD per million tokens; first match wins
LOCAL_PRICES: tuple[tuple[str, tuple[float, float, float, float]], ...] = (
    ("claude-opus-4-5*", (5.0, 25.0, 0.5, 6.25)),
    ("claude-opus-4*", (15.0, 75.0, 1.5, 18.75)),
    ("claude-3-opus*", (15.0, 75.0, 1.5, 18.75)),
    ("claude-sonnet-4*", (3.0, 15.0, 0.3, 3.75)),
    ("claude-3-7-sonnet*", (3.0, 15.0, 0.3, 3.75)),
    ("claude-3-5-sonnet*", (3.0, 15.0, 0.3, 3.75)),
    ("claude-haiku-4*", (1.0, 5.0, 0.1, 1.25)),
    ("claude-3-5-haiku*", (0.8, 4.0, 0.08, 1.0)),
    ("gpt-4o-mini*", (0.15, 0.6, 0.075, 0.0)),
    ("gpt-4o*", (2.5, 10.0, 1.25, 0.0)),
    ("gpt-4.1-mini*", (0.4, 1.6, 0.1, 0.0)),
    ("gpt-4.1*", (2.0, 8.0, 0.5, 0.0)),
    ("gpt-5-mini*", (0.25, 2.0, 0.025, 0.0)),
    ("gpt-5*", (1.25, 10.0, 0.125, 0.0)),
    ("o3*", (2.0, 8.0, 0.5, 0.0)),
    ("o4-mini*", (1.1, 4.4, 0.275, 0.0)),
    ("gemini-2.5-pro*", (1.25, 10.0, 0.31, 0.0)),
    ("gemini-2.5-flash*", (0.3, 2.5, 0.075, 0.0)),
)

_cache: dict[str, tuple[float, float, float, float] | None] = {}


def _local_price(model: str) -> tuple[float, float, float, float] | None:
    try:
        return _cache[model]
    except KeyError:
        pass
    found = None
    for pattern, price in LOCAL_PRICES:
        if fnmatch.fnmatchcase(model, pattern):
            found = price
            break
    if len(_cache) < 10_000:
        _cache[model] = found
    return found


def _local_cost_usd(provider: str | None, model: str, usage: Usage) -> float:
    price = _local_price(model)
    if price is None:
        return 0.0
    p_in, p_out, p_read, p_write = price
    return (
        usage.input_tokens * p_in
        + usage.output_tokens * p_out
        + usage.cache_read_tokens * p_read
        + usage.cache_write_tokens * p_write
    ) / 1_000_000


def _resolve() -> tuple[Callable[[str | None, str, Usage], float], str]:
    try:
        from workers.ledger.prices import PriceBook
    except ImportError:
        return _local_cost_usd, "local"
    book = PriceBook()

    def ledger_cost_usd(provider: str | None, model: str, usage: Usage) -> float:
        priced = book.lookup(provider, model)
        if priced is None:
            return 0.0
        return priced.price.cost(usage.input_tokens, usage.output_tokens,
                                 usage.cache_read_tokens, usage.cache_write_tokens,
                                 usage.reasoning_tokens)

    return ledger_cost_usd, "ledger"


_cost_usd, price_source = _resolve()


def cost_nano(provider: str | None, model: str, usage: Usage | None) -> int:
    """Cost of one request in nano-USD (0 when there is no usage or no price)."""
    if usage is None:
        return 0
    try:
        usd = float(_cost_usd(provider, model, usage))
    except Exception:  # a pricing bug must never stop alert evaluation
        usd = 0.0
    return round(usd * 1_000_000_000)
