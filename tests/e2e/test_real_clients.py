"""What the real CLIs send (tests/fixtures/clients, assembled from CLIENTS.md) through the
gateway to a provider of every dialect, and what they need back: Claude Code's SSE grammar,
Codex's response.completed with id and usage, Gemini CLI's finishReason on the last chunk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import DIALECTS, World, only
from workers.translator.sse import SSEDecoder

CLIENTS = Path(__file__).resolve().parent.parent / "fixtures" / "clients"


def _events(raw: bytes) -> list[tuple[str | None, Any]]:
    dec = SSEDecoder()
    evs = dec.feed(raw) + dec.flush()
    return [(e.event, json.loads(e.data)) for e in evs if e.data and e.data != "[DONE]"]


def _check_upstream(provider: str, body: Any) -> None:
    """The translated request is well-formed for the provider's own grammar."""
    blob = json.dumps(body)
    if provider == "gemini":
        assert "$schema" not in blob and "additionalProperties" not in blob
        assert '"const"' not in blob
        for tool in body.get("tools", []):
            for decl in tool.get("functionDeclarations", []):
                assert all(c.isalnum() or c in "_.-:" for c in decl["name"])
        assert body["contents"] and all(c["role"] in ("user", "model") for c in body["contents"])
    elif provider == "anthropic":
        assert all(m["role"] in ("user", "assistant") for m in body["messages"])
        assert body["max_tokens"] > 0
        for m in body["messages"]:
            if isinstance(m["content"], list):
                for block in m["content"]:
                    if block.get("type") == "text":
                        assert block["text"], "empty text blocks are rejected by Anthropic"
        for tool in body.get("tools", []):
            name = tool.get("name", "")
            assert 1 <= len(name) <= 64
    elif provider == "openai-chat":
        assert body["messages"][0]["role"] in ("system", "developer")
        for tool in body.get("tools", []):
            assert tool["type"] == "function" and tool["function"]["name"]
    else:
        assert body["input"]
        for item in body["input"]:
            assert item.get("type") in (None, "message", "function_call",
                                        "function_call_output", "reasoning",
                                        "custom_tool_call", "custom_tool_call_output")


CLAUDE_RECORDED = "claude_code_2.1.197_recorded"  # a real Claude Code's tool turn 2


@pytest.mark.parametrize("sample", ["claude_code_request", CLAUDE_RECORDED])
@pytest.mark.parametrize("provider", DIALECTS)
def test_claude_code_session(world: World, provider: str, sample: str) -> None:
    gw, fakes = world
    fake = only(gw, fakes, provider)
    raw = (CLIENTS / f"{sample}.json").read_bytes()
    headers = {"anthropic-version": "2023-06-01", "x-app": "cli",
               "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
               "user-agent": "claude-cli/2.1.197 (external, cli)",
               "authorization": "Bearer anything"}
    if sample == CLAUDE_RECORDED:
        headers = json.loads((CLIENTS / f"{sample}.headers.json").read_text())
    with gw.client() as c:
        r = c.post("/v1/messages?beta=true", content=raw, headers=headers)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.content)
    names = [name for name, _ in events if name != "ping"]
    assert all(name == doc["type"] for name, doc in events), "event: names match JSON types"
    assert names[0] == "message_start" and names.count("message_start") == 1
    assert names[-1] == "message_stop" and "error" not in names
    assert names[-2] == "message_delta"
    starts = [d["index"] for n, d in events if n == "content_block_start"]
    stops = [d["index"] for n, d in events if n == "content_block_stop"]
    assert starts and starts == stops, "every block is opened and closed"
    text = "".join(d["delta"].get("text", "") for n, d in events
                   if n == "content_block_delta" and d["delta"]["type"] == "text_delta")
    assert text
    stop = [d for n, d in events if n == "message_delta"][-1]
    assert stop["delta"]["stop_reason"] == "end_turn"
    assert stop["usage"]["output_tokens"] > 0
    if provider == "anthropic":  # pass-through: the body goes upstream exactly as sent
        assert fake.requests[-1].body == raw
    else:
        _check_upstream(provider, fake.requests[-1].json)
    if sample == CLAUDE_RECORDED:  # the Bash call and its result survive any translation
        blob = fake.requests[-1].body.decode()
        # Claude Code's billing line is for Anthropic only
        assert ("x-anthropic-billing-header" in blob) is (provider == "anthropic")
        call = json.loads(raw)["messages"][2]["content"][0]
        assert call["type"] == "tool_use" and call["input"]["command"] in blob
        assert "CS_TOOL_MARKER_42" in blob


