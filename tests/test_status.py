"""`codeswitch status`, the pure parts: what counts as healthy, and no password printed."""

from __future__ import annotations

from codeswitch.status import Snapshot, _masked, as_json

CONSUMERS = [{"durable": "ledger", "present": True}]


def test_credentials_in_the_nats_url_are_masked() -> None:
    assert _masked("nats://app:s3cret@nats.internal:4222") == "nats://app:***@nats.internal:4222"
    assert _masked("nats://127.0.0.1:18122") == "nats://127.0.0.1:18122"
    assert _masked("tls://tok3n@h:4222") == "tls://tok3n:***@h:4222"


def test_health_needs_routers_and_workers_and_a_ready_edge_when_one_is_known() -> None:
    router = [{"router": "r1", "in_flight": 0}]
    known = Snapshot(nats_url="n", edge_url="http://e", edge_ready="ready", routers=router,
                     consumers=CONSUMERS)
    assert known.healthy and as_json(known)["healthy"] is True
    down = Snapshot(nats_url="n", edge_url="http://e", edge_ready="unreachable",
                    routers=router, consumers=CONSUMERS)
    assert not down.healthy
    by_hand = Snapshot(nats_url="n", edge_url=None, edge_ready="unknown", routers=router,
                       consumers=CONSUMERS)
    assert by_hand.healthy  # no edge to check: routers and workers decide
    assert not Snapshot(nats_url="n", edge_url=None, edge_ready="unknown", routers=[],
                        consumers=CONSUMERS).healthy
    assert not Snapshot(nats_url="n", edge_url=None, edge_ready="unknown", routers=router,
                        consumers=[{"durable": "ledger", "present": False}]).healthy
