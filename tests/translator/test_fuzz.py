"""Hostile input to the codecs: whatever a client or an upstream sends, the translator answers
with a translation or a ``TranslationError`` (a 400/502 in the client's dialect), never
another exception (issue 10). Bodies are generated per dialect with the real shapes (messages,
contents, input items, content parts, tools, schemas, stream events) where every field may
instead hold a value of any JSON type, plus JSON nested far deeper than any client sends.

Kept to a few seconds (CI has 2 cores): a modest ``max_examples``, no deadline.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import Usage
from workers.translator import (
    COUNTING_DIALECTS,
    StreamTranslator,
    TranslationError,
    UsageTracker,
    count_tokens_estimate,
    count_tokens_request,
    count_tokens_result,
    prepare,
    translate_error,
    translate_response,
)

DIALECTS = ("anthropic", "openai-chat", "openai-responses", "gemini")
FUZZ = settings(max_examples=40, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

S = st.SearchStrategy

# -- JSON values ------------------------------------------------------------------------------

scalar: S[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
    st.sampled_from(["", "0", "null", "{}", "[]", "data:", "data:;base64,", "cs1:", "\x00",
                     "cs1:gemini:", "STOP", "tool_use", "function", "custom", "message"]),
)
any_json: S[Any] = st.recursive(
    scalar, lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def w(strategy: S[Any]) -> S[Any]:
    """The field's plausible value most of the time, a value of any JSON type otherwise."""
    return st.one_of(strategy, strategy, strategy, any_json)


def obj(fixed: dict[str, S[Any]] | None = None, /, **optional: S[Any]) -> S[dict[str, Any]]:
    """A JSON object with the ``fixed`` fields and each of ``optional`` present or not."""
    return st.fixed_dictionaries(fixed or {}, optional=optional)


def some(strategy: S[Any], n: int = 3) -> S[list[Any]]:
    return st.lists(strategy, max_size=n)


text = st.text(max_size=12)
ints = st.integers(-5, 100_000)
num = st.one_of(ints, st.floats(-2, 2, allow_nan=False))
flag = st.booleans()
name = st.one_of(st.sampled_from(["Read", "bash", "mcp__srv__tool", "a.b:c", "9x", "", "x" * 80,
                                  "päth/ünï"]), text)
args_json = st.one_of(st.just("{}"), st.just('{"a": 1}'), st.just('{"a": '), st.just("[1]"),
                      text)
# cs1:<source>:<base64 of a JSON list> is a signature carried across dialects (_util.carry)
carried = st.builds(
    lambda src, doc: f"cs1:{src}:" + base64.urlsafe_b64encode(json.dumps(doc).encode()).decode(),
    st.sampled_from(["anthropic", "gemini", "openai-responses", "x", ""]),
    st.one_of(some(any_json, 6), any_json))
signature = st.one_of(text, carried, st.just("skip_thought_signature_validator"))
url = st.one_of(st.sampled_from(["https://x/y.png", "data:image/png;base64,AAAA",
                                 "data:application/pdf;base64,AA", "data:", "gs://b/o"]), text)
media = st.sampled_from(["image/png", "image/jpeg", "application/pdf", "text/plain", ""])
usage_ints = st.dictionaries(st.sampled_from([
    "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
    "prompt_tokens", "completion_tokens", "total_tokens", "promptTokenCount",
    "candidatesTokenCount", "thoughtsTokenCount", "cachedContentTokenCount",
    "totalTokenCount", "toolUsePromptTokenCount"]), w(ints), max_size=5)
usage_details = obj(prompt_tokens_details=w(obj(cached_tokens=w(ints))),
                    completion_tokens_details=w(obj(reasoning_tokens=w(ints))),
                    input_tokens_details=w(obj(cached_tokens=w(ints))),
                    output_tokens_details=w(obj(reasoning_tokens=w(ints))))
usage_doc = w(st.builds(lambda u, d: {**u, **d}, usage_ints, usage_details))

