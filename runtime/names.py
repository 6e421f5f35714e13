"""Every stream, KV bucket, object store and durable consumer name, declared once.

Subjects (what a message means) are part of the wire contract and live in
``schemas/subjects.py``; these names say where the messages are kept and who reads them.
``runtime.bus`` creates the streams and buckets from here; the parts, the CLI and
``deploy/nats/init-streams.sh`` (through ``codeswitch nats init``) only name them.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "AFFINITY_BUCKET",
    "ALERTS_EVAL_DURABLE",
    "ALERTS_NOTIFY_DURABLE",
    "ALERT_STATE_BUCKET",
    "BODIES_BUCKET",
    "BODY_LOG_BUCKET",
    "BODY_LOG_MAX_BYTES",
    "BODY_LOG_TTL_S",
    "CIRCUITS_BUCKET",
    "EVENTS_STREAM",
    "KEYS_BUCKET",
    "KV_BUCKETS",
    "LEDGER_DURABLE",
    "is_ledger_durable",
    "ledger_durable",
    "MCP_BUCKET",
    "NAMES_BUCKET",
    "PEER_BODIES_BUCKET",
    "PRESENCE_BUCKET",
    "PROVIDERS_BUCKET",
    "QUOTA_BUCKET",
    "QUOTA_DURABLE",
    "quota_durable",
    "REQUESTS_STREAM",
    "ROUTER_DELIVER",
    "ROUTER_DURABLE",
    "RULES_BUCKET",
    "SETTINGS_BUCKET",
    "USERS_BUCKET",
]

# -- streams ---------------------------------------------------------------------------------
REQUESTS_STREAM: Final = "CS_REQUESTS"  # llm.request.>: the work queue (memory, short max age)
EVENTS_STREAM: Final = "CS_EVENTS"  # every fact: the event log (file)

# -- durable consumers -----------------------------------------------------------------------
ROUTER_DURABLE: Final = "routers"  # on CS_REQUESTS, shared by every router (a queue)
# the work queue consumer's deliver subject: fixed, so that routers starting together create
# the same consumer (with a per-router inbox, each create rewrote it, and only the last router
# to start received any work)
ROUTER_DELIVER: Final = "cs.work.routers"
# on CS_EVENTS: the DuckDB projection. Each ledger process has its own, named from its data
# directory (``ledger_durable``), so that two ledgers (each with its own DuckDB file) never
# delete each other's; "ledger" alone is the name ledgers had before (still used by one
# whose data directory predates the change)
LEDGER_DURABLE: Final = "ledger"
ALERTS_EVAL_DURABLE: Final = "alerts"  # on CS_EVENTS: rule evaluation
ALERTS_NOTIFY_DURABLE: Final = "alerts-notify"  # on CS_EVENTS: alert.fired/resolved -> webhooks
# on CS_EVENTS (llm.response.>, session.deleted): spend per user and key (workers/quota),
# positioned from the quota worker's own state file, no acks
QUOTA_DURABLE: Final = "quota"

# -- KV buckets and object stores ------------------------------------------------------------
PROVIDERS_BUCKET: Final = "cs_providers"
SETTINGS_BUCKET: Final = "cs_settings"
CIRCUITS_BUCKET: Final = "cs_circuits"
MCP_BUCKET: Final = "cs_mcp"
RULES_BUCKET: Final = "cs_rules"
ALERT_STATE_BUCKET: Final = "cs_alert_state"
# users and their API keys (schemas/users.py), watched by every edge
USERS_BUCKET: Final = "cs_users"
KEYS_BUCKET: Final = "cs_keys"
# the names of users and of each user's live keys -> their ids: a KV create claims a name, so
# two concurrent `user add` (or `key create`) of one name cannot both succeed
NAMES_BUCKET: Final = "cs_names"
# spend per user and key in the current periods (schemas/quota.py), written by the quota
# worker, watched by every edge: one key per scope, user.<id> / key.<id>
QUOTA_BUCKET: Final = "cs_quota"
# session affinity (workers/router/affinity.py): hash of session+model -> the provider that
# served it last; memory storage (nothing of a session on disk), per-message TTL
AFFINITY_BUCKET: Final = "cs_affinity"
# heartbeats of the running edges and routers (runtime/presence.py), per-message TTL
PRESENCE_BUCKET: Final = "cs_presence"
BODIES_BUCKET: Final = "cs_bodies"  # object store: request bodies too big for one message
# request/response bodies when the body log is on ([gateway] body_log): 7 days, 1 GiB at most
BODY_LOG_BUCKET: Final = "cs_body_log"
BODY_LOG_TTL_S: Final = 7 * 24 * 3600.0
# on a device joined to a hub: the other devices' body-log entries (runtime/sync.py), read
# where the own body log has no entry
PEER_BODIES_BUCKET: Final = "cs_body_log_peers"
BODY_LOG_MAX_BYTES: Final = 1 << 30

# options: history, description; storage "memory" (default file); ttl (max age, seconds);
# marker_ttl: the server puts a delete marker when an entry expires (watchers see it go)
KV_BUCKETS: Final[dict[str, dict[str, Any]]] = {
    PROVIDERS_BUCKET: {"history": 5, "description": "provider configs"},
    SETTINGS_BUCKET: {"history": 5, "description": "gateway settings"},
    CIRCUITS_BUCKET: {"history": 1, "description": "circuit breaker states (routers)"},
    MCP_BUCKET: {"history": 5, "description": "MCP servers"},
    RULES_BUCKET: {"history": 5, "description": "alert rules (workers/alerts)"},
    ALERT_STATE_BUCKET: {"history": 1, "description": "active alerts and cool-downs"},
    AFFINITY_BUCKET: {"history": 1, "description": "session affinity: session+model -> "
                      "provider (routers)", "storage": "memory", "ttl": 7 * 24 * 3600.0,
                      "marker_ttl": 60.0},
    PRESENCE_BUCKET: {"history": 1, "description": "heartbeats of the running gateways",
                      "storage": "memory", "ttl": 3600.0, "marker_ttl": 60.0},
    USERS_BUCKET: {"history": 5, "description": "gateway users (one key per user id)"},
    KEYS_BUCKET: {"history": 5, "description": "API keys: hash, owner, models, expiry "
                  "(one key per key id; never the secret)"},
    NAMES_BUCKET: {"history": 1, "description": "names of users and of their live keys -> "
                   "ids, claimed with a KV create (the CLI)"},
    QUOTA_BUCKET: {"history": 1, "description": "spend per user and key in the current "
                   "budget periods (quota worker -> edges)"},
}


def ledger_durable(device: str, data_dir: str) -> str:
    """The durable consumer of the ledger whose DuckDB file is in ``data_dir`` on ``device``:
    ``ledger-`` and 10 hex digits of their hash. Stable across restarts; different for every
    data directory (and host), so ledgers started side by side never share or delete one."""
    import hashlib

    digest = hashlib.blake2b(f"{device}\0{data_dir}".encode(), digest_size=5).hexdigest()
    return f"{LEDGER_DURABLE}-{digest}"


def quota_durable(device: str, data_dir: str) -> str:
    """The quota worker's durable consumer for its state file in ``data_dir`` on ``device``:
    ``quota-`` and 10 hex digits (several quota workers on a cluster never share one)."""
    import hashlib

    digest = hashlib.blake2b(f"{device}\0{data_dir}".encode(), digest_size=5).hexdigest()
    return f"{QUOTA_DURABLE}-{digest}"


def is_ledger_durable(name: str) -> bool:
    """A ledger's consumer on CS_EVENTS (this version's or the one before's)."""
    return name == LEDGER_DURABLE or (name.startswith(LEDGER_DURABLE + "-")
                                      and len(name) == len(LEDGER_DURABLE) + 11)
