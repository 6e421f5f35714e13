"""The note edges send each other about rate limits (core NATS ``cs.rate.note``, fire and
forget; ``edge/ratelimit_bus.py`` sends and folds them, ``edge/ratelimit.py`` counts)."""

from __future__ import annotations

import msgspec

__all__ = ["RateNote"]


class RateNote(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What one edge counted since its last note. ``a``: requests it admitted, each
    ``[request id, estimated prompt tokens, [subjects]]`` (a subject is ``u:<user id>`` or
    ``k:<key id>``), one request each toward RPM and the estimate toward TPM. ``c``: its own
    requests in flight per subject, absolute (``full``: all of them, a subject missing is 0;
    repeated every second while any is in flight, so an edge that dies is forgotten).
    ``n``: requests it admitted at once because their windows had ample room (the same
    shape as ``a``): every edge counts them, whatever its windows hold."""

    e: str  # the edge's id (its own notes are skipped)
    a: list[tuple[str, int, tuple[str, ...]]] = []
    n: list[tuple[str, int, tuple[str, ...]]] = []
    c: dict[str, int] = {}
    full: bool = False
