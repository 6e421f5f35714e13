"""The runtime every part shares: how a codeswitch process talks to NATS and lives on a machine.

    names     every stream, bucket, durable consumer and KV key name, declared once
    bus       connecting to NATS (one set of reconnect settings), creating streams and buckets
    facts     publishing facts with a write-ahead outbox (nothing billed is lost on a crash)
    pull      batched JetStream pull consumers (the ledger and the alerts)
    prices    the price book with the user's overrides, kept current (the ledger and the alerts)
    natsd     the embedded nats-server: configuration, credentials, start and stop
    home      the data directory, the run file, NATS URL and credentials resolution
    health    the supervisor's parts file, read by ``/health``
    secrets   provider keys encrypted at rest
    process   process titles, private files, parent-death signals, free ports
    memory    bounded malloc arenas; gc.freeze and malloc_trim once a part is quiet

The parts (``edge``, ``workers/*``) import this package and ``schemas``; nothing here imports a
part or the CLI (``codeswitch``), which sits on top of everything. Importing ``runtime`` itself
costs nothing: each module is imported by the processes that use it.
"""
