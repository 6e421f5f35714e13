"""NATS subject names. Commands and facts live in separate subject trees.

Commands (never stored as facts):
    llm.request.<dialect>        request messages, JetStream work queue CS_REQUESTS
    cs.cancel.<request id>       edge -> router: the client went away (core NATS)
    cs.router.ping               readiness probe, answered by any router (core NATS)
    cs.router.models             model list for GET /v1/models, answered by any router
    cs.router.alive.<router>     is this router alive? (edge -> one router)
    _INBOX.cs.<edge>.ping        is this edge alive? (router -> one edge)
    _INBOX.csack.<router>.<rid>  the edge's word that a final reply reached it
    cs.breaker.fail.<key>        router -> routers: one failure counted toward a breaker
    cs.rate.note                 edge -> edges: requests admitted, in flight (rate limits)
    _INBOX.cs.<edge>.<rid>       router -> edge reply stream (core NATS)
    cs.ledger.<query>            ledger queries (stats, log, ...), queue group cs-ledger

Facts (JetStream stream CS_EVENTS, readable JSON):
    llm.attempt.<dialect>.<provider>    one per upstream attempt
    llm.response.<dialect>.<provider>   one per request (provider "-" when none served it)
    user.<user>.quota                   QuotaUsed: a user's quota level (latest per user)
    gateway.part.<part>.<state>         PartChanged: the supervisor started/restarted a part
    admin.<thing>.<verb>                AdminAction: a user, key, limit, provider, setting...
                                        changed (the CLI and `codeswitch up` publish it)
    session.deleted                     SessionDeleted: a session deleted for real, its bill
    provider.>  user.>  alert.>  later facts of the other workers
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ADMIN_PREFIX",
    "ATTEMPT_PREFIX",
    "BREAKER_FAIL_PREFIX",
    "CANCEL_PREFIX",
    "FACT_SUBJECTS",
    "LEDGER_QUERY_PREFIX",
    "RATE_NOTE",
    "REPLY_PREFIX",
    "REQUEST_PREFIX",
    "RESPONSE_PREFIX",
    "ROUTER_ALIVE_PREFIX",
    "ROUTER_MODELS",
    "ROUTER_PING",
    "ROUTER_ROLLCALL",
    "SESSION_DELETED",
    "admin_subject",
    "attempt_subject",
    "cancel_subject",
    "ledger_query_subject",
    "circuit_subject",
    "part_subject",
    "quota_subject",
    "request_subject",
    "response_subject",
    "safe_token",
]

REQUEST_PREFIX: Final = "llm.request"
ATTEMPT_PREFIX: Final = "llm.attempt"
RESPONSE_PREFIX: Final = "llm.response"
CANCEL_PREFIX: Final = "cs.cancel"
ROUTER_PING: Final = "cs.router.ping"
ROUTER_MODELS: Final = "cs.router.models"
# every live router answers (no queue group): how many routers are taking work right now
ROUTER_ROLLCALL: Final = "cs.router.rollcall"
BREAKER_FAIL_PREFIX: Final = "cs.breaker.fail"
# edge -> every edge: what it admitted and holds in flight for users' and keys' rate limits
RATE_NOTE: Final = "cs.rate.note"
# cs.router.alive.<router id>: answered by that router alone (the edge checks that the router
# holding its requests lives; "no responders" = it died)
ROUTER_ALIVE_PREFIX: Final = "cs.router.alive"
REPLY_PREFIX: Final = "_INBOX.cs"
# cs.ledger.<query>: answered by any ledger (queue group "cs-ledger")
LEDGER_QUERY_PREFIX: Final = "cs.ledger"
# admin.<thing>.<verb>: AdminAction facts (admin.user.created, admin.key.revoked, ...)
ADMIN_PREFIX: Final = "admin"

# the tombstone of a deleted session (SessionDeleted)
SESSION_DELETED: Final = "session.deleted"

FACT_SUBJECTS: Final[tuple[str, ...]] = (
    "llm.attempt.>",
    "llm.response.>",
    "provider.>",
    "admin.>",
    "user.>",
    "alert.>",
    "gateway.>",
    "session.>",
)

_UNSAFE = str.maketrans({c: "_" for c in ". *>\t\r\n"})


def safe_token(value: str | None) -> str:
    """A single subject token: no dots, wildcards or whitespace; '-' when empty."""
    if not value:
        return "-"
    return value.translate(_UNSAFE)


def request_subject(dialect: str) -> str:
    return f"{REQUEST_PREFIX}.{dialect}"


def attempt_subject(dialect: str, provider: str | None) -> str:
    return f"{ATTEMPT_PREFIX}.{dialect}.{safe_token(provider)}"


def response_subject(dialect: str, provider: str | None) -> str:
    return f"{RESPONSE_PREFIX}.{dialect}.{safe_token(provider)}"


def circuit_subject(provider: str, state: str) -> str:
    return f"provider.circuit.{safe_token(provider)}.{state}"


def quota_subject(user: str) -> str:
    return f"user.{safe_token(user)}.quota"


def admin_subject(thing: str, verb: str) -> str:
    """``admin.<thing>.<verb>``: the subject of the AdminAction whose action is
    ``<thing>.<verb>`` (``user.created`` -> ``admin.user.created``)."""
    return f"{ADMIN_PREFIX}.{safe_token(thing)}.{safe_token(verb)}"


def part_subject(part: str, state: str) -> str:
    return f"gateway.part.{safe_token(part)}.{state}"


def cancel_subject(request_id: str) -> str:
    return f"{CANCEL_PREFIX}.{request_id}"


def ledger_query_subject(query: str) -> str:
    """``cs.ledger.<query>``: where the CLI asks the ledger (``stats``, ``log``, ...)."""
    return f"{LEDGER_QUERY_PREFIX}.{query}"