schema: S[Any] = st.recursive(
    obj(type=w(st.sampled_from(["object", "string", "array", "integer", "null", "OBJECT",
                                "STRING"]) | st.just(["string", "null"]))),
    lambda inner: obj(
        type=w(st.sampled_from(["object", "array", "string"])),
        properties=w(st.dictionaries(text, inner, max_size=3)),
        items=w(st.one_of(inner, some(inner))),
        required=w(some(text)),
        anyOf=w(some(inner)), oneOf=w(some(inner)), allOf=w(some(inner)),
        enum=w(some(scalar)), const=scalar, format=w(st.sampled_from(["date-time", "enum"])),
        **{"$ref": w(st.sampled_from(["#/$defs/a", "#/definitions/b", "#/$defs/zz"])),
           "$defs": w(st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2)),
           "definitions": w(st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2)),
           "additionalProperties": w(flag)}),
    max_leaves=6)

# -- Anthropic --------------------------------------------------------------------------------

a_leaf = st.one_of(
    obj({"type": st.just("text")}, text=w(text), cache_control=w(obj(type=w(text)))),
    obj({"type": st.sampled_from(["image", "document"])}, source=w(obj(
        type=w(st.sampled_from(["base64", "url", "file", "text"])), media_type=w(media),
        data=w(text), url=w(url), file_id=w(text)))),
    obj({"type": st.just("tool_use")}, id=w(text), name=w(name),
        input=w(st.dictionaries(text, any_json, max_size=3))),
    obj({"type": st.sampled_from(["thinking", "redacted_thinking"])}, thinking=w(text),
        signature=w(signature), data=w(signature)),
    obj({"type": w(st.sampled_from(["server_tool_use", "web_search_tool_result", "x"]))}),
)
a_block = st.one_of(a_leaf, obj({"type": st.just("tool_result")}, tool_use_id=w(text),
                                is_error=w(flag), content=w(st.one_of(text, some(a_leaf)))))
a_content = w(st.one_of(text, some(a_block, 4)))
a_message = obj(role=w(st.sampled_from(["user", "assistant", "system", "tool", ""])),
                content=a_content)
a_tool = obj(name=w(name), description=w(text), input_schema=w(schema),
             type=w(st.sampled_from(["custom", "web_search_20250305", "bash_20250124"])),
             cache_control=w(obj(type=w(text))))
anthropic_request = obj(
    model=w(text), messages=w(some(a_message, 4)), system=w(st.one_of(text, some(a_block))),
    tools=w(some(a_tool)), max_tokens=w(ints), temperature=w(num), top_p=w(num),
    top_k=w(ints), stream=w(flag), stop_sequences=w(some(text)),
    tool_choice=w(obj(type=w(st.sampled_from(["auto", "any", "tool", "none"])), name=w(name),
                      disable_parallel_tool_use=w(flag))),
    thinking=w(obj(type=w(st.sampled_from(["enabled", "adaptive", "disabled"])),
                   budget_tokens=w(ints))),
    output_config=w(obj(effort=w(st.sampled_from(["low", "high", "max"])))),
    output_format=w(obj(type=w(st.just("json_schema")), schema=w(schema))),
    metadata=w(obj(user_id=w(text))), service_tier=w(text),
)

# -- OpenAI Chat ------------------------------------------------------------------------------

c_part = obj({"type": w(st.sampled_from(["text", "image_url", "file", "refusal", "input_audio"]))},
             text=w(text), refusal=w(text),
             image_url=w(st.one_of(url, obj(url=w(url), detail=w(text)))),
             file=w(obj(file_data=w(url), file_id=w(text), filename=w(text))))
c_call = obj(id=w(text), type=w(st.sampled_from(["function", "custom"])),
             function=w(obj(name=w(name), arguments=w(args_json))),
             custom=w(obj(name=w(name), input=w(text))))
