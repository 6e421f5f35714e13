"""Property tests: a request translated A -> B -> A keeps its meaning (messages, tools, tool
results, parameters) wherever both dialects can express it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.translator import _MODULES, decode_request, prepare
from workers.translator.common import Message, Request, Text, Tool, ToolCall, ToolResult

DIALECTS = list(_MODULES)
PAIRS = [(a, b) for a in DIALECTS for b in DIALECTS if a != b]

words = st.text(alphabet="abcdefghij klmnop,.é日", min_size=1, max_size=12).filter(
    lambda s: s.strip() == s and s)
names = st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True)
args = st.dictionaries(st.sampled_from(["a", "b", "path"]),
                       st.one_of(st.integers(-5, 5), words), max_size=3)


@st.composite
def requests(draw: st.DrawFn, with_errors: bool) -> Request:
    tool_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    req = Request(
        system=[Text(text=draw(words))],
        tools=[Tool(name=n, description=draw(words), parameters={
            "type": "object", "properties": {"a": {"type": "string"}}}) for n in tool_names],
        max_tokens=draw(st.integers(1, 4000)),
        temperature=draw(st.sampled_from([None, 0.0, 0.5, 1.0])),
        top_p=draw(st.sampled_from([None, 0.9, 1.0])))
    req.messages.append(Message(role="user", parts=[Text(text=draw(words))]))
    for turn in range(draw(st.integers(0, 2))):
        parts: list[Any] = []
        if draw(st.booleans()):
            parts.append(Text(text=draw(words)))
        calls = [ToolCall(id=f"call_t{turn}x{i}", name=draw(st.sampled_from(tool_names)),
                          arguments=json.dumps(draw(args)))
                 for i in range(draw(st.integers(1, 2)))]
        req.messages.append(Message(role="assistant", parts=parts + calls))
        results: list[Any] = [ToolResult(call_id=c.id, content=[Text(text=draw(words))],
                                         is_error=with_errors and draw(st.booleans()))
                              for c in calls]
        if draw(st.booleans()):
            results.append(Text(text=draw(words)))
        req.messages.append(Message(role="user", parts=results))
    req.messages.append(Message(role="assistant", parts=[Text(text=draw(words))]))
    req.messages.append(Message(role="user", parts=[Text(text=draw(words))]))
    return req


def meaning(req: Request) -> dict[str, Any]:
    """What the model sees. Leading system/developer messages are the system prompt."""
    system = [t.text for t in req.system]
    rest = list(req.messages)
    while rest and rest[0].role in ("system", "developer"):
        system += [p.text for p in rest.pop(0).parts if isinstance(p, Text)]
    msgs: list[tuple[str, list[Any]]] = []
    for m in rest:
        items: list[Any] = []
        text = "".join(p.text for p in m.parts if isinstance(p, Text))
        for p in m.parts:
            if isinstance(p, ToolCall):
                items.append(("call", p.id, p.name, json.loads(p.arguments or "{}")))
            elif isinstance(p, ToolResult):
                items.append(("result", p.call_id, "".join(
                    q.text for q in p.content if isinstance(q, Text)), p.is_error))
        if text:
            items.append(("text", text))
        if msgs and msgs[-1][0] == m.role:
            msgs[-1][1].extend(items)
        else:
            msgs.append((m.role, items))
    return {"system": "\n\n".join(system), "messages": msgs,
            "tools": [(t.name, t.description, t.parameters) for t in req.tools],
            "max_tokens": req.max_tokens, "temperature": req.temperature, "top_p": req.top_p}


@pytest.mark.parametrize(("a", "b"), PAIRS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_request_round_trip_keeps_meaning(a: str, b: str, data: st.DataObject) -> None:
    # Chat and Responses have no is_error flag on a tool result (the text says "Error: ...").
    req = data.draw(requests(with_errors={a, b} <= {"anthropic", "gemini"}))
    body = json.dumps(_MODULES[a].encode_request(req, model="m", stream=False)).encode()
    original = meaning(decode_request(a, body))
    if b == "anthropic" and original["temperature"] is not None:
        original["top_p"] = None  # Anthropic gets temperature or top_p, never both
    there = prepare(a, b, body, model="m", stream=False).body
    back = prepare(b, a, there, model="m", stream=False).body
    assert meaning(decode_request(a, back)) == original
    first_user = next(items for role, items in original["messages"] if role == "user")
    assert first_user == [("text", req.messages[0].parts[0].text)]
