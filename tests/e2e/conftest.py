from __future__ import annotations

from collections.abc import Iterator

import pytest

from runtime.natsd import EmbeddedNats
from schemas.config import ProviderConfig
from tests.e2e.gateway import Gateway
from tests.fakes.upstream import FakeUpstream

DIALECTS = ("anthropic", "openai-chat", "openai-responses", "gemini")
World = tuple[Gateway, dict[str, FakeUpstream]]

PROVIDER_KEYS = {
    "anthropic": "sk-ant-provider-SECRET-1111",
    "openai-chat": "sk-chat-provider-SECRET-2222",
    "openai-responses": "sk-resp-provider-SECRET-3333",
    "gemini": "AIza-provider-SECRET-4444",
}
CLIENT_KEY = "client-key-SECRET-9999"
MODELS = {
    "anthropic": "claude-opus-4-8",
    "openai-chat": "gpt-4.1-mini",
    "openai-responses": "gpt-5-codex",
    "gemini": "gemini-2.5-flash",
}
GLOBS = {
    "anthropic": ["claude-*"],
    "openai-chat": ["gpt-4*"],
    "openai-responses": ["gpt-5*"],
    "gemini": ["gemini-*"],
}


def provider_for(fake: FakeUpstream, name: str | None = None, **kw: object) -> ProviderConfig:
    d = fake.dialect
    fields: dict[str, object] = {
        "name": name or d.replace("openai-", ""),
        "dialect": d,
        "base_url": fake.base_url,
        "api_key": PROVIDER_KEYS[d],
        "models": GLOBS[d],
    }
    fields.update(kw)
    return ProviderConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture
def fakes() -> Iterator[dict[str, FakeUpstream]]:
    started = {d: FakeUpstream(d).start() for d in MODELS}
    try:
        yield started
    finally:
        for fake in started.values():
            fake.stop()


@pytest.fixture
def gateway(nats_server: EmbeddedNats, fakes: dict[str, FakeUpstream]) -> Iterator[Gateway]:
    gw = Gateway(nats_server.url)
    try:
        for fake in fakes.values():
            gw.add_provider(provider_for(fake))
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One gateway and one fake upstream per dialect for a whole test module; tests choose
    the provider with :func:`only`."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats") / "nats")
    server.start()
    started = {d: FakeUpstream(d).start() for d in DIALECTS}
    gw = Gateway(server.url)
    try:
        yield gw, started
    finally:
        gw.stop()
        for f in started.values():
            f.stop()
        server.stop()


def only(gw: Gateway, fakes: dict[str, FakeUpstream], provider: str) -> FakeUpstream:
    """Make ``provider``'s fake the only enabled provider (serving every model)."""
    for d, fake in fakes.items():
        gw.add_provider(ProviderConfig(name=f"p-{d.replace('openai-', '')}", dialect=d,  # type: ignore[arg-type]
                                       base_url=fake.base_url, api_key=PROVIDER_KEYS[d],
                                       enabled=d == provider))
    fakes[provider].clear()
    return fakes[provider]
