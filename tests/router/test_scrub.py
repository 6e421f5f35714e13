"""The scrubber masks provider secrets in whole bodies and in streams, also when a secret is
split across two reads, without delaying reads that cannot be the start of a secret."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.router.scrub import MASK, Scrubber, scrub_text

KEY = "sk-ant-SENTINEL-0123456789abcdef"


def test_whole_body() -> None:
    s = Scrubber([KEY])
    body = b'{"error": {"message": "invalid x-api-key ' + KEY.encode() + b'"}}'
    assert s.whole(body) == b'{"error": {"message": "invalid x-api-key [key]"}}'


def test_split_across_reads_is_caught() -> None:
    s = Scrubber([KEY])
    raw = b"data: {\"text\": \"your key is " + KEY.encode() + b"\"}\n\n"
    cut = raw.index(b"SENTINEL")
    out = s.feed(raw[:cut]) + s.feed(raw[cut:]) + s.flush()
    assert KEY.encode() not in out and MASK in out
    assert out == raw.replace(KEY.encode(), MASK)


def test_a_read_ending_in_an_event_is_not_held() -> None:
    s = Scrubber([KEY])
    chunk = b'event: content_block_delta\ndata: {"delta": {"text": "hi"}}\n\n'
    assert s.feed(chunk) == chunk  # nothing held back: no added latency


def test_a_secret_prefix_at_the_end_is_held_then_released() -> None:
    s = Scrubber([KEY])
    assert s.feed(b"abc sk-an") == b"abc "
    assert s.feed(b"d more") == b"sk-and more"
    assert s.flush() == b""


def test_short_values_are_not_secrets() -> None:
    assert not Scrubber(["abc", ""])
    assert scrub_text("abc", ["abc"]) == "abc"
    assert scrub_text(f"bad key {KEY}", [KEY]) == "bad key [key]"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200),
       st.lists(st.integers(min_value=0, max_value=500), max_size=6))
def test_any_split_never_leaks(before: bytes, after: bytes, cuts: list[int]) -> None:
    raw = before + KEY.encode() + after + KEY.encode()[:10]
    s = Scrubber([KEY, "other-secret-value-xyz"])
    points = sorted({min(c, len(raw)) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(raw[last:p])
        last = p
    pieces.append(raw[last:])
    out = b"".join(s.feed(p) for p in pieces) + s.flush()
    assert KEY.encode() not in out
    assert out == Scrubber([KEY, "other-secret-value-xyz"]).whole(raw)
