"""The long cluster run of issue 15 (the CI test runs one round): three NATS nodes with R3
streams, 2 edges, 3 routers, 2 ledgers, 2 alerts workers as processes; under load through both
edges, each round kill -9 the work queue's leader node, a router, a ledger and the active alerts
worker, then bring them back. Prints, per round, how long clients saw failures, then the totals
judged request by request against both ledgers.

    .venv/bin/python bench/cluster.py [--rounds 3] [--after 600] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.alerts.conftest import Receiver  # noqa: E402
from tests.chaos.harness import analyze  # noqa: E402
from tests.cluster.scenario import run_cluster  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--after", type=int, default=600,
                        help="complete answers to wait for after each round")
    parser.add_argument("--concurrency", type=int, default=8, help="per edge")
    parser.add_argument("--workdir", type=Path, help="keep the processes' logs and data here")
    args = parser.parse_args()
    hooks = Receiver()
    hooks.thread.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = args.workdir or Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            run = run_cluster(workdir, hooks, rounds=args.rounds, after=args.after,
                              concurrency=args.concurrency)
    finally:
        hooks.server.shutdown()
        hooks.server.server_close()
    for line in run.rounds:
        print(line)
    sent, failed = len(run.outcomes), len(run.outcomes) - run.complete
    print(f"requests {sent}, complete {run.complete}, errors {failed} "
          f"({100.0 * failed / max(sent, 1):.2f} %)")
    ok = True
    for name, rows in run.rows.items():
        rep = analyze(name, run.outcomes, rows, run.seen, None)
        print(f"{name}: rows {len(rows)}, lost {len(rep.lost)}, doubled {len(rep.doubled)}, "
              f"upstream doubled {len(rep.upstream_doubled)}, bad answers "
              f"{len(rep.bad_answers)}, mismarked {len(rep.mismarked)}")
        ok &= not (rep.lost or rep.doubled or rep.upstream_doubled or rep.bad_answers)
    same = len({tuple((r["request_id"], r["status"]) for r in rows)
                for rows in run.rows.values()}) == 1
    print(f"ledgers identical: {same}; webhooks: {[b['kind'] for b in run.hooks]}")
    return 0 if ok and same and [b["kind"] for b in run.hooks] == ["fired"] else 1


if __name__ == "__main__":
    sys.exit(main())
