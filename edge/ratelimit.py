"""Rate limits of users and keys at the edge, pure: requests per minute (RPM), tokens per
minute (TPM) and requests in flight (concurrency). No I/O: ``edge/ratelimit_bus.py`` feeds it
what the other edges counted (core-NATS notes) and the tokens each request used (its
``RequestCompleted`` fact), and calls :meth:`Limiter.admit` on the request path.

**Windows.** A minute is a ring of 60 one-second slots (:class:`Window`): adding is O(1),
the total is kept as slots expire (O(1) amortised), and only a refusal walks the ring to say
when the window admits again (``retry-after``). A slot counts until 60 s after its second
began, so the window is 59-60 s wide.

**Who is counted.** A request is counted on its key (``k:<key id>``) and its user
(``u:<user id>``) when that record has an rpm or tpm limit; both limits apply, the stricter
wins (a refusal names the limit that refused; ``retry-after`` is the longest wait of those
that refuse). A refused request is not counted.

**Tokens.** TPM counts every token of a request's usage (input, cache reads and writes,
output) as the router extracted it into ``RequestCompleted``. Those come only after the
answer, so on admission the prompt is estimated (body bytes / 4, the rule the router uses for
``usage_estimated``) and counted at once; when the request's fact arrives the estimate is
replaced by the real usage, in the slot of its admission (or now, when that slot has left the
window). A request is refused when the window is at the limit, or when the window is not empty
and its estimate would pass the limit (one request larger than the whole limit still passes on
an empty window: else it could never run).

**Ample room.** When every rpm/tpm window of a request has room for it plus a margin (an
eighth of the limit, and at least ``AMPLE_REQUESTS`` more such requests), the edge counts it at
once (:meth:`Limiter.check` with ``fast``) instead of waiting for its note to come back: other
edges could only take that margin within one note's round trip by admitting thousands of
requests a second on one key. Every edge counts such an admission unconditionally
(:meth:`Limiter.force`), so they still agree. Near a limit, the order of the notes decides.

**Concurrency.** Requests in flight per key and per user (:class:`InFlight`): this edge's own
count plus the last count each other edge announced (absolute numbers, not increments: a
lost or repeated note heals with the next one, and an edge that stops announcing is forgotten
after ``INFLIGHT_STALE_S``, so a dead edge leaks nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from schemas.errors import GatewayError
from schemas.users import Limits

__all__ = [
    "INFLIGHT_STALE_S",
    "SPAN_S",
    "Admission",
    "InFlight",
    "Limiter",
    "Plan",
    "RateLimited",
    "RateTable",
    "Window",
    "estimate_tokens",
]

SPAN_S = 60  # one minute, in one-second slots
# an edge whose in-flight counts were not repeated for this long is taken for dead
INFLIGHT_STALE_S = 3.0
# how long a client is told to wait when its requests in flight are at the limit
CONCURRENCY_RETRY_S = 1
# a request is counted at once, without waiting for its note to come back, when each of its
# windows has room for it and for this many more like it, and for an eighth of the limit
AMPLE_REQUESTS = 16


def estimate_tokens(body_bytes: int) -> int:
    """The prompt's tokens before anyone counted them: ~4 bytes a token."""
    return body_bytes // 4


