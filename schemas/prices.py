"""Price table: USD per million tokens, per model, overridable per provider and per model.

The shared contract of cost: the ledger bills with a ``PriceBook``, the alerts' ``cost`` metric
fires on the same book (built-in prices and the user's overrides, kept current by
``runtime/prices.py``), and the ledger's ``cs.ledger.prices`` query lists it.

Cost follows the normalised usage of ``schemas.events.Usage`` (cache tokens are *not* part of
``input_tokens``; reasoning tokens *are* part of ``output_tokens``)::

    cost = (input * in + cache_read * cr + cache_write * cw + output * out) / 1e6

When a price sets ``reasoning`` (priced separately from output), the reasoning share of the
output is charged at that rate instead: ``(output - reasoning) * out + reasoning * rs``.
A price may carry a long-context tier (``above_tokens`` with ``long``): when the request's total
input exceeds ``above_tokens`` every rate comes from ``long`` (Anthropic Sonnet 4.x, Gemini Pro).

Lookup (first hit wins), ``provider`` being the provider that served the call and the model the
upstream model (falling back to the requested one):

    1. overrides ``providers.<provider>.models.<pattern>``
    2. overrides ``providers.<provider>.default``      (e.g. a free local provider: all 0)
    3. overrides ``models.<pattern>``
    4. the built-in table below

A pattern is an exact model name, an ``fnmatch`` glob, or a family prefix: ``gpt-4o`` matches
``gpt-4o-2024-11-20`` but not ``gpt-4o-mini`` because the longest matching prefix wins. Vendor
prefixes (``models/``, ``anthropic/``, ``openai/``, ``google/``, ``anthropic.``) are ignored.
No match: no price, the cost stays NULL and the request counts as unpriced — never a made-up 0.

Overrides come from ``<home>/prices.toml`` (or ``prices.json``) and from the KV document
``ledger.prices`` in bucket ``cs_settings`` (same shape, JSON; it wins over the file); reading
them is I/O, done by ``runtime/prices.py`` (this module only validates and merges them)::

    [models."my-finetune"]
    input = 1.0
    output = 4.0
    [providers.local.default]
    input = 0
    output = 0
    [providers.openrouter.models."claude-sonnet-4-5*"]
    input = 3.3
    output = 16.5
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = [
    "BUILTIN_PRICES",
    "PRICES_AS_OF",
    "PRICES_KV_KEY",
    "Price",
    "PriceBook",
    "PriceError",
    "Priced",
    "parse_overrides",
]

PRICES_AS_OF = "2025-11"
PRICES_KV_KEY = "ledger.prices"
_VENDOR_PREFIXES = ("models/", "anthropic/", "openai/", "google/", "gemini/", "anthropic.")


class PriceError(ValueError):
    """An override document that cannot be read."""


class Price(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """USD per million tokens. ``cache_read``/``cache_write`` default to ``input``."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None
    reasoning: float | None = None  # only when reasoning is priced apart from output
    above_tokens: int | None = None  # long-context threshold on total input tokens
    long: Price | None = None  # the rates above the threshold

    @property
    def cr(self) -> float:
        return self.input if self.cache_read is None else self.cache_read

    @property
    def cw(self) -> float:
        return self.input if self.cache_write is None else self.cache_write

    def tier(self, total_input_tokens: int) -> Price:
        if (self.long is not None and self.above_tokens is not None
                and total_input_tokens > self.above_tokens):
            return self.long
        return self

    def cost(self, input_tokens: int, output_tokens: int, cache_read_tokens: int,
             cache_write_tokens: int, reasoning_tokens: int) -> float:
        """USD for one call's normalised usage."""
        p = self.tier(input_tokens + cache_read_tokens + cache_write_tokens)
        micro = input_tokens * p.input + cache_read_tokens * p.cr + cache_write_tokens * p.cw
        if p.reasoning is not None and reasoning_tokens:
            reasoning = min(reasoning_tokens, output_tokens)
            micro += (output_tokens - reasoning) * p.output + reasoning * p.reasoning
        else:
            micro += output_tokens * p.output
        return micro / 1_000_000


