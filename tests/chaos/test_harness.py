"""The chaos harness's own judgement, on made-up answers and ledger rows (no gateway): what it
calls complete, a dialect error, lost, doubled, unmarked, and late."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from schemas.errors import error_body, stream_error
from tests.chaos.harness import (
    KillTimes,
    Outcome,
    SseScanner,
    analyze,
    chaos_chooser,
    classify,
    label_of,
    retried,
)
from tests.fakes.upstream import Received

ANTHROPIC_OK = (b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n"
                b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
                b"\"delta\":{\"type\":\"text_delta\",\"text\":\" 5\"}}\n\n"
                b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")


def test_sse_scanner_handles_split_events_and_crlf() -> None:
    s = SseScanner()
    assert s.feed(b"event: a\r\nda") == []
    assert s.feed(b"ta: {\"x\":1}\r\n\r\ndata: [DONE]\n\n") == [("a", '{"x":1}'),
                                                                 (None, "[DONE]")]


@pytest.mark.parametrize(("dialect", "body", "kind"), [
    ("anthropic", ANTHROPIC_OK, "complete"),
    ("anthropic", ANTHROPIC_OK.replace(b" 5", b" 4"), "garbage"),
    ("anthropic", ANTHROPIC_OK.rsplit(b"event: message_stop", 1)[0], "truncated"),
    ("anthropic", ANTHROPIC_OK.rsplit(b"event: message_stop", 1)[0]
     + stream_error("anthropic", 502, "router lost"), "stream_error"),
    ("openai-chat", b'data: {"choices":[{"delta":{"content":" 5"}}]}\n\ndata: [DONE]\n\n',
     "complete"),
    ("openai-chat", b'data: {"choices":[{"delta":{"content":" 5"}}]}\n\n'
     + stream_error("openai-chat", 502, "x"), "stream_error"),
    ("openai-responses", b'event: response.output_text.delta\ndata: {"delta":" 5"}\n\n'
     + stream_error("openai-responses", 502, "x"), "stream_error"),
    ("openai-responses", b'event: response.completed\ndata: {"type":"response.completed",'
     b'"x":" 5"}\n\n', "complete"),
    ("gemini", b'data: {"candidates":[{"content":{"parts":[{"text":" 5"}]},'
     b'"finishReason":"STOP"}]}\r\n\r\n', "complete"),
    ("gemini", b'data: {"candidates":[{"content":{"parts":[{"text":" 5"}]}}]}\r\n\r\n',
     "truncated"),
])
def test_classify_streams(dialect: str, body: bytes, kind: str) -> None:
    assert classify(dialect, True, 200, body, " 5")[0] == kind


@pytest.mark.parametrize("dialect", ["anthropic", "openai-chat", "openai-responses", "gemini"])
def test_classify_errors(dialect: str) -> None:
    assert classify(dialect, False, 503, error_body(dialect, 503, "no"), " 5")[0] == \
        "dialect_error"
    assert classify(dialect, True, 502, error_body(dialect, 502, "no"), " 5")[0] == \
        "dialect_error"
    assert classify(dialect, False, 502, b"<html>Bad Gateway</html>", " 5")[0] == "garbage"
    assert classify(dialect, False, 200, error_body(dialect, 400, "no"), " 5")[0] == "garbage"


def test_retried_statuses() -> None:
    assert [s for s in (200, 400, 408, 409, 424, 429, 499, 500, 502, 529) if retried(s)] == \
        [408, 409, 429, 500, 502, 529]


def test_chooser_reads_the_mode_tag() -> None:
    rec = Received(method="POST", path="/v1/messages", query={}, headers={},
                   body=b'{"text":"chaos-0123abcd-000007 mode=stream-slow: count"}', json=None,
                   received_at=0.0)
    behavior = chaos_chooser(rec)
    assert behavior is not None and behavior.chunk_delay > 0 and behavior.chunks == 14
    rec.body = b"no tag"
    assert chaos_chooser(rec) is None


def _o(i: int, kind: str, *, rid: str | None = None, status: int | None = 200,
       stream: bool = False, t: float = 10.0, end: float = 11.0, headers: float | None = None,
       err: float | None = None) -> Outcome:
    return Outcome(index=i, cid=f"chaos-0123abcd-{i:06d}", lane="anthropic",
                   dialect="anthropic", mode="x", stream=stream, t_start=t, t_end=end,
                   t_headers=headers, t_error_event=err, status=status, request_id=rid,
                   kind=kind)


def _row(rid: str, cid: str | None, ok: bool = True, delivered: bool = True) -> dict[str, Any]:
    return {"request_id": rid, "client_request_id": cid, "ok": ok, "delivered": delivered,
            "status": 200 if ok else 502, "seq": 1}


def test_analyze_finds_lost_doubled_unmarked_and_retried() -> None:
    outcomes = [
        _o(1, "complete", rid="r1"),  # fine
        _o(2, "complete", rid="r2"),  # lost: no row
        _o(3, "complete", rid="r3"),  # doubled
        _o(4, "cut", status=None),  # cut before headers, upstream saw it, row says ok: unmarked
        _o(5, "dialect_error", rid="r5", status=503),  # upstream saw it: retried status
        _o(6, "refused", status=None),  # never reached anything: unaccounted
        _o(7, "hang", rid="r7"),  # a hang is never acceptable
    ]
    rows = [_row("r1", outcomes[0].cid), _row("r3", outcomes[2].cid),
            _row("r3b", outcomes[2].cid), _row("r4", outcomes[3].cid),
            _row("r5", outcomes[4].cid, ok=False), _row("r7", outcomes[6].cid, ok=False,
                                                        delivered=False)]
    seen = Counter({outcomes[3].cid: 1, outcomes[4].cid: 1, outcomes[0].cid: 1})
    rep = analyze("ledger", outcomes, rows, seen, None)
    assert [x.split()[0] for x in rep.lost] == [outcomes[1].cid]
    assert any(outcomes[2].cid in x for x in rep.doubled)
    assert [x.split()[0] for x in rep.unmarked] == [outcomes[3].cid]
    assert [x.split()[0] for x in rep.retried_after_upstream] == [outcomes[4].cid]
    assert rep.unaccounted == 1 and rep.marked == 2
    assert sorted(x.split()[0] for x in rep.bad_answers) == [outcomes[3].cid, outcomes[5].cid,
                                                             outcomes[6].cid]


def test_analyze_excuses_cuts_only_while_the_edge_was_down() -> None:
    kill = KillTimes(t_kill=10.0, part="edge", killed_pid=1, t_restarted=10.5, t_back=11.0)
    outcomes = [_o(1, "cut", status=None, t=9.5, end=10.01),
                _o(2, "refused", status=None, t=10.2, end=10.3),
                _o(3, "cut", status=None, t=12.0, end=13.0)]
    rep = analyze("edge", outcomes, [], Counter(), kill)
    assert rep.excused_cuts == 2
    assert [x.split()[0] for x in rep.bad_answers] == [outcomes[2].cid]
    rep = analyze("router", outcomes, [], Counter(),
                  KillTimes(t_kill=10.0, part="router", killed_pid=1))
    assert rep.excused_cuts == 0 and len(rep.bad_answers) == 3


def test_analyze_times_router_lost_streams() -> None:
    kill = KillTimes(t_kill=10.0, part="router", killed_pid=1, t_restarted=10.2, t_back=11.0)
    outcomes = [
        _o(1, "stream_error", rid="a", stream=True, t=9.0, headers=9.1, end=11.0, err=11.0),
        _o(2, "stream_error", rid="b", stream=True, t=9.0, headers=9.1, end=13.0, err=12.5),
        _o(3, "cut", rid="c", stream=True, t=9.0, headers=9.1, end=12.0),
        _o(4, "complete", rid="d", stream=True, t=9.0, headers=9.1, end=10.1),
        _o(5, "complete", rid="e", t=10.5, end=11.2),
    ]
    rows = [_row(x, o.cid, ok=o.kind == "complete", delivered=o.kind == "complete")
            for x, o in zip("abcde", outcomes, strict=True)]
    rep = analyze("router", outcomes, rows, Counter(), kill)
    assert len(rep.router_streams) == 3
    assert [x.split()[0] for x in rep.router_stream_late] == [outcomes[1].cid, outcomes[2].cid]
    assert rep.router_stream_delays == [1.0, 2.5]
    assert rep.restarted and rep.recovery_s == pytest.approx(1.2)


@pytest.mark.parametrize(("cmdline", "label"), [
    ("/x/.venv/bin/python -m codeswitch worker router --nats-url nats://h:1 --home /h",
     "router"),
    ("/x/python3 -m codeswitch edge --nats-url nats://h:1 --port 9", "edge"),
    ("codeswitch worker ledger" + " " * 40, "ledger"),  # a process title, padded
    ("codeswitch worker ledger+alerts (workers)" + " " * 20, "workers"),
    ("codeswitch gateway edge+router+ledger+alerts (gateway)", "gateway"),
    ("/x/python -m runtime.launch ledger,alerts --home /h", "workers"),
    ("/x/python -m runtime.launch router --nats-url nats://h:1", "router"),
    ("/x/python -m codeswitch.up {\"home\": \"/h\"}", "supervisor"),
    ("codeswitch edge", "edge"),
    ("/x/python -m codeswitch up --home /h --port 9", "supervisor"),
    ("/x/.venv/bin/nats-server -c /h/nats/nats-server.conf", "nats-server"),
    ("/x/python -m codeswitch tail --json", None),
    ("/usr/bin/python3 -m pytest", None),
    ("", None),
])
def test_label_of_command_lines_and_process_titles(cmdline: str, label: str | None) -> None:
    assert label_of(cmdline) == label
