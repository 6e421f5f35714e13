"""The router worker: takes request messages from the CS_REQUESTS work queue (a durable push
consumer delivered to the queue group "routers", so N routers share the work), plans the
attempts, calls the upstream with aiohttp, streams the answer to the edge's reply subject, falls
back before the first content byte, and publishes attempt and response facts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api as js_api

from codeswitch import bus
from codeswitch.facts import FactPublisher
from schemas.config import ProviderConfig
from schemas.envelope import (
    ENV_HEADER,
    KIND_ACCEPTED,
    KIND_DATA,
    KIND_END,
    KIND_FULL,
    KIND_START,
    ReplyStart,
    RequestEnvelope,
)
from schemas.events import AttemptFinished, CircuitChanged, RequestCompleted, Usage, new_id
from schemas.subjects import (
    BREAKER_FAIL_PREFIX,
    CANCEL_PREFIX,
    REQUEST_PREFIX,
    ROUTER_MODELS,
    ROUTER_PING,
    attempt_subject,
    circuit_subject,
    response_subject,
)
from workers import translator
from workers.router.breaker import TRANSPORT_ERRORS, BreakerState, allow, breaker_key, record
from workers.router.chat_usage import UsageChunkFilter, request_usage
from workers.router.gemini_array import ArrayFramer, wants_sse
from workers.router.models import render_models
from workers.router.plan import Candidate, NoProviderError, RoundRobin, plan, should_fail_over
from workers.router.providers import ProviderTable
from workers.router.shared import CircuitTable, SettingsView, watch_bucket
from workers.router.upstream import (
    UpstreamFailure,
    map_errors,
    rewrite_model,
    upstream_headers,
    upstream_url,
)
from workers.translator import TranslationContext, TranslationError
from workers.translator.errors import error_body, stream_error
from workers.translator.usage import UsageTracker

__all__ = ["Router", "run"]

log = logging.getLogger("codeswitch.router")

_env_decoder = msgspec.json.Decoder(RequestEnvelope)


class _FailureNote(msgspec.Struct):
    key: str
    provider: str
    ts: float
    router: str
    model: str | None = None
    reason: str | None = None


_note_decoder = msgspec.json.Decoder(_FailureNote)
_enc = msgspec.json.Encoder()
_A = bytes([KIND_ACCEPTED])
_D = bytes([KIND_DATA])
_E = bytes([KIND_END])
_F = bytes([KIND_FULL])
_S = bytes([KIND_START])
# Hold a stream's opening bytes until its first content event (or this much), so that an
# error event before any content can still fall back to the next provider.
_HOLD_LIMIT = 64 * 1024
HEARTBEAT_S = 5.0
ACCEPT_AFTER_S = 0.2


@dataclass
class _Attempt:
    """What one attempt produced; becomes an AttemptFinished fact."""

    candidate: Candidate
    number: int
    started_at: float
    outcome: str = "failed"
    status: int = 0
    error_class: str | None = None
    error_message: str | None = None
    ttfb_ms: float | None = None
    duration_ms: float = 0.0
    usage: Usage | None = None
    finish_reason: str | None = None
    committed: bool = False  # something reached the client
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    bytes_out: int = 0
    context: TranslationContext | None = None  # request-side state the response side needs
    conv: translator.StreamTranslator | None = None
    usage_filter: UsageChunkFilter | None = None  # Chat pass-through: we asked for usage


class Router:
    def __init__(self, nats_url: str, *, router_id: str | None = None,
                 max_in_flight: int = 4096, grace: float = 10.0) -> None:
        self.nats_url = nats_url
        self.router_id = router_id or f"router-{os.getpid()}-{os.urandom(2).hex()}"
        self.max_in_flight = max_in_flight
        self.grace = grace
        self.table = ProviderTable()
        self.settings = SettingsView()
        self.circuits = CircuitTable()
        self.rr = RoundRobin()
        self.load: dict[str, int] = {}  # requests in flight per provider (least-loaded)
        self.nc: NATS | None = None
        self.facts: FactPublisher | None = None
        self.http: aiohttp.ClientSession | None = None
        self._inflight: dict[str, tuple[asyncio.Task[None], str]] = {}
        self._subs: list[Subscription] = []
        self._work_sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._bg: set[asyncio.Future[None]] = set()
        self._stopping = False
        # failures inside the window while a breaker is closed, counted by every router from
        # the failure notes all routers send (core NATS, no KV write per failure); the
        # transition to open is a compare-and-set in KV, so exactly one router makes it
        self._local_breakers: dict[str, BreakerState] = {}
        self.handled = 0

    # -- lifecycle ---------------------------------------------------------------------------
    async def startup(self) -> None:
        self.nc = nc = await bus.connect(self.nats_url, name=self.router_id,
                                         on_reconnect=self._after_reconnect)
        await bus.wait_ready(nc)
        js = nc.jetstream()
        await bus.ensure_all(js)
        self.js = js
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None), auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
        self.facts = FactPublisher(nc)
        self.facts.start()
        kv = await js.key_value(bus.PROVIDERS_BUCKET)
        self._tasks.append(asyncio.create_task(self.table.watch(kv), name="providers"))
        settings_kv = await js.key_value(bus.SETTINGS_BUCKET)
        self._tasks.append(asyncio.create_task(
            watch_bucket(settings_kv, self.settings.apply, self.settings.ready)))
        self.circuits.kv = await js.key_value(bus.CIRCUITS_BUCKET)
        self._tasks.append(asyncio.create_task(
            watch_bucket(self.circuits.kv, self.circuits.apply, self.circuits.ready)))
        for ready, what in ((self.table.ready, "providers"), (self.settings.ready, "settings"),
                            (self.circuits.ready, "circuits")):
            try:
                await asyncio.wait_for(ready.wait(), 10)
            except TimeoutError:
                log.warning("%s not loaded after 10 s; continuing", what)
        self._subs.append(await nc.subscribe(ROUTER_PING, queue="routers", cb=self._on_ping))
        self._subs.append(await nc.subscribe(ROUTER_MODELS, queue="routers",
                                             cb=self._on_models))
        self._subs.append(await nc.subscribe(f"{CANCEL_PREFIX}.*", cb=self._on_cancel))
        self._subs.append(await nc.subscribe(f"{BREAKER_FAIL_PREFIX}.>",
                                             cb=self._on_failure_note))
        await self._subscribe_work()
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
        log.info("router %s ready (%d providers)", self.router_id, len(self.table.providers))

    async def _subscribe_work(self) -> None:
        self._work_sub = await self.js.subscribe(
            f"{REQUEST_PREFIX}.>", queue=bus.ROUTER_DURABLE, durable=bus.ROUTER_DURABLE,
            stream=bus.REQUESTS_STREAM, cb=self._on_request, manual_ack=True,
            config=js_api.ConsumerConfig(
                ack_policy=js_api.AckPolicy.EXPLICIT, ack_wait=30,
                max_ack_pending=self.max_in_flight, max_deliver=1,
            ),
            pending_msgs_limit=100_000, pending_bytes_limit=1024 * 1024 * 1024,
        )

    async def _after_reconnect(self) -> None:
        """A restarted NATS may have lost the (memory) work queue and its consumer: put them
        back and take work again."""
        if self._stopping:
            return
        try:
            await bus.ensure_all(self.js)
            try:
                await self.js.consumer_info(bus.REQUESTS_STREAM, bus.ROUTER_DURABLE)
                return
            except Exception:
                pass
            if self._work_sub is not None:
                try:
                    await self._work_sub.unsubscribe()
                except Exception:
                    pass
            await self._subscribe_work()
            log.warning("work queue consumer re-created after reconnect")
        except Exception as exc:
            log.error("could not restore the work queue after reconnect: %s", exc)

    async def shutdown(self) -> None:
        """Stop taking work, let in-flight requests finish within the grace period."""
        self._stopping = True
        if self._work_sub is not None:
            try:
                await self._work_sub.unsubscribe()
            except Exception:
                pass
        pending = [task for task, _ in self._inflight.values()]
        if pending:
            log.info("waiting up to %.0fs for %d requests", self.grace, len(pending))
            _, still = await asyncio.wait(pending, timeout=self.grace)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=2)
        for task in self._tasks:
            task.cancel()
        if self.facts:
            await self.facts.aclose()
        if self.http:
            await self.http.close()
        if self.nc and not self.nc.is_closed:
            await self.nc.drain()

    # -- NATS callbacks ----------------------------------------------------------------------
    async def _on_ping(self, msg: Msg) -> None:
        await msg.respond(self.router_id.encode())

    async def _on_models(self, msg: Msg) -> None:
        await msg.respond(render_models(msg.data.decode() or "openai-chat",
                                        self.table.active()))

    async def _on_cancel(self, msg: Msg) -> None:
        entry = self._inflight.get(msg.subject[len(CANCEL_PREFIX) + 1:])
        if entry is not None:
            entry[0].cancel()

    async def _on_request(self, msg: Msg) -> None:
        try:
            raw = (msg.headers or {}).get(ENV_HEADER)
            env = _env_decoder.decode(raw) if raw else None
        except (msgspec.DecodeError, msgspec.ValidationError):
            env = None
        await msg.ack()
        if env is None:
            log.error("dropping malformed request message on %s", msg.subject)
            return
        if env.deadline and time.time() > env.deadline:
            return  # the edge stopped waiting (and answered 503); nobody to reply to
        task = asyncio.create_task(self._handle(env, msg.data))
        rid = env.request_id
        self._inflight[rid] = (task, env.reply)

        def forget(_task: asyncio.Task[None]) -> None:
            self._inflight.pop(rid, None)

        task.add_done_callback(forget)

    def _accept_late(self, reply: str) -> None:
        assert self.nc is not None
        self._spawn(self.nc.publish(reply, _A))

    async def _heartbeat(self) -> None:
        """Tell every waiting edge that its request is still being worked on."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            assert self.nc is not None
            for _, reply in list(self._inflight.values()):
                try:
                    await self.nc.publish(reply, _A)
                except Exception:
                    break

    # -- one request -------------------------------------------------------------------------
    async def _handle(self, env: RequestEnvelope, body: bytes) -> None:
        assert self.nc is not None
        # Any reply tells the edge its request was taken; an explicit "accepted" is only sent
        # when the answer takes a while to start (saves a message on every fast request).
        accept = asyncio.get_running_loop().call_later(
            ACCEPT_AFTER_S, self._accept_late, env.reply)
        t0 = time.perf_counter()
        attempts: list[_Attempt] = []
        final: _Attempt | None = None
        status = 0
        error_class: str | None = None
        error_message: str | None = None
        ttfb_ms: float | None = None
        try:
            if env.body_ref:
                obs = await self.js.object_store(bus.BODIES_BUCKET)
                body = (await obs.get(env.body_ref)).data or b""
                await obs.delete(env.body_ref)
            routing = self.settings.routing
            try:
                candidates = plan(self._providers(env.dialect), dialect=env.dialect,
                                  model=env.model, pinned=env.pin_provider,
                                  can_translate=translator.can_translate, rr=self.rr,
                                  strategy=routing.strategy, load=self.load,
                                  active=self.settings.active.for_dialect(env.dialect),
                                  blocked=self._blocked)
            except NoProviderError as exc:
                status, error_class, error_message = exc.status, "no_provider", exc.message
                await self._reply_error(env, exc.status, exc.message, "no_provider")
                return
            candidates = self._skip_cooling(candidates)
            for number, cand in enumerate(candidates, 1):
                has_next = number < len(candidates)
                if has_next and not await self._admit(cand):
                    continue  # circuit open (or another router is probing it): next one
                att = _Attempt(cand, number, time.time())
                attempts.append(att)
                name = cand.provider.name
                self.load[name] = self.load.get(name, 0) + 1
                try:
                    await self._attempt(env, body, att, has_next, routing.failover_statuses)
                finally:
                    self.load[name] -= 1
                self._judge(att)
                if att.committed or att.outcome != "fallback":
                    final = att
                    break
            if final is None:
                final = attempts[-1]
                final.outcome = "failed"
                await self._relay_failure(env, final)
            elif not final.committed:
                await self._relay_failure(env, final)
            status = final.status if final.committed or final.status else 502
            if not final.committed and not final.status:
                status = 504 if final.error_class == "timeout" else 502
            error_class = final.error_class
            error_message = final.error_message
            ttfb_ms = final.ttfb_ms
        except asyncio.CancelledError:
            status, error_class, error_message = 499, "client_disconnected", "client went away"
            if attempts:
                last = attempts[-1]
                last.outcome = "cancelled"
                last.error_class = last.error_class or "client_disconnected"
                final = last
        except Exception as exc:
            log.exception("router failure on %s", env.request_id)
            status, error_class, error_message = 500, "internal", type(exc).__name__
            try:
                await self._reply_error(env, 500, "gateway error while routing the request",
                                        "internal")
            except Exception:
                pass
        finally:
            accept.cancel()
            self.handled += 1
            self._record(env, attempts, final, status, error_class, error_message, ttfb_ms,
                         (time.perf_counter() - t0) * 1000)

    # -- providers, breakers -----------------------------------------------------------------
    def _providers(self, dialect: str) -> list[ProviderConfig]:
        """The configured providers, plus the unified upstream (a NEW-API/one-api gateway that
        speaks every dialect) ahead of them when it is on."""
        providers = self.table.active()
        unified = self.settings.unified
        if unified.enabled:
            base = unified.url.rstrip("/")
            if dialect.startswith("openai") and not base.endswith("/v1"):
                base += "/v1"
            providers = [ProviderConfig(
                name="unified", dialect=dialect, base_url=base,  # type: ignore[arg-type]
                api_key=unified.token, priority=-(10**9), source="unified",
            ), *[p for p in providers if p.name != "unified"]]
        return providers

    def _blocked(self, provider: ProviderConfig, model: str) -> bool:
        now = time.time()
        policy = self.settings.routing.breaker
        for key in (breaker_key(provider.name), breaker_key(provider.name, model)):
            st = self.circuits.get(key)
            if st is not None and st.state != "closed" and not allow(st, now, policy)[0]:
                return True
        return False

    async def _admit(self, cand: Candidate) -> bool:
        """Check both breakers; an expired open breaker lets exactly one router probe."""
        now = time.time()
        policy = self.settings.routing.breaker
        for key, model in ((breaker_key(cand.provider.name), None),
                           (breaker_key(cand.provider.name, cand.upstream_model),
                            cand.upstream_model)):
            st = self.circuits.get(key)
            if st is None or st.state == "closed":
                continue
            ok, probe = allow(st, now, policy)
            if not ok:
                return False
            if probe is not None:
                def start_probe(cur: BreakerState | None) -> BreakerState | None:
                    return allow(cur, now, policy)[1]

                won = await self.circuits.swap(key, start_probe,
                                               self._transition_cb(cand.provider.name, model))
                if not won:
                    return False
        return True

    def _judge(self, att: _Attempt) -> None:
        """Feed the attempt's result to the breakers. Failures in the closed state are
        counted locally (no KV traffic, nothing on the request path); only a transition —
        closed -> open here, or the result of a half-open probe — is written to KV, in the
        background, where every router sees it."""
        if att.outcome == "cancelled":
            return
        ok = att.outcome == "ok" and att.error_class is None
        p, model = att.candidate.provider.name, att.candidate.upstream_model
        transport = att.error_class in TRANSPORT_ERRORS
        counted = att.status in self.settings.routing.failover_statuses \
            or att.error_class == "stream_error"
        now = time.time()
        policy = self.settings.routing.breaker
        reason = att.error_class
        targets: list[tuple[str, str | None]] = []
        if ok or transport:
            targets.append((breaker_key(p), None))
        if ok or (counted and not transport):
            targets.append((breaker_key(p, model), model))
        for key, m in targets:
            shared = self.circuits.get(key)
            if shared is None or shared.state == "closed":
                if not ok:
                    self._count_failure(key, p, m, now, reason)
                    self._spawn(self._announce_failure(key, p, m, now, reason))
            elif record(shared, ok, now, policy, reason) is not None:
                self._spawn(self.circuits.swap(
                    key, lambda cur: record(cur, ok, now, policy, reason),
                    self._transition_cb(p, m)))

    def _count_failure(self, key: str, provider: str, model: str | None, ts: float,
                       reason: str | None) -> None:
        """One failure seen by any router (ours directly, others' via cs.breaker.fail.>)."""
        policy = self.settings.routing.breaker
        local = record(self._local_breakers.get(key), False, ts, policy, reason)
        if local is None:
            return
        if local.state == "closed":
            self._local_breakers[key] = local
            return
        self._local_breakers.pop(key, None)
        shared = self.circuits.get(key)
        if shared is not None and shared.state != "closed":
            return

        def to_open(cur: BreakerState | None, opened: BreakerState = local) \
                -> BreakerState | None:
            return opened if cur is None or cur.state == "closed" else None

        self._spawn(self.circuits.swap(key, to_open, self._transition_cb(provider, model)))

    async def _announce_failure(self, key: str, provider: str, model: str | None, ts: float,
                                reason: str | None) -> None:
        assert self.nc is not None
        note = _enc.encode({"key": key, "provider": provider, "model": model, "ts": ts,
                            "reason": reason, "router": self.router_id})
        try:
            await self.nc.publish(f"{BREAKER_FAIL_PREFIX}.{key}", note)
        except Exception:
            pass

    async def _on_failure_note(self, msg: Msg) -> None:
        try:
            note = _note_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if note.router == self.router_id:
            return  # counted when it happened
        self._count_failure(note.key, note.provider, note.model, note.ts, note.reason)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def _transition_cb(self, provider: str, model: str | None) -> Any:
        def on_change(old: BreakerState | None, new: BreakerState) -> None:
            before = old.state if old else "closed"
            if new.state == before or self.facts is None:
                return
            self.facts.emit(circuit_subject(provider, new.state), CircuitChanged(
                id=new_id(), ts=time.time(), provider=provider, model=model,
                state=new.state, previous=before,
                failures=len(old.failures) + 1 if old and new.state == "open" and
                before == "closed" else 0,
                reason=new.reason, router=self.router_id))
        return on_change

    def _skip_cooling(self, candidates: list[Candidate]) -> list[Candidate]:
        """Providers cooling down after a 429 Retry-After go last, not away."""
        warm = [c for c in candidates if not self.table.cooling(c.provider.name)]
        if len(warm) == len(candidates) or not warm:
            return candidates
        return warm + [c for c in candidates if c not in warm]

    async def _attempt(self, env: RequestEnvelope, body: bytes, att: _Attempt,
                       has_next: bool, failover: list[int]) -> None:
        assert self.http is not None and self.nc is not None
        cand = att.candidate
        p = cand.provider
        started = time.perf_counter()
        same = not cand.translated
        stream = env.stream and env.operation == "generate"
        try:
            if env.operation == "count_tokens" and not same:
                await self._estimate_tokens(env, body, att)
                return
            if same:
                up_body = body if p.dialect == "gemini" else rewrite_model(
                    body, cand.upstream_model, env.model)
                if stream and p.dialect == "openai-chat":
                    with_usage = request_usage(up_body)
                    if with_usage is not None:
                        up_body, att.usage_filter = with_usage, UsageChunkFilter()
            else:
                prepared = translator.prepare(env.dialect, p.dialect, body,
                                              model=cand.upstream_model, stream=stream)
                up_body, att.context = prepared.body, prepared.context
            url = upstream_url(
                p, operation=env.operation, model=cand.upstream_model, stream=stream,
                query=env.query if same and p.dialect == "anthropic" else "",
                sse=not (same and p.dialect == "gemini" and not wants_sse(env.query)))
            headers = upstream_headers(p, env.headers, same_dialect=same)
            t = p.timeouts
            # sock_read is the idle timeout between two reads of a stream; a non-streaming
            # answer may take up to first_byte to arrive.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect,
                                            sock_read=t.idle if stream else t.first_byte)
            async with asyncio.timeout(t.total):
                with map_errors("connect"):
                    async with asyncio.timeout(t.first_byte):
                        resp = await self.http.request("POST", url, data=up_body,
                                                       headers=headers, timeout=timeout)
                try:
                    if resp.status >= 400:
                        with map_errors("error body"):
                            err_body = await resp.read()
                        raise UpstreamFailure(
                            f"http_{resp.status}", _error_text(err_body),
                            resp.status, err_body, _keep_headers(resp.headers))
                    if stream:
                        await self._stream(env, resp, cand, att, started, has_next)
                    else:
                        await self._whole(env, resp, cand, att, started)
                finally:
                    # After a complete body the connection goes back to the pool; otherwise
                    # (cancelled, cut, failed) it is closed, so the upstream sees us leave.
                    if resp.content.at_eof():
                        resp.release()
                    else:
                        resp.close()
        except UpstreamFailure as exc:
            att.error_class, att.error_message = exc.error_class, exc.message
            if not att.committed:
                att.status = exc.status
            att.body, att.headers = exc.body, exc.headers
            if exc.status == 429:
                self.table.cool_down(p.name, _retry_after(exc.headers))
            if att.committed:
                att.outcome = "failed"
                await self._end_stream_with_error(env, att, exc)
            elif exc.status == 0 or exc.error_class == "stream_error" \
                    or should_fail_over(exc.status, has_next=has_next, statuses=failover):
                att.outcome = "fallback" if has_next else "failed"
            else:
                att.outcome = "failed"
        except TimeoutError:
            att.error_class, att.error_message = "timeout", "upstream timed out"
            if att.committed:
                att.outcome = "failed"
                await self._end_stream_with_error(
                    env, att, UpstreamFailure("timeout", "upstream timed out", 504))
            else:
                att.outcome = "fallback" if has_next else "failed"
        except TranslationError as exc:
            status, message = getattr(exc, "status", 400), getattr(exc, "message", str(exc))
            att.status, att.error_class, att.error_message = status, "translation", message
            att.body = error_body(env.dialect, status, message)
            att.headers = {"x-codeswitch-translated": "1"}
            att.outcome = "failed"
        finally:
            att.duration_ms = (time.perf_counter() - started) * 1000

    async def _whole(self, env: RequestEnvelope, resp: aiohttp.ClientResponse,
                     cand: Candidate, att: _Attempt, started: float) -> None:
        with map_errors("body"):
            data = await resp.read()
        att.ttfb_ms = (time.perf_counter() - started) * 1000
        att.status = resp.status
        p = cand.provider
        tracker = UsageTracker(p.dialect, False)
        tracker.feed(data)
        tracker.finish()
        att.usage, att.finish_reason = tracker.usage, tracker.finish_reason
        status = resp.status
        if cand.translated:
            try:
                data = translator.translate_response(p.dialect, env.dialect, data,
                                                     model=env.model, request_id=env.request_id,
                                                     context=att.context)
            except TranslationError as exc:  # an answer the client's dialect cannot express
                status, att.error_class, att.error_message = exc.status, "translation", \
                    exc.message
                data = error_body(env.dialect, exc.status, exc.message)
        start = ReplyStart(status=status,
                           content_type=resp.headers.get("content-type", "application/json"),
                           provider=p.name, upstream_model=cand.upstream_model,
                           headers=_keep_headers(resp.headers))
        await self._send_full(env, start, data)
        att.committed = True
        att.outcome = "ok"
        att.bytes_out = len(data)

    async def _stream(self, env: RequestEnvelope, resp: aiohttp.ClientResponse,
                      cand: Candidate, att: _Attempt, started: float, has_next: bool) -> None:
        assert self.nc is not None
        nc = self.nc
        p = cand.provider
        tracker = UsageTracker(p.dialect, True)
        conv = att.conv = (
            translator.StreamTranslator(p.dialect, env.dialect, model=env.model,
                                        request_id=env.request_id, context=att.context)
            if cand.translated else None)
        framer = (ArrayFramer() if conv is not None and env.dialect == "gemini"
                  and not wants_sse(env.query) else None)
        held: list[bytes] = []
        held_size = 0
        reply = env.reply
        if framer is not None:
            ctype = "application/json; charset=utf-8"
        elif conv is not None:
            ctype = "text/event-stream; charset=utf-8"
        else:
            ctype = resp.headers.get("content-type", "text/event-stream")
        start = _enc.encode(ReplyStart(status=200, content_type=ctype, provider=p.name,
                                       upstream_model=cand.upstream_model,
                                       headers=_keep_headers(resp.headers)))
        with map_errors("stream"):
            async for chunk in resp.content.iter_any():
                if att.ttfb_ms is None:
                    att.ttfb_ms = (time.perf_counter() - started) * 1000
                tracker.feed(chunk)
                if conv is not None:
                    out = conv.feed(chunk)
                    if framer is not None:
                        out = framer.feed(out)
                elif att.usage_filter is not None:
                    out = att.usage_filter.feed(chunk)
                else:
                    out = chunk
                if not att.committed:
                    if tracker.error is not None and not tracker.saw_content:
                        raise UpstreamFailure("stream_error", f"{tracker.error[0]}: "
                                              f"{tracker.error[1]}"[:300], 200)
                    if out:
                        held.append(out)
                        held_size += len(out)
                    if tracker.saw_content or held_size > _HOLD_LIMIT:
                        # start and the held bytes in one message: start JSON, \n, data
                        data = b"".join(held)
                        await nc.publish(reply, _S + start + b"\n" + data)
                        att.committed, att.status = True, 200
                        att.bytes_out += len(data)
                        held = []
                elif out:
                    att.bytes_out += len(out)
                    await nc.publish(reply, _D + out)
        tracker.finish()
        att.usage, att.finish_reason = tracker.usage, tracker.finish_reason
        if conv is not None:
            tail = conv.close()
            if framer is not None:
                tail = framer.feed(tail) + framer.close()
        elif att.usage_filter is not None:
            tail = att.usage_filter.flush()
        else:
            tail = b""
        if not att.committed:
            if tracker.error is not None:
                raise UpstreamFailure("stream_error",
                                      f"{tracker.error[0]}: {tracker.error[1]}"[:300], 200)
            held.append(tail)
            data = b"".join(held)
            await nc.publish(reply, _S + start + b"\n" + data)
            att.committed = True
            att.bytes_out += len(data)
            tail = b""
        if tail:
            att.bytes_out += len(tail)
            await nc.publish(reply, _D + tail)
        await nc.publish(reply, _E)
        att.status = 200
        if tracker.error is not None:
            att.outcome, att.error_class = "failed", "stream_error"
            att.error_message = f"{tracker.error[0]}: {tracker.error[1]}"[:300]
        else:
            att.outcome = "ok"

    async def _end_stream_with_error(self, env: RequestEnvelope, att: _Attempt,
                                     exc: UpstreamFailure) -> None:
        """After content reached the client: close the stream with an in-stream error."""
        assert self.nc is not None
        status = exc.status if exc.status >= 400 else 502
        message = f"upstream {att.candidate.provider.name} failed mid-stream: {exc.message}"
        payload = (att.conv.fail(status, message) if att.conv is not None
                   else stream_error(env.dialect, status, message))
        try:
            await self.nc.publish(env.reply, _D + payload)
            await self.nc.publish(env.reply, _E)
        except Exception:
            pass

    async def _estimate_tokens(self, env: RequestEnvelope, body: bytes, att: _Attempt) -> None:
        tokens = translator.count_tokens_estimate(env.dialect, body)
        doc: dict[str, Any] = ({"totalTokens": tokens} if env.dialect == "gemini"
                               else {"input_tokens": tokens})
        await self._send_full(env, ReplyStart(status=200, provider=att.candidate.provider.name,
                                              headers={"x-codeswitch-estimate": "true"}),
                              _enc.encode(doc))
        att.status, att.outcome, att.committed = 200, "ok", True

    async def _relay_failure(self, env: RequestEnvelope, att: _Attempt) -> None:
        """Nothing was sent yet: send the final attempt's error in the client's dialect."""
        p = att.candidate.provider
        if att.status >= 400:
            status, data = att.status, att.body
            same = p.dialect == env.dialect
            if not same and att.error_class != "translation":
                status, data = translator.translate_error(p.dialect, env.dialect, status, data)
            elif not data.strip():
                data = error_body(env.dialect, status, att.error_message or "upstream error")
            headers = {k: v for k, v in att.headers.items() if k == "retry-after"}
        else:
            status = 504 if att.error_class in ("timeout", "connect_timeout") else 502
            if att.error_class == "stream_error":
                status = 502
            data = error_body(env.dialect, status,
                              f"upstream {p.name} failed: {att.error_message}",
                              code=att.error_class)
            headers = {}
        await self._send_full(env, ReplyStart(status=status, provider=p.name,
                                              upstream_model=att.candidate.upstream_model,
                                              headers=headers), data)

    async def _reply_error(self, env: RequestEnvelope, status: int, message: str,
                           code: str) -> None:
        await self._send_full(env, ReplyStart(status=status),
                              error_body(env.dialect, status, message, code=code,
                                         request_id=env.request_id))

    async def _send_full(self, env: RequestEnvelope, start: ReplyStart, data: bytes) -> None:
        assert self.nc is not None
        head = _enc.encode(start)
        if len(data) + len(head) + 64 < self.nc.max_payload:
            await self.nc.publish(env.reply, _F + head + b"\n" + data)
            return
        step = self.nc.max_payload - 1024
        await self.nc.publish(env.reply, _S + head + b"\n")
        for i in range(0, len(data), step):
            await self.nc.publish(env.reply, _D + data[i:i + step])
        await self.nc.publish(env.reply, _E)

    # -- facts -------------------------------------------------------------------------------
    def _record(self, env: RequestEnvelope, attempts: list[_Attempt], final: _Attempt | None,
                status: int, error_class: str | None, error_message: str | None,
                ttfb_ms: float | None, duration_ms: float) -> None:
        facts = self.facts
        if facts is None:
            return
        now = time.time()
        for att in attempts:
            c = att.candidate
            facts.emit(attempt_subject(env.dialect, c.provider.name), AttemptFinished(
                id=new_id(), ts=now, request_id=env.request_id, attempt=att.number,
                dialect=env.dialect, provider=c.provider.name,
                provider_dialect=c.provider.dialect, model=env.model,
                upstream_model=c.upstream_model, stream=env.stream, outcome=att.outcome,
                status=att.status, error_class=att.error_class,
                error_message=att.error_message, started_at=att.started_at,
                ttfb_ms=att.ttfb_ms, duration_ms=att.duration_ms, usage=att.usage,
                translated=c.translated,
            ))
        served = final.candidate if final is not None and final.committed else None
        facts.emit(response_subject(env.dialect, served.provider.name if served else None),
                   RequestCompleted(
            id=new_id(), ts=now, request_id=env.request_id, dialect=env.dialect,
            operation=env.operation, model=env.model,
            provider=served.provider.name if served else
            (final.candidate.provider.name if final else None),
            provider_dialect=(final.candidate.provider.dialect if final else None),
            upstream_model=final.candidate.upstream_model if final else None,
            stream=env.stream, status=status,
            error_class=error_class if status >= 400 or error_class else None,
            error_message=error_message if status >= 400 or error_class else None,
            received_at=env.received_at,
            ttfb_ms=ttfb_ms,
            duration_ms=duration_ms, usage=final.usage if final else None,
            attempts=len(attempts), translated=bool(final and final.candidate.translated),
            finish_reason=final.finish_reason if final else None, user=env.user,
            session=env.session, client=env.client, edge=env.edge, router=self.router_id,
            bytes_in=env.body_size, bytes_out=final.bytes_out if final else 0,
        ))


def _keep_headers(headers: Any) -> dict[str, str]:
    keep = {}
    for name in ("retry-after", "request-id", "x-request-id"):
        value = headers.get(name)
        if value:
            keep["retry-after" if name == "retry-after" else "x-upstream-request-id"] = value
    return keep


def _retry_after(headers: dict[str, str]) -> float:
    try:
        return max(0.0, float(headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


def _error_text(body: bytes) -> str:
    text = body[:300].decode("utf-8", "replace").replace("\n", " ")
    return text or "(empty body)"


async def run(nats_url: str, home: Any = None, stop: asyncio.Event | None = None,
              **kwargs: Any) -> None:
    """Run one router until ``stop`` is set."""
    router = Router(nats_url, **kwargs)
    await router.startup()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await router.shutdown()
