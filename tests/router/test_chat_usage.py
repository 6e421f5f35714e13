from __future__ import annotations

import json

from tests.conftest import vector
from workers.router.chat_usage import UsageChunkFilter, request_usage


def test_request_usage_adds_option_once() -> None:
    body = b'{"model":"m","stream":true,"messages":[]}'
    added = request_usage(body)
    assert added is not None
    assert json.loads(added)["stream_options"] == {"include_usage": True}
    assert request_usage(added) is None
    kept = request_usage(b'{"model":"m","stream_options":{"include_obfuscation":false}}')
    assert json.loads(kept or b"")["stream_options"] == {"include_obfuscation": False,
                                                         "include_usage": True}


def test_filter_drops_only_the_usage_chunk_at_any_split() -> None:
    stream = vector("openai_chat_stream_include_usage.sse")
    events = [e for e in stream.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]
    expected = b"".join(e + b"\n\n" for e in events
                        if not (b'"choices":[]' in e and b'"usage"' in e))
    assert expected != b"".join(e + b"\n\n" for e in events)  # the vector has one
    for size in (1, 7, 64, len(stream)):
        f = UsageChunkFilter()
        out = b"".join(f.feed(stream[i:i + size]) for i in range(0, len(stream), size))
        out += f.flush()
        assert out.replace(b"\r\n", b"\n").strip() == expected.strip()
        assert b"[DONE]" in out