class RateLimited(GatewayError):
    """429 with ``retry-after`` (whole seconds until the window admits): Anthropic
    ``rate_limit_error``, OpenAI ``rate_limit_exceeded``, Gemini ``RESOURCE_EXHAUSTED``.
    ``code``: rate_limit_exceeded (rpm, tpm) | concurrency_limit_exceeded."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: int, *, code: str | None = None,
                 user_id: str | None = None, key_id: str | None = None) -> None:
        super().__init__(message, code=code, retryable=True, retry_after=str(retry_after_s))
        self.retry_after_s = retry_after_s
        self.user_id = user_id
        self.key_id = key_id


class Window:
    """Counts of the last ``SPAN_S`` seconds in one-second slots."""

    __slots__ = ("_head", "_slots", "total")

    def __init__(self) -> None:
        self._slots = [0] * SPAN_S
        self._head: int | None = None  # the newest second the ring holds
        self.total = 0

    def _advance(self, sec: int) -> None:
        head = self._head
        if head is None or sec - head >= SPAN_S:
            if self.total or head is None:
                self._slots = [0] * SPAN_S
                self.total = 0
            self._head = sec
            return
        if sec <= head:
            return
        slots = self._slots
        for s in range(head + 1, sec + 1):
            i = s % SPAN_S
            self.total -= slots[i]
            slots[i] = 0
        self._head = sec

    def add(self, sec: int, n: int) -> bool:
        """Count ``n`` at second ``sec`` (now, or a second still in the window: False and
        nothing counted when it has left it)."""
        self._advance(sec)
        assert self._head is not None
        if sec <= self._head - SPAN_S:
            return False
        self._slots[sec % SPAN_S] += n
        self.total += n
        return True

    def count(self, now: float) -> int:
        self._advance(int(now))
        return self.total

    def wait(self, now: float, level: int) -> float:
        """Seconds from ``now`` until the total falls to ``level`` or below (0: it is)."""
        sec = int(now)
        self._advance(sec)
        remaining = self.total
        if remaining <= level:
            return 0.0
        for s in range(sec - SPAN_S + 1, sec + 1):
            remaining -= self._slots[s % SPAN_S]
            if remaining <= level:
                return s + SPAN_S - now
        return SPAN_S - (now - sec)  # (not reached: the ring sums to the total)


class RateTable:
    """RPM and TPM windows per subject (``u:<id>`` / ``k:<id>``), and the token estimates of
    admitted requests until their real usage is known."""

    def __init__(self) -> None:
        self.requests: dict[str, Window] = {}
        self.tokens: dict[str, Window] = {}
        # request id -> (second admitted, estimate, subjects), oldest first
        self._reserved: dict[str, tuple[int, int, tuple[str, ...]]] = {}
        self._expired_at = 0
        self._pairs: dict[str, tuple[Window, Window]] = {}

    def pair(self, subject: str) -> tuple[Window, Window]:
        """A subject's request and token windows."""
        p = self._pairs.get(subject)
        if p is None:
            p = self._pairs[subject] = (self._window(self.requests, subject),
                                        self._window(self.tokens, subject))
        return p

    def _window(self, table: dict[str, Window], subject: str) -> Window:
        w = table.get(subject)
        if w is None:
            w = table[subject] = Window()
        return w

    def requests_in(self, subject: str, now: float) -> int:
        w = self.requests.get(subject)
        return w.count(now) if w is not None else 0

    def tokens_in(self, subject: str, now: float) -> int:
        w = self.tokens.get(subject)
        return w.count(now) if w is not None else 0

    def record(self, request_id: str, estimate: int, subjects: tuple[str, ...],
               now: float) -> None:
        """An admitted request (here or on another edge): one request and its estimate."""
        sec = int(now)
        for s in subjects:
            self._window(self.requests, s).add(sec, 1)
            if estimate:
                self._window(self.tokens, s).add(sec, estimate)
        self.reserve(request_id, sec, estimate, subjects)

    def reserve(self, request_id: str, sec: int, estimate: int,
                subjects: tuple[str, ...]) -> None:
        """Remember an admission's estimate until its usage settles it (or it leaves the
        window: the oldest are dropped once a second)."""
        self._reserved[request_id] = (sec, estimate, subjects)
        if sec != self._expired_at:
            self._expired_at = sec
            self._expire(sec)

    def settle(self, request_id: str, tokens: int, subjects: tuple[str, ...],
               now: float) -> None:
        """A request's real usage: it replaces the estimate (``subjects``: whom to count
        when this edge never saw the admission, e.g. it started after it)."""
        sec = int(now)
        reserved = self._reserved.pop(request_id, None)
        if reserved is None:
            for s in subjects:
                if tokens:
                    self._window(self.tokens, s).add(sec, tokens)
            return
        at, estimate, counted = reserved
        for s in counted:
            w = self._window(self.tokens, s)
            w.count(now)  # the window moved on to now first
            if not w.add(at, tokens - estimate):  # the admission left the window
                w.add(sec, tokens)

    def _expire(self, sec: int) -> None:
        reserved = self._reserved
        while reserved:
            rid = next(iter(reserved))
            if reserved[rid][0] > sec - SPAN_S:
                break
            del reserved[rid]

    def retry_requests(self, subject: str, limit: int, now: float) -> float:
        return self.requests[subject].wait(now, limit - 1)

    def retry_tokens(self, subject: str, level: int, now: float) -> float:
        return self.tokens[subject].wait(now, level)


