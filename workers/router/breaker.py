"""Circuit breakers, pure: state, transitions and the decision to try a provider. No I/O.

One breaker per provider (opened by transport failures: connect errors, timeouts, broken
connections — the provider itself is unreachable) and one per provider+model (opened by
failing answers for that model: 429, 5xx, 529, error events inside a stream).

    closed --N failures inside window_s--> open --cooldown_s--> half_open
    half_open --probe ok (M in a row)--> closed
    half_open --probe fails--> open

The state is shared by every router through KV (``service`` does the compare-and-set); this
module only computes. Successes in the closed state change nothing (no KV write on the happy
path). While half-open, one router at a time sends a probe (``probe_at`` marks it; a probe
older than ``probe_timeout_s`` is considered lost and another may start).
"""

from __future__ import annotations

import msgspec

from schemas.config import BreakerPolicy

__all__ = ["BreakerPolicy", "BreakerState", "allow", "breaker_key", "record", "TRANSPORT_ERRORS"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
TRANSPORT_ERRORS = frozenset({"connect", "connect_timeout", "timeout", "protocol", "transport"})


class BreakerState(msgspec.Struct, kw_only=True, omit_defaults=True):
    state: str = CLOSED
    failures: list[float] = []  # timestamps of recent failures (closed state)
    opened_at: float = 0.0
    probe_at: float = 0.0  # when the current half-open probe started
    successes: int = 0  # successful probes so far (half_open)
    reason: str | None = None


def breaker_key(provider: str, model: str | None = None) -> str:
    """KV key: ``<provider>`` or ``<provider>.<model>`` (dots and wildcards made safe)."""
    if model is None:
        return provider
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in model)
    return f"{provider}.{safe}"


def allow(st: BreakerState | None, now: float,
          policy: BreakerPolicy) -> tuple[bool, BreakerState | None]:
    """May a request go to this provider now? Returns (allowed, new state to store or None).

    A non-None new state means this caller starts a half-open probe and must win the
    compare-and-set before sending it."""
    if st is None or st.state == CLOSED:
        return True, None
    if st.state == OPEN:
        if now - st.opened_at < policy.cooldown_s:
            return False, None
        return True, BreakerState(state=HALF_OPEN, opened_at=st.opened_at, probe_at=now,
                                  successes=0, reason=st.reason)
    # half-open: one probe at a time
    if st.probe_at and now - st.probe_at < policy.probe_timeout_s:
        return False, None
    return True, msgspec.structs.replace(st, probe_at=now)


def record(st: BreakerState | None, ok: bool, now: float, policy: BreakerPolicy,
           reason: str | None = None) -> BreakerState | None:
    """The state after one result, or None when nothing changes (no write needed)."""
    st = st or BreakerState()
    if st.state == CLOSED:
        if ok:
            return None
        recent = [t for t in st.failures if now - t < policy.window_s] + [now]
        if len(recent) >= policy.failures:
            return BreakerState(state=OPEN, opened_at=now, reason=reason)
        return BreakerState(state=CLOSED, failures=recent[-policy.failures:], reason=reason)
    if st.state == HALF_OPEN:
        if not ok:
            return BreakerState(state=OPEN, opened_at=now, reason=reason)
        if st.successes + 1 >= policy.successes:
            return BreakerState(state=CLOSED)
        return msgspec.structs.replace(st, successes=st.successes + 1, probe_at=0.0)
    # open: results of requests that were already in flight change nothing
    return None