CODEX_RECORDED = "codex_0.171.0_recorded"  # a real Codex CLI's request, headers included


@pytest.mark.parametrize("sample", ["codex_request", CODEX_RECORDED])
@pytest.mark.parametrize("provider", DIALECTS)
def test_codex_turn(world: World, provider: str, sample: str) -> None:
    gw, fakes = world
    fake = only(gw, fakes, provider)
    raw = (CLIENTS / f"{sample}.json").read_bytes()
    headers = {"authorization": "Bearer anything", "originator": "codex_cli_rs",
               "session-id": "5e6f7a8b-2222", "accept-encoding": "zstd,gzip"}
    if sample == CODEX_RECORDED:
        headers = json.loads((CLIENTS / f"{sample}.headers.json").read_text())
    with gw.client() as c:
        r = c.post("/v1/responses", content=raw, headers=headers)
    assert r.status_code == 200, r.text[:500]
    events = _events(r.content)
    types = [d["type"] for _, d in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed" and types.count("response.completed") == 1
    seqs = [d["sequence_number"] for _, d in events if "sequence_number" in d]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    done_items = [d["item"] for _, d in events if d["type"] == "response.output_item.done"]
    texts = [c["text"] for item in done_items if item["type"] == "message"
             for c in item["content"] if c["type"] == "output_text"]
    assert texts and all(texts), "Codex takes the text from output_item.done"
    final = events[-1][1]["response"]
    assert final["id"] and final["status"] == "completed"
    usage = final["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    if provider == "openai-responses":
        assert fake.requests[-1].body == raw
    else:
        _check_upstream(provider, fake.requests[-1].json)


GEMINI_RECORDED = "gemini_cli_0.61.0_recorded"  # a real Gemini CLI's tool turn


@pytest.mark.parametrize("sample", ["gemini_cli_request", GEMINI_RECORDED])
@pytest.mark.parametrize("provider", DIALECTS)
def test_gemini_cli_turn(world: World, provider: str, sample: str) -> None:
    gw, fakes = world
    fake = only(gw, fakes, provider)
    body = json.loads((CLIENTS / f"{sample}.json").read_text())
    headers = {"x-goog-api-key": "anything", "user-agent": "GeminiCLI/0.61.0 (linux; x64)"}
    if sample == GEMINI_RECORDED:
        headers = json.loads((CLIENTS / f"{sample}.headers.json").read_text())
    with gw.client() as c:
        r = c.post("/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", json=body,
                   headers=headers)
    assert r.status_code == 200, r.text[:500]
    events = _events(r.content)
    assert all(name is None for name, _ in events), "Gemini SSE is data-only"
    chunks = [d for _, d in events]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    text = "".join(p.get("text", "") for ch in chunks for cand in ch.get("candidates", [])
                   for p in cand.get("content", {}).get("parts", []) if not p.get("thought"))
    assert text
    assert chunks[-1]["usageMetadata"]["totalTokenCount"] > 0
    sent = fake.requests[-1].json
    if provider == "gemini":  # pass-through: the body reaches Gemini as the CLI sent it
        assert sent == body
    else:
        _check_upstream(provider, sent)
    if sample == GEMINI_RECORDED:
        call, result = body["contents"][-2]["parts"][0], body["contents"][-1]["parts"][0]
        if provider == "gemini":  # unchanged, the call's thoughtSignature included
            assert sent["contents"][-2:] == body["contents"][-2:]
        else:  # the call and its output survive translation
            blob = json.dumps(sent)
            assert call["functionCall"]["name"] in blob and "cs-tool-ok" in blob
            assert call["thoughtSignature"] not in blob, "a Gemini signature stays with Gemini"
        assert result["functionResponse"]["name"] == "run_shell_command"
    elif provider == "gemini":  # pass-through: Gemini CLI's signature reaches Gemini unchanged
        assert sent["contents"][1]["parts"][0]["thoughtSignature"] == \
            "skip_thought_signature_validator"
    else:  # the tool round trip survives translation
        assert "list_directory" in json.dumps(sent) and "README.md" in json.dumps(sent)