class Priced(msgspec.Struct, frozen=True):
    """The price a cost was computed with, and where it came from."""

    key: str  # the pattern that matched, e.g. "claude-sonnet-4-5"
    source: str  # "builtin" | "override" | "provider:<name>"
    price: Price


def _p(inp: float, out: float, cr: float | None = None, cw: float | None = None,
       **kw: Any) -> Price:
    return Price(input=inp, output=out, cache_read=cr, cache_write=cw, **kw)


# Anthropic: cache write = 1.25x input (5-minute cache), cache read = 0.1x input.
# OpenAI: cached input is cheaper, there is no separate cache-write charge.
# Gemini: implicit/explicit cache reads; storage per hour is not per request and not modelled.
# Prices as published by the vendors around PRICES_AS_OF; override them when they change.
BUILTIN_PRICES: dict[str, Price] = {
    # --- Anthropic ---
    "claude-opus-4-5": _p(5.0, 25.0, 0.50, 6.25),
    "claude-opus-4-1": _p(15.0, 75.0, 1.50, 18.75),
    "claude-opus-4": _p(15.0, 75.0, 1.50, 18.75),
    "claude-sonnet-4-5": _p(3.0, 15.0, 0.30, 3.75, above_tokens=200_000,
                            long=_p(6.0, 22.5, 0.60, 7.50)),
    "claude-sonnet-4": _p(3.0, 15.0, 0.30, 3.75, above_tokens=200_000,
                          long=_p(6.0, 22.5, 0.60, 7.50)),
    "claude-3-7-sonnet": _p(3.0, 15.0, 0.30, 3.75),
    "claude-3-5-sonnet": _p(3.0, 15.0, 0.30, 3.75),
    "claude-haiku-4-5": _p(1.0, 5.0, 0.10, 1.25),
    "claude-3-5-haiku": _p(0.80, 4.0, 0.08, 1.0),
    "claude-3-haiku": _p(0.25, 1.25, 0.03, 0.30),
    "claude-3-opus": _p(15.0, 75.0, 1.50, 18.75),
    # --- OpenAI ---
    "gpt-5.1": _p(1.25, 10.0, 0.125),
    "gpt-5.1-codex": _p(1.25, 10.0, 0.125),
    "gpt-5.1-codex-mini": _p(0.25, 2.0, 0.025),
    "gpt-5.1-codex-max": _p(1.25, 10.0, 0.125),
    "gpt-5": _p(1.25, 10.0, 0.125),
    "gpt-5-codex": _p(1.25, 10.0, 0.125),
    "gpt-5-mini": _p(0.25, 2.0, 0.025),
    "gpt-5-nano": _p(0.05, 0.40, 0.005),
    "gpt-5-pro": _p(15.0, 120.0),
    "gpt-4.1": _p(2.0, 8.0, 0.50),
    "gpt-4.1-mini": _p(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _p(0.10, 0.40, 0.025),
    "gpt-4o": _p(2.50, 10.0, 1.25),
    "gpt-4o-mini": _p(0.15, 0.60, 0.075),
    "o1": _p(15.0, 60.0, 7.50),
    "o1-mini": _p(1.10, 4.40, 0.55),
    "o3": _p(2.0, 8.0, 0.50),
    "o3-mini": _p(1.10, 4.40, 0.55),
    "o4-mini": _p(1.10, 4.40, 0.275),
    "codex-mini-latest": _p(1.50, 6.0, 0.375),
    # --- Google Gemini ---
    "gemini-3-pro-preview": _p(2.0, 12.0, 0.20, above_tokens=200_000,
                               long=_p(4.0, 18.0, 0.40)),
    "gemini-2.5-pro": _p(1.25, 10.0, 0.125, above_tokens=200_000,
                         long=_p(2.50, 15.0, 0.25)),
    "gemini-2.5-flash": _p(0.30, 2.50, 0.03),
    "gemini-2.5-flash-lite": _p(0.10, 0.40, 0.01),
    "gemini-2.0-flash": _p(0.10, 0.40, 0.025),
    "gemini-2.0-flash-lite": _p(0.075, 0.30),
}


def _normalise(model: str) -> str:
    name = model.strip().lower()
    for prefix in _VENDOR_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def _match(table: Mapping[str, Price], model: str) -> tuple[str, Price] | None:
    """Exact name, then globs, then the longest family prefix (ending at '-', '@' or ':')."""
    hit = table.get(model)
    if hit is not None:
        return model, hit
    for pattern, price in table.items():
        if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(model, pattern):
            return pattern, price
    best: tuple[str, Price] | None = None
    for key, price in table.items():
        if (model.startswith(key) and model[len(key)] in "-@:"
                and (best is None or len(key) > len(best[0]))):
            best = key, price
    return best


class _ProviderOverrides(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    default: Price | None = None
    models: dict[str, Price] = {}


class _Overrides(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    models: dict[str, Price] = {}
    providers: dict[str, _ProviderOverrides] = {}


def parse_overrides(doc: Mapping[str, Any] | bytes | str) -> dict[str, Any]:
    """Validate an override document (mapping or JSON); returns it as plain data."""
    try:
        if isinstance(doc, bytes | str):
            parsed = msgspec.json.decode(doc, type=_Overrides)
        else:
            parsed = msgspec.convert(doc, type=_Overrides)
    except msgspec.ValidationError as exc:
        raise PriceError(f"invalid price overrides: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise PriceError(f"price overrides are not JSON: {exc}") from exc
    return msgspec.to_builtins(parsed)  # type: ignore[no-any-return]


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = {**base, "models": {**base.get("models", {}), **over.get("models", {})}}
    providers = dict(base.get("providers", {}))
    for name, spec in over.get("providers", {}).items():
        old = providers.get(name, {})
        providers[name] = {
            "default": spec.get("default") or old.get("default"),
            "models": {**old.get("models", {}), **spec.get("models", {})},
        }
    out["providers"] = providers
    return out


class PriceBook:
    """Built-in prices plus user overrides, with a per-(provider, model) lookup cache."""

    def __init__(self, *overrides: Mapping[str, Any],
                 builtin: Mapping[str, Price] | None = None) -> None:
        merged: dict[str, Any] = {}
        for doc in overrides:
            merged = _merge(merged, parse_overrides(dict(doc)))
        spec = msgspec.convert(merged, type=_Overrides)
        self.builtin = {k.lower(): v for k, v in (builtin or BUILTIN_PRICES).items()}
        self.models = {k.lower(): v for k, v in spec.models.items()}
        self.providers = {
            name: ({k.lower(): v for k, v in p.models.items()}, p.default)
            for name, p in spec.providers.items()
        }
        self._cache: dict[tuple[str | None, str], Priced | None] = {}

    def lookup(self, provider: str | None, model: str | None) -> Priced | None:
        if not model:
            return None
        key = (provider, model)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = self._lookup(provider, _normalise(model))
        if len(self._cache) < 100_000:
            self._cache[key] = found
        return found

    def _lookup(self, provider: str | None, model: str) -> Priced | None:
        if provider is not None and provider in self.providers:
            models, default = self.providers[provider]
            hit = _match(models, model)
            if hit is not None:
                return Priced(hit[0], f"provider:{provider}", hit[1])
            if default is not None:
                return Priced("*", f"provider:{provider}", default)
        hit = _match(self.models, model)
        if hit is not None:
            return Priced(hit[0], "override", hit[1])
        hit = _match(self.builtin, model)
        if hit is not None:
            return Priced(hit[0], "builtin", hit[1])
        return None

    def table(self) -> list[dict[str, Any]]:
        """Every price entry with its source, for ``cs.ledger.prices``."""
        rows: list[dict[str, Any]] = []
        for source, table in (("builtin", self.builtin), ("override", self.models)):
            rows += [{"source": source, "model": k, **msgspec.to_builtins(v)}
                     for k, v in table.items()]
        for name, (models, default) in self.providers.items():
            if default is not None:
                rows.append({"source": f"provider:{name}", "model": "*",
                             **msgspec.to_builtins(default)})
            rows += [{"source": f"provider:{name}", "model": k, **msgspec.to_builtins(v)}
                     for k, v in models.items()]
        return rows