class InFlight:
    """Requests in flight per subject: this edge's own and the last count of every other
    edge. ``changed`` collects the subjects whose own count moved since the last note."""

    def __init__(self) -> None:
        self.local: dict[str, int] = {}
        self.changed: set[str] = set()
        self._remote: dict[str, tuple[float, dict[str, int]]] = {}  # edge -> (seen, counts)
        self._remote_total: dict[str, int] = {}

    def total(self, subject: str) -> int:
        return self.local.get(subject, 0) + self._remote_total.get(subject, 0)

    def acquire(self, subject: str) -> None:
        self.local[subject] = self.local.get(subject, 0) + 1
        self.changed.add(subject)

    def release(self, subject: str) -> None:
        n = self.local.get(subject, 0) - 1
        if n > 0:
            self.local[subject] = n
        else:
            self.local.pop(subject, None)
        self.changed.add(subject)

    def take_changes(self) -> dict[str, int]:
        """The own counts that moved since the last call (0 included): the next note."""
        out = {s: self.local.get(s, 0) for s in self.changed}
        self.changed.clear()
        return out

    def apply(self, edge: str, counts: dict[str, int], now: float, full: bool = False) -> None:
        """Another edge's counts (``full``: all of them, subjects missing are 0)."""
        _, held = self._remote.get(edge, (now, {}))
        totals = self._remote_total
        if full:
            counts = {**{s: 0 for s in held}, **counts}
        for s, n in counts.items():
            delta = n - held.get(s, 0)
            if delta:
                t = totals.get(s, 0) + delta
                if t > 0:
                    totals[s] = t
                else:
                    totals.pop(s, None)
            if n > 0:
                held[s] = n
            else:
                held.pop(s, None)
        if held:
            self._remote[edge] = (now, held)
        else:
            self._remote.pop(edge, None)

    def forget(self, edge: str) -> None:
        self.apply(edge, {}, 0.0, full=True)

    def expire(self, now: float, stale_s: float = INFLIGHT_STALE_S) -> list[str]:
        """Forget the edges silent for ``stale_s`` (dead ones): the edges forgotten."""
        gone = [e for e, (seen, _) in self._remote.items() if now - seen > stale_s]
        for e in gone:
            self.forget(e)
        return gone


class Admission(NamedTuple):
    """An admitted request: what was counted, so it can be released and announced."""

    request_id: str
    estimate: int
    counted: tuple[str, ...]  # rpm/tpm subjects
    held: tuple[str, ...]  # concurrency subjects
    decided: bool = True  # counted already (False: to be decided in the notes' order)


