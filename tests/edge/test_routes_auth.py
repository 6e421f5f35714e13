from __future__ import annotations

import pytest

from edge.auth import AuthError, authenticate, client_key, hash_key
from edge.identity import identify, peek_decoder
from edge.routes import match_route
from schemas.config import GatewaySettings


@pytest.mark.parametrize(("method", "path", "kind", "dialect", "op", "model", "stream"), [
    ("POST", "/v1/messages", "llm", "anthropic", "generate", "", None),
    ("POST", "/v1/messages/count_tokens", "llm", "anthropic", "count_tokens", "", False),
    ("POST", "/prefix/v1/messages", "llm", "anthropic", "generate", "", None),
    ("POST", "/v1/chat/completions", "llm", "openai-chat", "generate", "", None),
    ("POST", "/responses", "llm", "openai-responses", "generate", "", None),
    ("POST", "/v1/responses", "llm", "openai-responses", "generate", "", None),
    ("POST", "/v1beta/models/gemini-2.5-pro:generateContent", "llm", "gemini", "generate",
     "gemini-2.5-pro", False),
    ("POST", "/v1/models/gemini-2.5-pro:streamGenerateContent", "llm", "gemini", "generate",
     "gemini-2.5-pro", True),
    ("POST", "/gw/v1beta/models/gemini-2.5-flash:countTokens", "llm", "gemini",
     "count_tokens", "gemini-2.5-flash", False),
    ("GET", "/v1/models", "models", "", "generate", "", None),
    ("GET", "/v1beta/models", "models", "gemini", "generate", "", None),
    ("HEAD", "/", "root", "", "generate", "", None),
    ("GET", "/readiness", "readiness", "", "generate", "", None),
])
def test_routes(method: str, path: str, kind: str, dialect: str, op: str, model: str,
                stream: bool | None) -> None:
    route = match_route(method, path)
    assert route is not None
    assert (route.kind, route.dialect, route.operation, route.model, route.stream) == \
        (kind, dialect, op, model, stream)


def test_unknown_routes() -> None:
    assert match_route("POST", "/v2/whatever") is None
    assert match_route("DELETE", "/v1/messages") is None


def test_client_key_sources() -> None:
    assert client_key({"x-api-key": "a"}, "") == "a"
    assert client_key({"authorization": "Bearer b"}, "") == "b"
    assert client_key({"x-goog-api-key": "c"}, "") == "c"
    assert client_key({}, "alt=sse&key=d") == "d"
    assert client_key({"authorization": "Basic zzz"}, "") is None


def test_authenticate_open_and_closed() -> None:
    open_ = GatewaySettings()
    assert authenticate({}, "", open_).key_hash is None
    assert authenticate({"x-api-key": "any"}, "", open_).key_hash == hash_key("any")
    closed = GatewaySettings(key_hashes=[hash_key("secret")])
    assert authenticate({"authorization": "Bearer secret"}, "", closed).key_hash
    with pytest.raises(AuthError):
        authenticate({"x-api-key": "nope"}, "", closed)
    with pytest.raises(AuthError):
        authenticate({}, "", closed)


def test_identity_from_claude_code_codex_and_sdks() -> None:
    peek = peek_decoder.decode(
        b'{"model":"m","metadata":{"user_id":"{\\"device_id\\":\\"d\\",'
        b'\\"account_uuid\\":\\"acc\\",\\"session_id\\":\\"s1\\"}"}}')
    ident = identify({"user-agent": "claude-cli/2.1.197 (external, cli)"}, peek)
    assert ident == ("claude-code", "acc", "s1")
    codex = identify({"originator": "codex_cli_rs", "session-id": "th-9"},
                     peek_decoder.decode(b'{"model":"gpt-5"}'))
    assert codex.client == "codex" and codex.session == "th-9"
    plain = identify({"user-agent": "OpenAI/Python 3.57.0"},
                     peek_decoder.decode(b'{"model":"x","user":"u-1"}'))
    assert plain == ("openai-sdk", "u-1", None)
    assert identify({"user-agent": "GeminiCLI/0.61.0"}, None).client == "gemini-cli"
