"""Session identity from what the real CLIs send (tests/fixtures/clients: recorded requests),
pure: no servers."""

from __future__ import annotations

import json
from pathlib import Path

from edge.identity import gemini_session, identify, peek_body

CLIENTS = Path(__file__).parent.parent / "fixtures" / "clients"


def _recorded(name: str) -> tuple[dict[str, str], bytes]:
    headers = json.loads((CLIENTS / f"{name}.headers.json").read_text())
    return {k.lower(): v for k, v in headers.items()}, (CLIENTS / f"{name}.json").read_bytes()


def test_claude_code_recorded() -> None:
    headers, body = _recorded("claude_code_2.1.197_recorded")
    ident = identify(headers, peek_body(body))
    assert ident.client == "claude-code"
    assert ident.session == "a4aa0c87-92b1-486c-b918-e890bd70d3e2"
    # the header alone says the same (a request without metadata)
    alone = identify(headers, peek_body(b'{"model":"claude-opus-4-8"}'))
    assert alone.session == ident.session
    # no account: the device id is the user
    assert ident.user == "2422f48adc3e343853e01fd4a5be89a7ff01c0a79bcb02c1f4722d55ab02f5bc"


def test_claude_code_metadata_forms() -> None:
    body = (CLIENTS / "claude_code_request.json").read_bytes()
    ident = identify({"user-agent": "claude-cli/2.1.197"}, peek_body(body))
    assert ident.session == "5e6f7a8b-1111-4111-8111-000000000002"
    assert ident.user == "a1b2c3d4-0000-4000-8000-000000000001"
    # Claude Code 1.x: one string
    v1 = json.dumps({"model": "m", "metadata": {"user_id": (
        "user_0123abcd_account_a1b2c3d4-0000-4000-8000-000000000001_session_"
        "5e6f7a8b-1111-4111-8111-000000000009")}}).encode()
    old = identify({"user-agent": "claude-cli/1.0.100"}, peek_body(v1))
    assert old.session == "5e6f7a8b-1111-4111-8111-000000000009"
    assert old.user == "a1b2c3d4-0000-4000-8000-000000000001"
    # anything else in metadata.user_id is a user, no session
    other = identify({}, peek_body(b'{"model":"m","metadata":{"user_id":"alice"}}'))
    assert (other.user, other.session) == ("alice", None)
    bad = json.dumps({"model": "m", "metadata": {"user_id": '{"session_id": 5}'}}).encode()
    broken = identify({}, peek_body(bad))
    assert broken.session is None and broken.user == '{"session_id": 5}'


def test_codex_recorded() -> None:
    headers, body = _recorded("codex_0.171.0_recorded")
    ident = identify(headers, peek_body(body))
    assert ident.client == "codex"
    assert ident.session == "01a21cb6-4561-7703-9933-939bb79b6ef1"
    # prompt_cache_key alone (the header dropped by a proxy) is the same session
    del headers["session-id"]
    assert identify(headers, peek_body(body)).session == ident.session
    hand = identify({"originator": "codex_cli_rs"},
                    peek_body((CLIENTS / "codex_request.json").read_bytes()))
    assert hand.session == "5e6f7a8b-2222-4222-8222-000000000003"


def test_gemini_cli_recorded_turns_share_a_derived_session() -> None:
    headers, body = _recorded("gemini_cli_0.61.0_recorded")
    ident = identify(headers, peek_body(body))
    assert ident.client == "gemini-cli"
    assert ident.session is not None and ident.session.startswith("gemini-cli-")
    assert len(ident.session) == len("gemini-cli-") + 16
    # turn 2 of the same run (tool round trip): the opening is the same, so is the session
    turn1 = json.loads(body)
    turn1["contents"] = turn1["contents"][:1]
    assert identify(headers, peek_body(json.dumps(turn1).encode())).session == ident.session
    # a token count is not a turn: no session made up for it
    assert identify(headers, peek_body(body), derive=False).session is None
    # another conversation (another first prompt): another session
    other = json.loads(body)
    other["contents"][0]["parts"][1]["text"] = "something else"
    assert identify(headers, peek_body(json.dumps(other).encode())).session != ident.session


def test_gemini_cli_classifier_chat_and_next_speaker_are_one_session() -> None:
    """The three requests of one recorded `gemini -p` run: the routing classifier sends the
    opening as two turns, the chat as one turn of two parts; same session all the same."""
    run = json.loads((CLIENTS / "gemini_cli_0.61.0_one_session.json").read_text())
    headers = {"user-agent": "GeminiCLI/0.61.0/gemini-3.8-flash (linux; x64; terminal)"}
    sessions = {r["kind"]: identify(headers, peek_body(json.dumps(r["body"]).encode())).session
                for r in run}
    assert set(sessions) == {"chat", "routing_classifier", "next_speaker"}
    assert len(set(sessions.values())) == 1 and None not in sessions.values()


def test_gemini_sdk_gets_no_derived_session() -> None:
    body = (CLIENTS / "gemini_cli_request.json").read_bytes()
    sdk = identify({"x-goog-api-client": "google-genai-sdk/1.30.0 gl-python/3.12"},
                   peek_body(body))
    assert sdk.client == "google-genai" and sdk.session is None
    assert gemini_session(b'"not a list"') is None
    assert gemini_session(b"[]") is None
    assert gemini_session(b'[{"role":"model","parts":[{"text":"hi"}]}]') is None


def test_explicit_header_wins_for_every_client() -> None:
    for name in ("claude_code_2.1.197_recorded", "codex_0.171.0_recorded",
                 "gemini_cli_0.61.0_recorded"):
        headers, body = _recorded(name)
        headers["x-codeswitch-session"] = "mine-1"
        assert identify(headers, peek_body(body)).session == "mine-1", name
    sdk = identify({"user-agent": "OpenAI/Python 3.57.0", "x-codeswitch-session": "s-42"},
                   peek_body(b'{"model":"gpt-4.1"}'))
    assert (sdk.client, sdk.session) == ("openai-sdk", "s-42")
    assert identify({}, peek_body(b'{"model":"gpt-4.1"}')).session is None


def test_long_ids_are_cut() -> None:
    ident = identify({"x-codeswitch-session": "s" * 500}, peek_body(b'{"model":"m"}'))
    assert ident.session == "s" * 128