c_message = obj(
    role=w(st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"])),
    content=w(st.one_of(st.none(), text, some(c_part))), tool_calls=w(some(c_call)),
    tool_call_id=w(text), name=w(name), reasoning_content=w(text), refusal=w(text),
    function_call=w(obj(name=w(name), arguments=w(args_json))))
c_tool = obj(type=w(st.sampled_from(["function", "custom"])),
             function=w(obj(name=w(name), description=w(text), parameters=w(schema),
                            strict=w(flag))),
             custom=w(obj(name=w(name), description=w(text), format=any_json)))
c_choice = w(st.one_of(st.sampled_from(["auto", "none", "required", "x"]),
                       obj(type=w(st.sampled_from(["function", "allowed_tools"])),
                           function=w(obj(name=w(name))), name=w(name),
                           allowed_tools=w(obj(mode=w(text))))))
chat_request = obj(
    model=w(text), messages=w(some(c_message, 4)), tools=w(some(c_tool)), tool_choice=c_choice,
    parallel_tool_calls=w(flag), max_tokens=w(ints), max_completion_tokens=w(ints),
    temperature=w(num), top_p=w(num), stop=w(st.one_of(text, some(text))), n=w(ints),
    reasoning_effort=w(st.sampled_from(["minimal", "low", "high"])), stream=w(flag),
    stream_options=w(obj(include_usage=w(flag))), seed=w(ints), user=w(text),
    response_format=w(obj(type=w(st.sampled_from(["json_schema", "json_object", "text"])),
                          json_schema=w(obj(name=w(text), schema=w(schema), strict=w(flag))))),
    metadata=w(st.dictionaries(text, text, max_size=2)), service_tier=w(text),
    prompt_cache_key=w(text), verbosity=w(text),
)

# -- OpenAI Responses -------------------------------------------------------------------------

r_part = obj({"type": w(st.sampled_from(["input_text", "output_text", "text", "summary_text",
                                         "refusal", "input_image", "input_file"]))},
             text=w(text), refusal=w(text), image_url=w(st.one_of(url, obj(url=w(url)))),
             file_id=w(text), file_data=w(url), file_url=w(url), detail=w(text))
r_item = obj(
    type=w(st.sampled_from(["message", "function_call", "custom_tool_call", "reasoning",
                            "function_call_output", "custom_tool_call_output",
                            "web_search_call", "item_reference"])),
    role=w(st.sampled_from(["user", "assistant", "system", "developer"])),
    content=w(st.one_of(text, some(r_part))), call_id=w(text), id=w(text), name=w(name),
    arguments=w(args_json), input=w(text), output=w(st.one_of(text, some(r_part))),
    summary=w(some(obj(type=w(text), text=w(text)))), encrypted_content=w(signature),
    status=w(text))
r_tool = st.recursive(
    obj(type=w(st.sampled_from(["function", "custom", "web_search"])), name=w(name),
        description=w(text), parameters=w(schema), strict=w(flag), format=any_json),
    lambda inner: obj(type=w(st.just("namespace")), name=w(name), tools=w(some(inner))),
    max_leaves=4)
responses_request = obj(
    model=w(text), input=w(st.one_of(text, some(r_item, 5))), instructions=w(text),
    tools=w(some(r_tool)), tool_choice=c_choice, parallel_tool_calls=w(flag),
    max_output_tokens=w(ints), temperature=w(num), top_p=w(num), stream=w(flag),
    reasoning=w(obj(effort=w(st.sampled_from(["none", "low", "high"])),
                    summary=w(st.sampled_from(["auto", "detailed"])))),
    text=w(obj(format=w(obj(type=w(st.sampled_from(["json_schema", "json_object", "text"])),
                            schema=w(schema), name=w(text), strict=w(flag))),
               verbosity=w(text))),
    user=w(text), store=w(flag), include=w(some(text)), metadata=w(any_json),
)

# -- Gemini -----------------------------------------------------------------------------------

g_part = obj(text=w(text), thought=w(flag), thoughtSignature=w(signature),
             functionCall=w(obj(name=w(name), args=w(any_json), id=w(text))),
             functionResponse=w(obj(name=w(name), id=w(text), response=w(any_json))),
             inlineData=w(obj(mimeType=w(media), data=w(text))),
             fileData=w(obj(mimeType=w(media), fileUri=w(url))))
g_content = obj(role=w(st.sampled_from(["user", "model", "function"])),
                parts=w(st.one_of(some(g_part, 4), g_part)))
gemini_request = obj(
    contents=w(st.one_of(some(g_content, 4), g_content)),
    systemInstruction=w(st.one_of(text, obj(parts=w(some(g_part))))),
    tools=w(st.one_of(some(obj(functionDeclarations=w(some(obj(
        name=w(name), description=w(text), parameters=w(schema),
        parametersJsonSchema=w(schema)))), googleSearch=w(obj()))), obj(googleSearch=obj()))),
    toolConfig=w(obj(functionCallingConfig=w(obj(
        mode=w(st.sampled_from(["ANY", "AUTO", "NONE", "VALIDATED"])),
        allowedFunctionNames=w(some(name)))))),
    generationConfig=w(obj(
        maxOutputTokens=w(ints), temperature=w(num), topP=w(num), topK=w(ints),
        stopSequences=w(some(text)), candidateCount=w(ints), seed=w(ints),
        responseMimeType=w(st.sampled_from(["application/json", "text/plain"])),
        responseJsonSchema=w(schema), responseSchema=w(schema),
        thinkingConfig=w(obj(thinkingBudget=w(ints), thinkingLevel=w(text),
                             includeThoughts=w(flag))))),
    safetySettings=w(some(any_json)),
)

REQUESTS: dict[str, S[Any]] = {
    "anthropic": anthropic_request, "openai-chat": chat_request,
    "openai-responses": responses_request, "gemini": gemini_request,
}

# -- responses --------------------------------------------------------------------------------

finish = st.sampled_from(["end_turn", "tool_use", "max_tokens", "stop", "length",
                          "tool_calls", "STOP", "MAX_TOKENS", "MALFORMED_FUNCTION_CALL",
                          "SAFETY", "refusal", "content_filter"])
a_response = obj(id=w(text), type=w(st.just("message")), role=w(text), model=w(text),
                 content=w(some(a_block, 4)), stop_reason=w(finish),
                 stop_sequence=w(text), usage=usage_doc)
c_response = obj(id=w(text), model=w(text), usage=usage_doc, choices=w(some(obj(
    index=w(ints), message=w(c_message), finish_reason=w(finish)))))
r_response = obj(id=w(text), model=w(text), usage=usage_doc, output=w(some(r_item, 4)),
                 status=w(st.sampled_from(["completed", "incomplete", "failed"])),
                 incomplete_details=w(obj(reason=w(text))),
                 error=w(obj(code=w(text), message=w(text))))
g_response = obj(candidates=w(some(obj(content=w(g_content), finishReason=w(finish),
                                       index=w(ints)))),
                 usageMetadata=usage_doc, modelVersion=w(text), responseId=w(text),
                 promptFeedback=w(obj(blockReason=w(text))))
RESPONSES: dict[str, S[Any]] = {
    "anthropic": a_response, "openai-chat": c_response, "openai-responses": r_response,
    "gemini": st.one_of(g_response, some(g_response)),
}

# -- stream events ----------------------------------------------------------------------------

a_delta = obj({"type": w(st.sampled_from(["text_delta", "input_json_delta", "thinking_delta",
                                          "signature_delta"]))},
              text=w(text), partial_json=w(args_json), thinking=w(text),
              signature=w(signature))
a_event = st.one_of(
    obj({"type": st.just("message_start")}, message=w(a_response)),
    obj({"type": st.just("content_block_start")}, index=w(ints), content_block=w(a_block)),
    obj({"type": st.just("content_block_delta")}, index=w(st.integers(0, 3)), delta=w(a_delta)),
    obj({"type": st.just("content_block_stop")}, index=w(st.integers(0, 3))),
    obj({"type": st.just("message_delta")}, delta=w(obj(stop_reason=w(finish),
                                                        stop_sequence=w(text))),
        usage=usage_doc),
    obj({"type": st.sampled_from(["message_stop", "ping"])}),
    obj({"type": st.just("error")}, error=w(obj(type=w(text), message=w(text)))),
)
c_chunk = st.one_of(
    obj(id=w(text), model=w(text), usage=usage_doc, choices=w(some(obj(
        index=w(st.integers(0, 1)), finish_reason=w(finish),
        delta=w(obj(role=w(text), content=w(text), reasoning_content=w(text),
                    reasoning=w(text), refusal=w(text), tool_calls=w(some(obj(
                        index=w(st.integers(0, 2)), id=w(text), type=w(text),
                        function=w(obj(name=w(name), arguments=w(args_json)))))))))))),
    obj({"error": w(obj(code=w(ints), message=w(text), type=w(text)))}),
)
r_event = obj(
    {"type": st.sampled_from([
        "response.created", "response.output_item.added", "response.output_item.done",
        "response.output_text.delta", "response.refusal.delta",
        "response.reasoning_summary_text.delta", "response.reasoning_text.delta",
        "response.reasoning_summary_part.added", "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta", "response.completed", "response.incomplete",
        "response.failed", "error"])},
    output_index=w(st.integers(0, 3)), summary_index=w(st.integers(0, 2)), item=w(r_item),
    delta=w(text), response=w(r_response), item_id=w(text), sequence_number=w(ints),
    error=w(obj(code=w(text), message=w(text))), code=w(text), message=w(text))
EVENTS: dict[str, S[Any]] = {
    "anthropic": a_event, "openai-chat": st.one_of(c_chunk, st.just("[DONE]")),
    "openai-responses": r_event, "gemini": st.one_of(g_response, some(g_response, 2)),
}


def sse(events: list[tuple[str | None, Any]]) -> bytes:
    out = []
    for name, doc in events:
        data = doc if isinstance(doc, str) else json.dumps(doc)
        out.append((f"event: {name}\n" if name else "") + f"data: {data}\n\n")
    return "".join(out).encode()


@st.composite
def stream_bytes(draw: st.DrawFn, dialect: str) -> tuple[bytes, list[int]]:
    """An upstream stream of generated events (or any bytes) and where to cut it into reads."""
    if draw(st.integers(0, 9)) == 0:
        body = draw(st.binary(max_size=200))
    else:
        events = draw(some(st.tuples(
            st.one_of(st.none(), st.sampled_from(["message", "error", "content_block_delta"])),
            w(EVENTS[dialect])), 8))
        body = sse(events)
        if draw(flag):  # no blank line between events, or CRLF line ends
            body = body.replace(b"\n\n", b"\n") if draw(flag) else body.replace(b"\n", b"\r\n")
    cuts = sorted(draw(st.lists(st.integers(0, max(len(body), 1)), max_size=6)))
    return body, cuts


def pieces(body: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]


def only_translation_error(fn: Callable[[], Any]) -> Any:
    """``fn()``'s result, or None when it raised TranslationError (anything else fails)."""
    try:
        return fn()
    except TranslationError as exc:
        assert isinstance(exc.message, str) and exc.status in (400, 502)
        return None


def encoded(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# -- requests: every client dialect to every provider dialect ----------------------------------

@pytest.mark.parametrize("src", DIALECTS)
@FUZZ
@given(data=st.data())
def test_request_translation_raises_only_translation_error(src: str, data: st.DataObject) -> None:
    doc = data.draw(w(REQUESTS[src]) if data.draw(st.integers(0, 19)) == 0 else REQUESTS[src])
    body = encoded(doc)
    stream = data.draw(flag)
    for dst in DIALECTS:
        prepared = only_translation_error(partial(prepare, src, dst, body, model="m-1",
                                                  stream=stream))
        if prepared is not None:
            assert isinstance(msgspec.json.decode(prepared.body), dict)
        if dst in COUNTING_DIALECTS:
            only_translation_error(partial(count_tokens_request, src, dst, body, model="m-1"))
    estimate = only_translation_error(partial(count_tokens_estimate, src, body))
    assert estimate is None or (isinstance(estimate, int) and estimate >= 0)


# -- responses: every provider dialect to every client dialect ---------------------------------

@pytest.mark.parametrize("provider", DIALECTS)
@FUZZ
@given(data=st.data())
def test_response_translation_raises_only_translation_error(provider: str,
                                                            data: st.DataObject) -> None:
    doc = data.draw(w(RESPONSES[provider]))
    body = encoded(doc) if data.draw(st.integers(0, 9)) else data.draw(st.binary(max_size=60))
    # a Responses client's request context (tool renames, custom and namespace tools)
    request = encoded(data.draw(REQUESTS["openai-responses"]))
    status = data.draw(st.integers(400, 599))
    prepared = only_translation_error(partial(prepare, "openai-responses", provider, request,
                                              model="m", stream=False))
    for client in DIALECTS:
        ctx = prepared.context if prepared is not None and client == "openai-responses" \
            else None
        out = only_translation_error(partial(translate_response, provider, client, body,
                                             model="m", request_id="req_1", context=ctx))
        assert out is None or isinstance(msgspec.json.decode(out), dict)
        out_status, err = translate_error(provider, client, status, body)
        assert 400 <= out_status <= 599 and isinstance(msgspec.json.decode(err), dict)
    only_translation_error(partial(count_tokens_result, provider, body))


@pytest.mark.parametrize("provider", DIALECTS)
@FUZZ
@given(data=st.data())
def test_stream_translation_raises_only_translation_error(provider: str,
                                                          data: st.DataObject) -> None:
    body, cuts = data.draw(stream_bytes(provider))
    for client in DIALECTS:
        st_ = StreamTranslator(provider, client, model="m", request_id="req_1")

        def run(st_: StreamTranslator = st_) -> bytes:
            out = b"".join(st_.feed(piece) for piece in pieces(body, cuts))
            return out + st_.close()

        out = only_translation_error(run)
        if out is None:  # the router ends the stream with the in-stream error
            assert isinstance(st_.fail(502, "unreadable upstream"), bytes)
        else:
            assert isinstance(out, bytes)


@pytest.mark.parametrize("dialect", DIALECTS)
@FUZZ
@given(data=st.data())
def test_usage_tracker_never_raises(dialect: str, data: st.DataObject) -> None:
    stream = data.draw(flag)
    if stream:
        body, cuts = data.draw(stream_bytes(dialect))
    else:
        body, cuts = encoded(data.draw(w(RESPONSES[dialect]))), []
    tracker = UsageTracker(dialect, stream)
    for piece in pieces(body, cuts):
        tracker.feed(piece)
    tracker.finish()
    assert tracker.usage is None or isinstance(tracker.usage, Usage)
    assert tracker.finish_reason is None or isinstance(tracker.finish_reason, str)
    assert tracker.model is None or isinstance(tracker.model, str)
    assert tracker.error is None or all(isinstance(x, str) for x in tracker.error)


# -- nesting far deeper than any client sends --------------------------------------------------

DEEP = "__deep__"
# where a client's JSON can nest: content, tool input/arguments, schemas, metadata
DEEP_REQUESTS = {
    "anthropic": {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                      "content": DEEP}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n",
                                           "input": {"a": DEEP}}]}],
        "tools": [{"name": "n", "input_schema": {"type": "object",
                                                 "properties": {"a": DEEP}}}]},
    "openai-chat": {"model": "m", "messages": [{"role": "user", "content": DEEP}],
                    "tools": [{"type": "function", "function": {"name": "n",
                                                                "parameters": DEEP}}],
                    "response_format": {"type": "json_schema",
                                        "json_schema": {"schema": DEEP}}},
    "openai-responses": {"model": "m", "input": [
        {"type": "message", "role": "user", "content": DEEP},
        {"type": "function_call_output", "call_id": "c", "output": DEEP}],
        "tools": [{"type": "function", "name": "n", "parameters": DEEP}]},
    "gemini": {"contents": [{"role": "user", "parts": [
        {"functionResponse": {"name": "n", "response": {"r": DEEP}}}]}],
        "tools": [{"functionDeclarations": [{"name": "n", "parameters": DEEP}]}],
        "generationConfig": {"responseJsonSchema": DEEP}},
}


