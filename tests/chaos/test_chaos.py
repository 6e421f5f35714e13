"""Issue 10, "Nothing lost, nothing doubled, nothing leaked": kill -9 each part of a running
``codeswitch up`` under load (all four dialects, streaming and not, concurrency 8) and check
request by request against the ledger. The harness is ``tests/chaos/harness.py``; the long
version is ``bench/chaos.py``.

Each part's scenario runs once (the first test asking for it pays, ~15-30 s); every test below
then judges one requirement for every part, so a failure names the part and the requirement,
with the offending client request ids (``chaos-<run>-<n>``) and the numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.chaos.harness import PARTS, RETRIED_STATUSES, PartReport

ReportFor = Callable[[str], PartReport]
pytestmark = pytest.mark.timeout(300)


def _why(rep: PartReport, items: list[str], what: str) -> str:
    shown = "\n  ".join(items[:15]) + (f"\n  ... {len(items) - 15} more" if len(items) > 15
                                       else "")
    return f"kill -9 {rep.part}: {len(items)} {what}:\n  {shown}\n{rep.summary()}"


def test_control_run_without_a_kill_is_clean(report_for: ReportFor) -> None:
    """The harness itself: with nothing killed, every request is complete and in the ledger
    exactly once (if this fails, the other verdicts mean nothing)."""
    rep = report_for("none")
    assert rep.sent >= 100, rep.summary()
    assert rep.complete == rep.sent, rep.render()
    assert not rep.lost and not rep.doubled and not rep.bad_answers, rep.render()
    assert rep.ledger_rows == rep.sent, rep.render()


@pytest.mark.parametrize("part", PARTS)
def test_nothing_lost(report_for: ReportFor, part: str) -> None:
    """A client that got a complete 200 answer has its ledger row."""
    rep = report_for(part)
    assert rep.sent >= 100, rep.summary()
    assert not rep.lost, _why(rep, rep.lost, "complete answers without a ledger row")


@pytest.mark.parametrize("part", PARTS)
def test_nothing_doubled(report_for: ReportFor, part: str) -> None:
    """One ledger row per request id (and per client request id); one upstream call per
    client request."""
    rep = report_for(part)
    assert not rep.doubled, _why(rep, rep.doubled, "requests with more than one ledger row")
    assert not rep.upstream_doubled, _why(rep, rep.upstream_doubled,
                                          "client requests the upstream saw more than once")


@pytest.mark.parametrize("part", PARTS)
def test_every_client_gets_an_answer_or_a_dialect_error(report_for: ReportFor,
                                                        part: str) -> None:
    """Complete answer, or an error in the client's dialect (status >= 400 with the dialect's
    error body, or an error event inside the stream), or a connection error while the edge
    itself was down. Never a hang, a truncated stream, garbage, or a cut while the edge ran."""
    rep = report_for(part)
    assert not rep.bad_answers, _why(rep, rep.bad_answers,
                                     "clients with neither an answer nor a dialect error")


@pytest.mark.parametrize("part", PARTS)
def test_undelivered_requests_are_marked_in_the_ledger(report_for: ReportFor,
                                                       part: str) -> None:
    """Every request that did not get a complete answer and that the gateway knew about (the
    upstream saw it, or the client got headers) has a ledger row with ok = false, and, where
    the client's connection died, delivered = false."""
    rep = report_for(part)
    assert not rep.unmarked, _why(rep, rep.unmarked, "undelivered requests not marked")


@pytest.mark.parametrize("part", PARTS)
def test_no_status_the_sdks_retry_once_the_upstream_saw_the_request(report_for: ReportFor,
                                                                    part: str) -> None:
    """Requests that reached the upstream are never answered 408, 409, 429 or 5xx: the
    Anthropic and OpenAI SDKs would send them again (paid twice)."""
    rep = report_for(part)
    assert not rep.retried_after_upstream, _why(
        rep, rep.retried_after_upstream,
        f"requests answered {RETRIED_STATUSES} after the upstream saw them")


@pytest.mark.parametrize("part", PARTS)
def test_the_part_comes_back_and_requests_succeed_again(report_for: ReportFor,
                                                        part: str) -> None:
    rep = report_for(part)
    assert rep.restarted, f"kill -9 {part}: never restarted\n{rep.render()}"
    assert rep.recovery_s is not None, f"kill -9 {part}: requests never succeeded again\n" \
                                       f"{rep.render()}"
    assert rep.ledger_caught_up.startswith("caught up"), rep.render()


def test_streams_whose_router_died_get_an_error_event_within_2s(report_for: ReportFor) -> None:
    rep = report_for("router")
    assert rep.router_streams, f"no stream was mid-flight when the router was killed:\n" \
                               f"{rep.render()}"
    assert not rep.router_stream_late, _why(
        rep, rep.router_stream_late,
        f"of {len(rep.router_streams)} streams mid-flight had no error event within 2 s "
        "of the router's death")
