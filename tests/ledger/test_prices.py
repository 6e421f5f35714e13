"""Cost arithmetic per dialect (cache and reasoning tokens), lookup order, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.prices import load_overrides_file
from schemas.events import RequestCompleted, Usage
from schemas.prices import Price, PriceBook, PriceError
from workers.ledger.projection import RequestRow, project_event


def _row(model: str, usage: Usage | None, provider: str = "p",
         book: PriceBook | None = None) -> RequestRow:
    ev = RequestCompleted(id="e", ts=1.0, request_id="r", dialect="anthropic", model=model,
                          provider=provider, upstream_model=model, status=200, usage=usage)
    row = project_event(1, ev, book or PriceBook())
    assert isinstance(row, RequestRow)
    return row


def test_anthropic_cache_read_and_write_are_priced_apart() -> None:
    # Anthropic usage: input_tokens excludes cache reads/writes (normalised the same way)
    usage = Usage(input_tokens=1200, cache_read_tokens=48_000, cache_write_tokens=3000,
                  output_tokens=850, reasoning_tokens=300)
    row = _row("claude-sonnet-4-5-20250929", usage)
    expected = (1200 * 3.0 + 48_000 * 0.30 + 3000 * 3.75 + 850 * 15.0) / 1e6
    assert row.cost == pytest.approx(expected)
    assert row.cost == pytest.approx(0.042)
    assert (row.price_key, row.price_source) == ("claude-sonnet-4-5", "builtin")
    assert (row.price_input, row.price_output, row.price_cache_read,
            row.price_cache_write) == (3.0, 15.0, 0.30, 3.75)


def test_openai_cached_input_and_reasoning_inside_output() -> None:
    # OpenAI: cached_tokens -> cache_read; reasoning is part of output, billed at output rate
    usage = Usage(input_tokens=3000, cache_read_tokens=12_000, output_tokens=2400,
                  reasoning_tokens=1800)
    row = _row("gpt-5-codex", usage)
    assert row.cost == pytest.approx((3000 * 1.25 + 12_000 * 0.125 + 2400 * 10.0) / 1e6)
    assert row.price_cache_write == 1.25  # no cache-write charge: falls back to input


def test_gemini_thoughts_and_long_context_tier() -> None:
    usage = Usage(input_tokens=2000, cache_read_tokens=8000, output_tokens=11_000,
                  reasoning_tokens=10_000)
    row = _row("models/gemini-2.5-pro", usage)
    assert row.cost == pytest.approx((2000 * 1.25 + 8000 * 0.125 + 11_000 * 10.0) / 1e6)
    big = Usage(input_tokens=150_000, cache_read_tokens=100_000, output_tokens=1000)
    row = _row("gemini-2.5-pro", big)
    assert row.cost == pytest.approx((150_000 * 2.5 + 100_000 * 0.25 + 1000 * 15.0) / 1e6)
    assert row.price_key == "gemini-2.5-pro>200000"
    assert row.price_input == 2.5


def test_reasoning_priced_separately_when_the_price_says_so() -> None:
    book = PriceBook({"models": {"thinker": {"input": 1.0, "output": 4.0, "reasoning": 8.0}}})
    row = _row("thinker", Usage(input_tokens=100, output_tokens=1000, reasoning_tokens=600),
               book=book)
    assert row.cost == pytest.approx((100 * 1.0 + 400 * 4.0 + 600 * 8.0) / 1e6)
    assert row.price_reasoning == 8.0


def test_unknown_model_is_unpriced_never_zero() -> None:
    row = _row("llama-3.3-70b", Usage(input_tokens=500, output_tokens=100))
    assert row.cost is None and row.price_key is None and row.price_input is None
    assert row.total_tokens == 600


def test_lookup_prefers_exact_then_longest_family_prefix() -> None:
    book = PriceBook()
    assert book.lookup(None, "gpt-4o-mini-2024-07-18").key == "gpt-4o-mini"  # type: ignore[union-attr]
    assert book.lookup(None, "gpt-4o-2024-11-20").key == "gpt-4o"  # type: ignore[union-attr]
    assert book.lookup(None, "o1-mini").key == "o1-mini"  # type: ignore[union-attr]
    assert book.lookup(None, "anthropic/claude-haiku-4-5").key == "claude-haiku-4-5"  # type: ignore[union-attr]
    assert book.lookup(None, "gpt-4oo") is None
    assert book.lookup(None, "") is None


def test_override_order_provider_model_then_default_then_models_then_builtin() -> None:
    book = PriceBook({
        "models": {"claude-sonnet-4-5*": {"input": 2.0, "output": 10.0}},
        "providers": {
            "local": {"default": {"input": 0.0, "output": 0.0}},
            "openrouter": {"models": {"claude-sonnet-4-5": {"input": 3.3, "output": 16.5}}},
        },
    })
    hit = book.lookup("openrouter", "claude-sonnet-4-5")
    assert hit is not None and (hit.source, hit.price.input) == ("provider:openrouter", 3.3)
    hit = book.lookup("local", "gpt-5")
    assert hit is not None and (hit.source, hit.price.output) == ("provider:local", 0.0)
    hit = book.lookup("anthropic", "claude-sonnet-4-5-20250929")
    assert hit is not None and (hit.source, hit.key) == ("override", "claude-sonnet-4-5*")
    hit = book.lookup("anthropic", "claude-haiku-4-5")
    assert hit is not None and hit.source == "builtin"
    # a free provider gives a real 0 (it is priced), not an unpriced NULL
    assert _row("anything", Usage(input_tokens=10), provider="local", book=book).cost == 0.0


def test_later_override_documents_win(tmp_path: Path) -> None:
    (tmp_path / "prices.toml").write_text(
        '[models."my-model"]\ninput = 1.0\noutput = 2.0\n'
        '[providers.corp.models."gpt-5"]\ninput = 1.0\noutput = 8.0\n')
    file_doc = load_overrides_file(tmp_path)
    kv_doc = {"models": {"my-model": {"input": 5.0, "output": 6.0}}}
    book = PriceBook(file_doc, kv_doc)
    assert book.lookup(None, "my-model").price == Price(input=5.0, output=6.0)  # type: ignore[union-attr]
    assert book.lookup("corp", "gpt-5").price.output == 8.0  # type: ignore[union-attr]


def test_bad_override_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "prices.json").write_text('{"models": {"x": {"input": "cheap"}}}')
    with pytest.raises(PriceError, match="invalid price overrides"):
        load_overrides_file(tmp_path)
    assert load_overrides_file(tmp_path / "missing") == {}
