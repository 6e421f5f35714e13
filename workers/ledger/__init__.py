"""The ledger: the event log (CS_EVENTS) projected into DuckDB, queried over NATS.

Modules (imported on their own so that the pure ones stay free of NATS and DuckDB):
    projection  events -> rows (pure)         prices   price table, overrides, cost (pure)
    store       the DuckDB file, exactly once queries  read queries
    pull        batch pull client             replay   ordered stream reader, fold
    service     the process: ``run(nats_url, home, stop)``

See docs/ledger.md.
"""

__all__: list[str] = []
