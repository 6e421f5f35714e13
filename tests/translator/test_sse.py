"""SSE framing (WHATWG event stream rules) on synthetic input and on every recorded stream."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.translator.sse import SSEDecoder, SSEEvent, encode_event

from ._vectors import VECTORS, chunked, raw, sse_wire


def decode_all(*chunks: bytes) -> list[SSEEvent]:
    dec = SSEDecoder()
    out: list[SSEEvent] = []
    for c in chunks:
        out += dec.feed(c)
    return out + dec.flush()


def test_lf_and_crlf_and_cr_line_endings_are_equivalent() -> None:
    lf = b"event: a\ndata: 1\n\nevent: b\ndata: 2\n\n"
    expected = [SSEEvent("a", "1", None), SSEEvent("b", "2", None)]
    assert decode_all(lf) == expected
    assert decode_all(lf.replace(b"\n", b"\r\n")) == expected
    assert decode_all(lf.replace(b"\n", b"\r")) == expected


def test_crlf_split_between_feeds_is_one_line_ending() -> None:
    body = b"data: x\r\n\r\ndata: y\r\n\r\n"
    for cut in range(len(body) + 1):
        assert decode_all(body[:cut], body[cut:]) == [
            SSEEvent(None, "x", None), SSEEvent(None, "y", None)], cut


def test_data_with_and_without_space() -> None:
    assert decode_all(b"data:{}\n\ndata: {}\n\ndata:  two\n\n") == [
        SSEEvent(None, "{}", None), SSEEvent(None, "{}", None), SSEEvent(None, " two", None)]


def test_multiline_data_joined_with_newline() -> None:
    assert decode_all(b"data: a\ndata:b\ndata\n\n") == [SSEEvent(None, "a\nb\n", None)]


def test_comments_and_keepalives_ignored() -> None:
    body = b": keep-alive\n\n:ping\ndata: x\n: mid-event comment\n\n"
    assert decode_all(body) == [SSEEvent(None, "x", None)]


def test_event_without_data_is_not_dispatched_and_name_does_not_leak() -> None:
    assert decode_all(b"event: ping\n\ndata: x\n\n") == [SSEEvent(None, "x", None)]


def test_id_field_persists_and_retry_and_unknown_fields_ignored() -> None:
    out = decode_all(b"id: 7\nretry: 10\nfoo: bar\ndata: a\n\ndata: b\n\n")
    assert out == [SSEEvent(None, "a", "7"), SSEEvent(None, "b", "7")]


def test_flush_dispatches_unterminated_event() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"event: error\ndata: {\"x\":1}") == []
    assert dec.flush() == [SSEEvent("error", '{"x":1}', None)]
    assert dec.flush() == []


def test_utf8_character_split_across_feeds_is_byte_exact() -> None:
    text = "héllo €𝄞 日本"
    body = b"data: " + json.dumps({"t": text}, ensure_ascii=False).encode() + b"\n\n"
    for cut in range(len(body) + 1):
        (ev,) = decode_all(body[:cut], body[cut:])
        assert json.loads(ev.data)["t"] == text


def test_json_escape_split_across_feeds() -> None:
    body = b'data: {"a":"q\\"x\\\\y\\u00e9"}\n\n'
    for cut in range(len(body) + 1):
        (ev,) = decode_all(body[:cut], body[cut:])
        assert json.loads(ev.data)["a"] == 'q"x\\yé'


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                                   blacklist_characters="\r\n"),
                        max_size=20), min_size=1, max_size=5),
       st.sampled_from([b"\n", b"\r\n", b"\r"]),
       st.integers(min_value=1, max_value=7))
def test_property_any_chunking_gives_same_events(values: list[str], eol: bytes,
                                                 size: int) -> None:
    body = b"".join(b"data: " + v.encode() + eol + eol for v in values)
    expected = [SSEEvent(None, v, None) for v in values]
    assert decode_all(*chunked(body, size)) == expected


def test_encode_event_round_trips() -> None:
    wire = encode_event(b'{"type":"ping"}', "ping") + encode_event(b"[DONE]")
    assert decode_all(wire) == [SSEEvent("ping", '{"type":"ping"}', None),
                                SSEEvent(None, "[DONE]", None)]


@pytest.mark.parametrize("name", sorted(p.name for p in VECTORS.glob("*.sse")))
def test_recorded_streams_decode_to_json_events_at_any_chunking(name: str) -> None:
    body = sse_wire(name)
    whole = decode_all(body)
    assert whole, name
    for ev in whole:
        if ev.data != "[DONE]" and "..." not in ev.data:
            doc = json.loads(ev.data)
            # Anthropic and Responses: the event name equals the JSON type.
            if ev.event is not None and isinstance(doc, dict) and "type" in doc:
                assert doc["type"] == ev.event
    for size in (1, 3, 64):
        assert decode_all(*chunked(body, size)) == whole


def test_cookbook_crlf_stream() -> None:
    body = raw("gemini_stream_text_cookbook.sse")
    assert b"\r\n" in body
    events = decode_all(*chunked(body, 5))
    assert len(events) == 6
    assert all(json.loads(e.data)["candidates"] for e in events)
