"""GET /v1/models: exact config names plus what providers list themselves, filtered by what
routes back to them unchanged (pure parts; the e2e test asks real fakes)."""

from __future__ import annotations

import json

from schemas.config import ProviderConfig
from workers.router.model_catalog import parse_model_list
from workers.router.models import model_names, render_models
from workers.router.upstream import models_url


def _p(name: str, dialect: str = "anthropic", **kw: object) -> ProviderConfig:
    return ProviderConfig(name=name, dialect=dialect, base_url="https://x.test/v1",  # type: ignore[arg-type]
                          **kw)  # type: ignore[arg-type]


def test_parse_each_dialects_list() -> None:
    assert parse_model_list("anthropic", {"data": [{"id": "claude-a"}, {"id": ""}, 7]}) == [
        "claude-a"]
    assert parse_model_list("openai-chat", {"object": "list", "data": [{"id": "gpt-5"}]}) == [
        "gpt-5"]
    assert parse_model_list("gemini", {"models": [{"name": "models/gemini-2.5-pro"}]}) == [
        "gemini-2.5-pro"]
    junk: object
    for junk in (None, [], {"data": "x"}, {"models": None}, "text"):
        assert parse_model_list("gemini", junk) == [] == parse_model_list("anthropic", junk)


def test_models_url_per_dialect() -> None:
    assert models_url(_p("a")) == "https://x.test/v1/models?limit=1000"
    assert models_url(_p("c", "openai-chat")) == "https://x.test/v1/models"
    g = ProviderConfig(name="g", dialect="gemini",
                       base_url="https://generativelanguage.googleapis.com")
    assert models_url(g) == "https://generativelanguage.googleapis.com/v1beta/models?pageSize=1000"


def test_listed_only_where_the_name_routes_back_unchanged() -> None:
    globbed = _p("main", models=["claude-*"], priority=1)
    renamed = _p("cheap", models=["fast"], model_map={"fast": "claude-haiku-4-5"}, priority=2)
    off = _p("off", enabled=False)
    discovered = {"main": ["claude-opus-4-1", "gpt-5"],  # gpt-5 is not main's glob
                  "cheap": ["claude-haiku-4-5"],  # asking for it would not reach cheap
                  "off": ["claude-secret"]}
    assert model_names([globbed, renamed, off], discovered) == [
        ("claude-opus-4-1", "main"), ("fast", "cheap")]
    both = _p("second", models=["claude-*"], priority=2)
    pairs = model_names([both, globbed], {"main": ["claude-x"], "second": ["claude-x"]})
    assert pairs == [("claude-x", "main")], "each model once, owned by the first in priority"
    doc = json.loads(render_models("gemini", [globbed], {"main": ["claude-opus-4-1"]}))
    assert doc["models"][0]["name"] == "models/claude-opus-4-1"


def test_vendor_prefixed_names_that_would_pin_another_provider_are_not_listed() -> None:
    """OpenRouter lists "anthropic/claude-3.5-haiku"; with a provider named "anthropic" that
    name pins it, so listing it as OpenRouter's would be a lie."""
    anthropic = _p("anthropic", models=["claude-*"], priority=1)
    router = _p("backup", "openai-chat", priority=2)
    pairs = model_names([anthropic, router], {"backup": [
        "anthropic/claude-3.5-haiku", "meta-llama/llama-3.3-70b", "backup/own-model"]})
    # "backup/own-model" would pin backup and send it "own-model": not what was listed either
    assert pairs == [("meta-llama/llama-3.3-70b", "backup")]
