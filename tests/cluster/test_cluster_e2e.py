"""Issue 15 in CI: a three-node NATS cluster (real nats-server processes, streams with 3
replicas), 2 edges, 3 routers, 2 ledgers and 2 alerts workers as separate processes. Under load
through both edges, kill -9 the NATS node that leads the work queue, one router, one ledger and
the active alerts worker, then bring them back: every client gets a complete answer or an error
in its dialect, each ledger's rows match the clients request by request (nothing lost, nothing
doubled), both ledgers converge to the same rows, and the alert is notified once. The scenario
is ``tests/cluster/scenario.py``; the long version ``bench/cluster.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.alerts.conftest import Receiver
from tests.chaos.harness import analyze
from tests.cluster.scenario import run_cluster

pytestmark = pytest.mark.timeout(300)


def test_cluster_loses_a_node_a_router_a_ledger_and_an_alerts_worker(tmp_path: Path) -> None:
    hooks = Receiver()
    hooks.thread.start()
    try:
        run = run_cluster(tmp_path, hooks, rounds=1, after=80)
    finally:
        hooks.server.shutdown()
        hooks.server.server_close()

    assert len(run.pending) == 2  # two ledgers, two consumers of their own
    # two alerts workers, the active one killed mid-run: one notification for the transition
    assert [b["kind"] for b in run.hooks] == ["fired"], (run.hooks, run.rounds, run.alerts_logs)
    assert len(run.outcomes) >= 120 and run.complete >= 100, (
        len(run.outcomes), run.complete, run.rounds)
    for name, rows in run.rows.items():
        rep = analyze(name, run.outcomes, rows, run.seen, None)
        assert not rep.lost, rep.render()
        assert not rep.doubled and not rep.upstream_doubled, rep.render()
        assert not rep.bad_answers, rep.render()  # complete or an error in the dialect
        assert not rep.mismarked, rep.render()
        assert sum(bool(r.get("ok")) for r in rows) == run.complete, rep.render()
    one, two = ([(r["request_id"], r["status"], r["ok"], r["provider"]) for r in rows]
                for rows in run.rows.values())
    assert one == two  # the two ledgers converged
    for o in run.outcomes:
        if not o.complete:  # shown with -s: which requests failed, and how
            print("error:", o.brief())
    print(f"cluster run: {len(run.outcomes)} requests, {run.complete} complete; "
          + "; ".join(run.rounds))
