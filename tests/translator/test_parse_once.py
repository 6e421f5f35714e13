"""A request body is decoded once per request: ``parse_request`` gives the document, and
``prepare`` / ``count_tokens_*`` take it as ``doc=`` for every attempt, giving the same bytes as
from the body and leaving the document as it was (it is shared by the attempts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.dialects import DIALECTS
from workers import translator
from workers.router.attempt import RequestBody
from workers.translator import (
    COUNTING_DIALECTS,
    TranslationError,
    count_tokens_estimate,
    count_tokens_request,
    parse_request,
    prepare,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PREFIXES = {"claude_code": "anthropic", "codex": "openai-responses", "gemini_cli": "gemini",
            "anthropic": "anthropic", "openai_chat": "openai-chat",
            "openai_responses": "openai-responses", "gemini": "gemini"}


def _requests() -> list[tuple[str, str]]:
    found = []
    for path in sorted([*FIXTURES.glob("clients/*.json"), *FIXTURES.glob("vectors/*.json")]):
        if path.name.endswith(".headers.json") or not (
                "request" in path.name or "recorded" in path.name):
            continue
        prefix = max((p for p in PREFIXES if path.name.startswith(p)), key=len)
        found.append((f"{path.parent.name}/{path.name}", PREFIXES[prefix]))
    return found


REQUESTS = _requests()
PAIRS = [(name, client, provider) for name, client in REQUESTS for provider in DIALECTS
         if provider != client]


def test_the_recorded_requests_are_all_here() -> None:
    names = {name for name, _ in REQUESTS}
    assert {"clients/claude_code_2.1.197_recorded.json", "clients/codex_0.171.0_recorded.json",
            "clients/gemini_cli_0.61.0_recorded.json"} <= names
    assert {client for _, client in REQUESTS} == set(DIALECTS)


@pytest.mark.parametrize(("name", "client", "provider"), PAIRS)
def test_prepare_from_the_document_is_prepare_from_the_bytes(name: str, client: str,
                                                            provider: str) -> None:
    body = (FIXTURES / name).read_bytes()
    doc = parse_request(body)
    for stream in (False, True):
        for field in ("max_completion_tokens", "max_tokens"):
            from_bytes = prepare(client, provider, body, model="up", stream=stream,
                                 chat_max_tokens=field)
            # the bytes are not read when the document is given
            first = prepare(client, provider, b"not json", doc=doc, model="up", stream=stream,
                            chat_max_tokens=field)
            again = prepare(client, provider, b"", doc=doc, model="up", stream=stream,
                            chat_max_tokens=field)
            assert first.body == again.body == from_bytes.body
            assert first.context == again.context == from_bytes.context
    assert doc == parse_request(body)  # every attempt of the request shares it: unchanged


@pytest.mark.parametrize(("name", "client"), REQUESTS)
def test_counts_from_the_document_are_counts_from_the_bytes(name: str, client: str) -> None:
    body = (FIXTURES / name).read_bytes()
    doc = parse_request(body)
    for provider in COUNTING_DIALECTS:
        if provider == client:
            continue
        assert count_tokens_request(client, provider, b"", doc=doc, model="up") == \
            count_tokens_request(client, provider, body, model="up")
    assert count_tokens_estimate(client, b"", doc=doc) == count_tokens_estimate(client, body)
    assert doc == parse_request(body)


def test_gemini_count_wrapper_read_from_the_document() -> None:
    inner = {"contents": [{"role": "user", "parts": [{"text": "hello there " * 40}]}]}
    wrapped = {"generateContentRequest": {"model": "models/x", **inner}}
    assert count_tokens_estimate("gemini", b"", doc=wrapped) == \
        count_tokens_estimate("gemini", b"", doc=inner) > 40
    out = count_tokens_request("gemini", "anthropic", b"", doc=wrapped, model="claude")
    assert b"hello there" in out and b"generateContentRequest" not in out


def test_parse_request_refuses_what_prepare_refuses() -> None:
    for bad in (b"[1, 2]", b"{", b"[" * 5000):
        with pytest.raises(TranslationError) as parsed:
            parse_request(bad)
        with pytest.raises(TranslationError) as prepared:
            prepare("anthropic", "openai-chat", bad, model="m", stream=False)
        assert parsed.value.message == prepared.value.message


def test_request_body_decodes_once_for_every_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = translator.parse_request

    def counting(body: bytes) -> dict[str, object]:
        calls.append(body)
        return real(body)

    monkeypatch.setattr(translator, "parse_request", counting)
    raw = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
    body = RequestBody(raw)
    assert calls == []  # nothing decoded until an attempt needs the document
    first = body.doc()
    assert body.doc() is first and body.raw is raw
    assert calls == [raw]
    bad = RequestBody(b"{oops")
    for _ in range(2):  # a body that does not decode fails every attempt the same way
        with pytest.raises(TranslationError):
            bad.doc()
