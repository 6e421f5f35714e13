"""One row per request id, whatever facts arrive about it and in whatever order."""

from __future__ import annotations

import itertools

from schemas.events import RequestCompleted, Usage
from schemas.prices import PriceBook
from workers.ledger.projection import RequestRow, fold_requests, project_event

BOOK = PriceBook()


def row(seq: int, ev: RequestCompleted) -> RequestRow:
    out = project_event(seq, ev, BOOK)
    assert isinstance(out, RequestRow)
    return out


ROUTER = RequestCompleted(id="e-router", ts=10.0, request_id="r1", dialect="anthropic",
                          model="claude-sonnet-4-5", provider="main",
                          upstream_model="claude-sonnet-4-5", status=200,
                          usage=Usage(input_tokens=1000, output_tokens=200), source="router")
RECOVERED = RequestCompleted(id="e-rec", ts=9.0, request_id="r1", dialect="anthropic",
                             model="claude-sonnet-4-5", provider="main",
                             upstream_model="claude-sonnet-4-5", status=502,
                             error_class="router_lost", usage=Usage(input_tokens=900),
                             usage_estimated=True, delivered=False, source="recovered")
EDGE_LOST = RequestCompleted(id="e-edge", ts=11.0, request_id="r1", dialect="anthropic",
                             model="claude-sonnet-4-5", status=424, error_class="router_lost",
                             delivered=False, source="edge")
EDGE_503 = RequestCompleted(id="e-503", ts=11.0, request_id="r1", dialect="anthropic",
                            model="claude-sonnet-4-5", status=503,
                            error_class="bus_unavailable", source="edge")


def test_order_does_not_matter_and_folding_is_idempotent() -> None:
    rows = [row(1, ROUTER), row(2, RECOVERED), row(3, EDGE_LOST)]
    results = {msgspec_key(fold_requests(list(p))) for p in itertools.permutations(rows)}
    assert len(results) == 1
    once = fold_requests(rows)
    assert fold_requests([once, *rows]) == once
    assert fold_requests([row(1, ROUTER), row(1, ROUTER)]) == row(1, ROUTER)


def msgspec_key(r: RequestRow) -> str:
    import msgspec

    return msgspec.json.encode(r).decode()


def test_a_router_that_died_is_billed_by_estimate_and_the_client_outcome_wins() -> None:
    folded = fold_requests([row(2, RECOVERED), row(3, EDGE_LOST)])
    assert folded.status == 424 and folded.error_class == "router_lost"
    assert folded.input_tokens == 900 and folded.usage_estimated
    assert not folded.ok and not folded.delivered
    assert folded.provider == "main" and folded.source == "recovered+edge"


def test_real_usage_beats_the_estimate() -> None:
    folded = fold_requests([row(1, ROUTER), row(2, RECOVERED)])
    assert folded.input_tokens == 1000 and folded.output_tokens == 200
    assert not folded.usage_estimated


def test_edge_503_and_router_200_is_one_row_with_the_clients_status() -> None:
    folded = fold_requests([row(1, ROUTER), row(4, EDGE_503)])
    assert folded.status == 503 and not folded.ok
    assert folded.input_tokens == 1000  # what the upstream used still counts
    assert folded.seq == 4 and folded.event_id == "e-router"


def test_undelivered_router_answer_is_an_error_with_its_cost() -> None:
    cut = RequestCompleted(id="e-cut", ts=10.0, request_id="r2", dialect="anthropic",
                           model="claude-sonnet-4-5", provider="main",
                           upstream_model="claude-sonnet-4-5", status=499,
                           error_class="edge_lost", delivered=False,
                           usage=Usage(input_tokens=10, output_tokens=5))
    r = row(5, cut)
    assert not r.ok and not r.delivered and r.output_tokens == 5


def test_the_store_keeps_one_row_per_request_across_batches(tmp_path: object) -> None:
    from pathlib import Path

    from schemas.events import AttemptFinished, encode_event
    from workers.ledger.projection import Rows, project
    from workers.ledger.store import Store

    att = AttemptFinished(id="a1", ts=1.0, request_id="r1", attempt=1, dialect="anthropic",
                          provider="main", provider_dialect="anthropic", model="m",
                          upstream_model="m", stream=False, outcome="ok")
    batches = [[(1, ROUTER), (2, att)], [(3, RECOVERED), (4, att)], [(5, EDGE_LOST)]]
    with Store(Path(str(tmp_path)) / "l.duckdb") as store:
        for batch in batches:
            rows = Rows()
            for seq, ev in batch:
                rows.add(project(seq, "llm.x", encode_event(ev), BOOK))
            store.apply(rows)
        reqs = store.con.execute(
            "SELECT status, input_tokens, delivered, ok, source FROM requests").fetchall()
        assert reqs == [(424, 1000, False, False, "router+recovered+edge")]
        # the attempt published twice (a write-ahead replay) is one row
        assert store.con.execute("SELECT count(*) FROM attempts").fetchone() == (1,)
