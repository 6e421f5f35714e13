"""What the real Gemini CLI (0.61) sends through a translated provider
(bench/real_clients/gemini_cli.py found these)."""

from __future__ import annotations

import json
from typing import Any

from workers.translator import prepare

from ._clients import events, translate_stream

# The routing classifier's generationConfig, as Gemini CLI 0.61 sends it: OpenAPI-style
# UPPERCASE types inside responseJsonSchema.
CLASSIFIER = {
    "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
    "generationConfig": {
        "temperature": 1, "topP": 0.95, "topK": 64, "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "OBJECT", "properties": {
            "complexity_reasoning": {"type": "STRING"},
            "complexity_score": {"type": "INTEGER"}},
            "required": ["complexity_reasoning", "complexity_score"]}}}


def req(provider: str, body: dict[str, Any]) -> dict[str, Any]:
    out = prepare("gemini", provider, json.dumps(body).encode(), model="up", stream=False)
    return json.loads(out.body)


def test_response_json_schema_types_are_lower_case_for_openai() -> None:
    chat = req("openai-chat", CLASSIFIER)["response_format"]["json_schema"]["schema"]
    resp = req("openai-responses", CLASSIFIER)["text"]["format"]["schema"]
    for schema in (chat, resp):
        assert schema["type"] == "object"
        assert schema["properties"]["complexity_score"]["type"] == "integer"
        assert schema["properties"]["complexity_reasoning"]["type"] == "string"


def test_anthropic_never_gets_temperature_and_top_p_together() -> None:
    out = req("anthropic", CLASSIFIER)  # no thinkingConfig: sampling parameters are sent
    assert out["temperature"] == 1
    assert "top_p" not in out


def anth_sse(*docs: dict[str, Any]) -> bytes:
    return b"".join(f"event: {d['type']}\ndata: {json.dumps(d)}\n\n".encode() for d in docs)


def test_streamed_anthropic_thinking_survives_a_gemini_cli_turn() -> None:
    body = anth_sse(
        {"type": "message_start", "message": {"id": "m1", "model": "c", "content": [],
                                              "usage": {"input_tokens": 5, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "thinking_delta", "thinking": "Run the "}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "thinking_delta", "thinking": "shell tool."}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "signature_delta", "signature": "SIG-1"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "run_shell_command", "input": {}}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": '{"command": "ls"}'}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
         "usage": {"output_tokens": 9}},
        {"type": "message_stop"})
    chunks = [d for _, d in events(translate_stream("anthropic", "gemini", body))]
    call = next(p for c in chunks for p in c["candidates"][0]["content"]["parts"]
                if "functionCall" in p)
    # Gemini CLI drops thought parts from its history: it sends back only the functionCall
    # with its thoughtSignature, then the functionResponse.
    history = {"contents": [
        {"role": "user", "parts": [{"text": "list"}]},
        {"role": "model", "parts": [call]},
        {"role": "user", "parts": [{"functionResponse": {
            "id": call["functionCall"]["id"], "name": "run_shell_command",
            "response": {"output": "a.txt"}}}]}],
        "generationConfig": {"thinkingConfig": {"includeThoughts": True,
                                                "thinkingBudget": 4096}}}
    out = req("anthropic", history)
    thinking = out["messages"][1]["content"][0]
    assert thinking == {"type": "thinking", "thinking": "Run the shell tool.",
                        "signature": "SIG-1"}


def test_thinking_without_client_max_tokens_leaves_room_for_the_answer() -> None:
    """Gemini CLI sets no maxOutputTokens: the Anthropic request must not spend the whole
    default on thinking (budget 8191 of max_tokens 8192 left the answer one token)."""
    body = {"contents": [{"role": "user", "parts": [{"text": "think hard"}]}],
            "generationConfig": {"thinkingConfig": {"thinkingLevel": "HIGH",
                                                    "includeThoughts": True}}}
    out = json.loads(prepare("gemini", "anthropic", json.dumps(body).encode(),
                             model="claude-sonnet-4-5", stream=True).body)
    budget = out["thinking"]["budget_tokens"]
    assert budget == 24576 and out["max_tokens"] == 32000
    assert out["max_tokens"] - budget >= 4096
    body["generationConfig"]["maxOutputTokens"] = 3000  # a client limit is kept as given
    out = json.loads(prepare("gemini", "anthropic", json.dumps(body).encode(),
                             model="claude-sonnet-4-5", stream=True).body)
    assert out["max_tokens"] == 3000 and out["thinking"]["budget_tokens"] == 1500
    body["generationConfig"]["thinkingConfig"] = {"thinkingBudget": 2500}  # an explicit budget
    out = json.loads(prepare("gemini", "anthropic", json.dumps(body).encode(),
                             model="claude-sonnet-4-5", stream=True).body)
    assert out["max_tokens"] == 3000 and out["thinking"]["budget_tokens"] == 2500


def test_no_sampling_parameters_next_to_reasoning_for_openai() -> None:
    """Gemini CLI always sends temperature 1 / topP 0.95 with a thinking level; OpenAI's
    reasoning models answer 400 to sampling parameters next to reasoning."""
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"temperature": 1, "topP": 0.95,
                                 "thinkingConfig": {"thinkingLevel": "HIGH"}}}
    for target, effort_key in (("openai-responses", "reasoning"),
                               ("openai-chat", "reasoning_effort")):
        prep = prepare("gemini", target, json.dumps(body).encode(), model="gpt-5", stream=True)
        out = json.loads(prep.body)
        assert effort_key in out and "temperature" not in out and "top_p" not in out, target
        assert any("temperature" in d for d in prep.context.dropped)
    plain = {**body, "generationConfig": {"temperature": 0.2, "topP": 0.9}}
    for target in ("openai-responses", "openai-chat"):  # without reasoning they are kept
        out = json.loads(prepare("gemini", target, json.dumps(plain).encode(), model="gpt-4.1",
                                 stream=True).body)
        assert out["temperature"] == 0.2 and out["top_p"] == 0.9