class Rule:
    """One subject's limits as the request path uses them: its windows held directly (made
    once per subject, never dropped), its label for the messages."""

    __slots__ = ("concurrency", "label", "req", "rpm", "rpm_ample", "subject", "tok", "tpm",
                 "tpm_margin")

    def __init__(self, rates: RateTable, subject: str, label: str, limits: Limits) -> None:
        self.subject = subject
        self.label = label  # "user alice", "API key 'laptop' (cs-Ab12…) of user alice"
        self.rpm = limits.rpm
        self.tpm = limits.tpm
        self.concurrency = limits.concurrency
        # ample room (counted at once): the window at most this full (rpm), or with this much
        # left besides the request (tpm, and AMPLE_REQUESTS requests of its size)
        rpm = limits.rpm
        self.rpm_ample = (rpm - 1 - max(AMPLE_REQUESTS, rpm // 8)) if rpm is not None else 0
        self.tpm_margin = (limits.tpm or 0) // 8
        self.req = rates._window(rates.requests, subject)
        self.tok = rates._window(rates.tokens, subject)


class Plan(NamedTuple):
    """The rules of one key and its user (what :meth:`Limiter.check` runs), built once per
    pair of records and kept until either changes."""

    rules: tuple[Rule, ...]
    counted: tuple[str, ...]  # subjects with rpm or tpm
    held: tuple[str, ...]  # subjects with a concurrency limit
    user_id: str | None
    key_id: str | None


class Limiter:
    """The check on the request path: :meth:`check` refuses (``RateLimited``) or counts."""

    def __init__(self) -> None:
        self.rates = RateTable()
        self.inflight = InFlight()
        # what other edges must hear: admissions (request id, estimate, subjects) to decide
        # in the notes' order, and admissions counted at once (ample room)
        self.outbox: list[tuple[str, int, tuple[str, ...]]] = []
        self.counted_out: list[tuple[str, int, tuple[str, ...]]] = []

    def plan(self, user: tuple[str, str, Limits] | None,
             key: tuple[str, str, Limits] | None) -> Plan | None:
        """``user``/``key``: (id, label for messages, limits). None: nothing limits them."""
        rules: list[Rule] = []
        if key is not None and _limited(key[2]):
            rules.append(Rule(self.rates, "k:" + key[0], key[1], key[2]))
        if user is not None and _limited(user[2]):
            rules.append(Rule(self.rates, "u:" + user[0], user[1], user[2]))
        if not rules:
            return None
        return Plan(tuple(rules),
                    tuple(r.subject for r in rules if r.rpm is not None or r.tpm is not None),
                    tuple(r.subject for r in rules if r.concurrency is not None),
                    user[0] if user else None, key[0] if key else None)

    def admit(self, request_id: str, user: tuple[str, str, Limits] | None,
              key: tuple[str, str, Limits] | None, body_bytes: int, now: float) -> Admission:
        """:meth:`plan` and :meth:`check` in one (tests; the edge keeps its plans)."""
        plan = self.plan(user, key)
        if plan is None:
            return _NOTHING
        return self.check(plan, request_id, body_bytes, now)

    def check(self, plan: Plan, request_id: str, body_bytes: int, now: float,
              count: bool = True, fast: bool = False) -> Admission:
        """Refuse (``RateLimited``) or admit against what is counted now; concurrency is held
        at once. ``count``: the request is counted now too (one edge alone, tests); else the
        caller has it counted in the notes' order by :meth:`decide` (the edges) — unless
        ``fast`` and every window has ample room: then it is counted now and the admission
        says ``decided`` (the edge announces it for every edge to count, :meth:`force`)."""
        estimate = body_bytes // 4  # estimate_tokens, inlined
        sec = int(now)
        refused = False
        ample = fast
        need = AMPLE_REQUESTS * estimate
        inflight = self.inflight
        local, remote = inflight.local, inflight._remote_total
        for r in plan.rules:
            if r.rpm is not None:
                w = r.req
                if w._head != sec:
                    w._advance(sec)
                if w.total >= r.rpm:
                    refused = True
                elif w.total > r.rpm_ample:
                    ample = False
            if r.tpm is not None:
                w = r.tok
                if w._head != sec:
                    w._advance(sec)
                used = w.total
                if used >= r.tpm or (used > 0 and used + estimate > r.tpm):
                    refused = True
                else:
                    room = r.tpm - used - estimate
                    if room < r.tpm_margin or room < need:
                        ample = False
            if r.concurrency is not None and (
                    local.get(r.subject, 0) + remote.get(r.subject, 0)) >= r.concurrency:
                refused = True
        if refused:
            raise self.refusal(plan, estimate, now)
        counted = plan.counted
        decided = True
        if counted:
            if count or ample:
                slot = sec % SPAN_S
                for r in plan.rules:
                    if r.rpm is not None or r.tpm is not None:
                        w = r.req
                        if w._head != sec:
                            w._advance(sec)
                        w._slots[slot] += 1
                        w.total += 1
                        if estimate:
                            w = r.tok
                            if w._head != sec:
                                w._advance(sec)
                            w._slots[slot] += estimate
                            w.total += estimate
                self.rates.reserve(request_id, sec, estimate, counted)
                (self.outbox if count else self.counted_out).append(
                    (request_id, estimate, counted))
            else:
                decided = False
        held = plan.held
        if held:
            changed = inflight.changed
            for s in held:  # InFlight.acquire, inlined
                local[s] = local.get(s, 0) + 1
                changed.add(s)
        return Admission(request_id, estimate, counted, held, decided)

    def force(self, request_id: str, estimate: int, subjects: tuple[str, ...],
              now: float) -> None:
        """Another edge's admission it counted at once (ample room): counted here too,
        whatever the windows hold (it is admitted already)."""
        rates = self.rates
        if request_id in rates._reserved:  # counted already
            return
        sec = int(now)
        slot = sec % SPAN_S
        for s in subjects:
            req, tok = rates.pair(s)
            if req._head != sec:
                req._advance(sec)
            req._slots[slot] += 1
            req.total += 1
            if estimate:
                if tok._head != sec:
                    tok._advance(sec)
                tok._slots[slot] += estimate
                tok.total += estimate
        rates.reserve(request_id, sec, estimate, subjects)

    def decide(self, request_id: str, estimate: int, subjects: tuple[str, ...], now: float,
               limits_of: Callable[[str], tuple[int | None, int | None] | None]) -> bool:
        """An admission in the order of the notes (this edge's own, when they come back, and
        the other edges'): counted if every rpm/tpm limit of its subjects (``limits_of``:
        (rpm, tpm) of a subject, None when unknown here) still has room, else not counted
        (False). Every edge sees the notes of one NATS server in (nearly) the same order and
        decides the same; only notes the server handles at the same instant can come in a
        different order on different edges."""
        rates = self.rates
        if request_id in rates._reserved:  # counted already (a note seen twice)
            return True
        sec = int(now)
        pairs = []
        for s in subjects:
            pair = rates.pair(s)
            req, tok = pair
            if req._head != sec:
                req._advance(sec)
            if tok._head != sec:
                tok._advance(sec)
            lim = limits_of(s)
            if lim is not None:
                rpm, tpm = lim
                if rpm is not None and req.total >= rpm:
                    return False
                if tpm is not None:
                    used = tok.total
                    if used >= tpm or (used > 0 and used + estimate > tpm):
                        return False
            pairs.append(pair)
        slot = sec % SPAN_S
        for req, tok in pairs:
            req._slots[slot] += 1
            req.total += 1
            if estimate:
                tok._slots[slot] += estimate
                tok.total += estimate
        rates.reserve(request_id, sec, estimate, subjects)
        return True

    def refusal(self, plan: Plan, estimate: int, now: float) -> RateLimited:
        """Which limits refuse, and when the window admits again (the longest wait)."""
        refusals: list[tuple[float, str, str]] = []  # (wait s, why, code)
        for r in plan.rules:
            if r.rpm is not None and r.req.count(now) >= r.rpm:
                refusals.append((r.req.wait(now, r.rpm - 1),
                                 f"{r.label} allows {r.rpm} requests per minute",
                                 "rate_limit_exceeded"))
            if r.tpm is not None:
                used = r.tok.count(now)
                if used >= r.tpm or (used > 0 and used + estimate > r.tpm):
                    refusals.append((r.tok.wait(now, max(0, r.tpm - estimate)),
                                     f"{r.label} allows {r.tpm} tokens per minute ({used} "
                                     f"used in the last minute, this request ~{estimate})",
                                     "rate_limit_exceeded"))
            if r.concurrency is not None and \
                    self.inflight.total(r.subject) >= r.concurrency:
                refusals.append((float(CONCURRENCY_RETRY_S),
                                 f"{r.label} allows {r.concurrency} requests in flight at "
                                 "once", "concurrency_limit_exceeded"))
        if not refusals:  # the last room went to a request of the same instant elsewhere
            r = plan.rules[0]
            refusals.append((1.0, f"{r.label} has no room left in its rate limits this "
                             "instant", "rate_limit_exceeded"))
        wait, why, code = max(refusals)
        seconds = max(1, math.ceil(wait))
        # "Please retry in Ns": the words Gemini CLI reads its wait from (it ignores the
        # retry-after header; bench/real_clients/users.py)
        return RateLimited(f"rate limit reached: {why}. Please retry in {seconds}s", seconds,
                           code=code, user_id=plan.user_id, key_id=plan.key_id)

    def release(self, admission: Admission) -> None:
        """The request ended (answered, failed, its client gone, its router lost)."""
        inflight = self.inflight
        local, changed = inflight.local, inflight.changed
        for s in admission.held:  # InFlight.release, inlined
            n = local.get(s, 0) - 1
            if n > 0:
                local[s] = n
            else:
                local.pop(s, None)
            changed.add(s)


_NOTHING = Admission("", 0, (), ())


def _limited(limits: Limits) -> bool:
    return limits.rpm is not None or limits.tpm is not None or limits.concurrency is not None