def deep(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    if kind == "schema":  # the shape a schema walker follows all the way down
        return '{"type":"object","properties":{"a":' * depth + "{}" + "}}" * depth
    return '{"a":' * depth + "1" + "}" * depth


def with_deep(doc: Any, depth: int, kind: str) -> bytes:
    return json.dumps(doc).replace(json.dumps(DEEP), deep(depth, kind)).encode()


@pytest.mark.parametrize("depth", [200, 600, 1_000, 5_000, 100_000])
@pytest.mark.parametrize("src", DIALECTS)
def test_deep_requests_give_a_translation_or_translation_error(src: str, depth: int) -> None:
    outcomes = set()
    for kind in ("list", "object", "schema"):
        body = with_deep(DEEP_REQUESTS[src], depth, kind)
        for dst in DIALECTS:
            out = only_translation_error(partial(prepare, src, dst, body, model="m",
                                                 stream=True))
            outcomes.add(out is not None)
            if dst in COUNTING_DIALECTS:
                only_translation_error(partial(count_tokens_request, src, dst, body,
                                               model="m"))
        only_translation_error(partial(count_tokens_estimate, src, body))
    if depth >= 5_000:
        assert outcomes == {False}  # nothing that deep is translated


DEEP_RESPONSES = {
    "anthropic": {"id": "m", "type": "message", "role": "assistant", "model": "x",
                  "content": [{"type": "tool_use", "id": "t", "name": "n", "input": DEEP}],
                  "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}},
    "openai-chat": {"id": "c", "model": "x", "choices": [{"index": 0, "finish_reason": "stop",
                                                          "message": {"role": "assistant",
                                                                      "content": DEEP}}]},
    "openai-responses": {"id": "r", "model": "x", "status": "completed", "output": DEEP},
    "gemini": {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "n", "args": DEEP}}]}, "finishReason": "STOP"}]},
}


@pytest.mark.parametrize("depth", [600, 1_000, 100_000])
@pytest.mark.parametrize("provider", DIALECTS)
def test_deep_responses_and_streams(provider: str, depth: int) -> None:
    body = with_deep(DEEP_RESPONSES[provider], depth, "object")
    event = b"data: " + body + b"\n\n"
    for client in DIALECTS:
        for error in (with_deep({"error": {"type": DEEP, "message": DEEP}}, depth, "list"),):
            translate_error(provider, client, 500, error)
        only_translation_error(partial(translate_response, provider, client, body, model="m",
                                       request_id="r"))
        translate_error(provider, client, 500, body)
        st_ = StreamTranslator(provider, client, model="m", request_id="r")
        only_translation_error(lambda st_=st_: st_.feed(event) + st_.close())
    error = with_deep({"type": "error", "error": {"type": DEEP, "code": DEEP,
                                                  "message": DEEP}}, depth, "list")
    for stream in (False, True):
        for raw in (body, error):
            tracker = UsageTracker(provider, stream)
            tracker.feed(b"data: " + raw + b"\n\n" if stream else raw)
            tracker.finish()
            assert tracker.usage is None or isinstance(tracker.usage, Usage)
            assert tracker.error is None or all(isinstance(x, str) for x in tracker.error)
