"""The router worker: takes request messages from the CS_REQUESTS work queue (a durable push
consumer delivered to the queue group "routers", so N routers share the work), plans the
attempts, calls the upstream with aiohttp, streams the answer to the edge's reply subject, falls
back before the first content byte, and publishes attempt and response facts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.js import api as js_api

from runtime import bus, names
from runtime.facts import FactPublisher
from runtime.presence import Heartbeat, device_name
from schemas.envelope import ENV_HEADER, KIND_ACCEPTED, ReplyStart, RequestEnvelope
from schemas.errors import error_body, final_error, final_status
from schemas.events import AttemptFinished, RequestCompleted, Usage, new_id
from schemas.routes import RouteRule
from schemas.subjects import (
    BREAKER_FAIL_PREFIX,
    CANCEL_PREFIX,
    REPLY_PREFIX,
    REQUEST_PREFIX,
    ROUTER_ALIVE_PREFIX,
    ROUTER_MODELS,
    ROUTER_PING,
    ROUTER_ROLLCALL,
    attempt_subject,
    response_subject,
)
from workers import translator
from workers.router.affinities import Affinities
from workers.router.attempt import Attempt, Caller, RequestBody
from workers.router.breakers import Breakers
from workers.router.model_catalog import ModelCatalog
from workers.router.models import render_models
from workers.router.plan import (
    Candidate,
    NoProviderError,
    RoundRobin,
    plan_request,
    split_pinned_model,
)
from workers.router.providers import ProviderTable
from workers.router.reply import ACK_PREFIX, Reply
from workers.router.rules import body_features, features, match
from workers.router.shared import CircuitTable, SettingsView

__all__ = ["Router", "run"]

log = logging.getLogger("codeswitch.router")

_env_decoder = msgspec.json.Decoder(RequestEnvelope)


_A = bytes([KIND_ACCEPTED])
HEARTBEAT_S = 5.0
ACCEPT_AFTER_S = 0.2
# how often the router asks whether the edges waiting for its answers are still there
EDGE_CHECK_S = 0.5
# a request taken this close to the edge's pickup deadline is not started: the edge may
# already be answering "no router" (and the client retrying)
DEADLINE_MARGIN_S = 0.25


class Router:
    def __init__(self, nats_url: str, *, router_id: str | None = None,
                 max_in_flight: int = 4096, grace: float = 10.0,
                 home: Path | None = None) -> None:
        self.nats_url = nats_url
        # write-ahead facts (runtime.facts): what this router may have had billed is
        # recorded even if it is killed mid-request
        self.outbox = Path(home) / "outbox" if home is not None else None
        self.router_id = router_id or f"router-{os.getpid()}-{os.urandom(2).hex()}"
        self.max_in_flight = max_in_flight
        self.grace = grace
        self.table = ProviderTable()
        self.settings = SettingsView()
        self.circuits = CircuitTable()
        self.rr = RoundRobin()
        self.affinities = Affinities()  # session -> the provider that served it (cs_affinity)
        self.heartbeat: Heartbeat | None = None  # cs_presence: this gateway is alive
        self.load: dict[str, int] = {}  # requests in flight per provider (least-loaded)
        self.nc: NATS | None = None
        self.facts: FactPublisher | None = None
        self.http: aiohttp.ClientSession | None = None
        self.catalog: ModelCatalog | None = None
        self.caller: Caller | None = None
        self._inflight: dict[str, tuple[asyncio.Task[None], str]] = {}
        self._acks: dict[str, asyncio.Future[bool | None]] = {}  # request id -> the edge's word
        self._gone: dict[str, str] = {}  # request id -> why it was cancelled (edge_lost)
        self._cancelled: dict[str, float] = {}  # cancels that came before their request
        self._subs: list[Subscription] = []
        self._work_sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._bg: set[asyncio.Future[Any]] = set()
        self._stopping = False
        # bucket -> the KV revision this router's copy reflects (told in the roll call)
        self.applied: dict[str, int] = {}
        self.breakers = Breakers(self.circuits, self.settings, self.router_id)
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
        self.caller = Caller(self.http, self.table)
        self.catalog = ModelCatalog(self.http)
        self.facts = FactPublisher(nc, wal=self.outbox, name="router")
        self.breakers.nc, self.breakers.facts = nc, self.facts
        self.facts.start()
        kv = await js.key_value(names.PROVIDERS_BUCKET)
        self._tasks.append(asyncio.create_task(
            bus.follow_bucket(kv, self.table.apply, self.table.ready,
                              self._progress(names.PROVIDERS_BUCKET)), name="providers"))
        settings_kv = await js.key_value(names.SETTINGS_BUCKET)
        self._tasks.append(asyncio.create_task(
            bus.follow_bucket(settings_kv, self.settings.apply, self.settings.ready,
                              self._progress(names.SETTINGS_BUCKET))))
        await self.affinities.start(nc, await js.key_value(names.AFFINITY_BUCKET))
        self.circuits.kv = await js.key_value(names.CIRCUITS_BUCKET)
        self._tasks.append(asyncio.create_task(
            bus.follow_bucket(self.circuits.kv, self.circuits.apply, self.circuits.ready)))
        for ready, what in ((self.table.ready, "providers"), (self.settings.ready, "settings"),
                            (self.circuits.ready, "circuits")):
            try:
                await asyncio.wait_for(ready.wait(), 10)
            except TimeoutError:
                log.warning("%s not loaded after 10 s; continuing", what)
        self._subs.append(await nc.subscribe(f"{CANCEL_PREFIX}.*", cb=self._on_cancel))
        self._subs.append(await nc.subscribe(f"{BREAKER_FAIL_PREFIX}.>",
                                             cb=self.breakers.on_failure_note))
        self._subs.append(await nc.subscribe(f"{ACK_PREFIX}.{self.router_id}.*",
                                             cb=self._on_ack))
        self._subs.append(await nc.subscribe(f"{ROUTER_ALIVE_PREFIX}.{self.router_id}",
                                             cb=self._on_alive))
        await self._subscribe_work()
        # Only answer pings once this router takes work: readiness means "a request sent now
        # will be picked up", and a roll call counts routers that really share the queue.
        self._subs.append(await nc.subscribe(ROUTER_MODELS, queue="routers",
                                             cb=self._on_models))
        self._subs.append(await nc.subscribe(ROUTER_PING, queue="routers", cb=self._on_ping))
        self._subs.append(await nc.subscribe(ROUTER_ROLLCALL, cb=self._on_rollcall))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
        self.heartbeat = Heartbeat(nc, "router", self.router_id).start()
        self._tasks.append(asyncio.create_task(self._watch_edges(), name="edge-watch"))
        log.info("router %s ready (%d providers)", self.router_id, len(self.table.providers))

    def _progress(self, bucket: str) -> Callable[[int], None]:
        def seen(revision: int) -> None:
            self.applied[bucket] = max(self.applied.get(bucket, 0), revision)
        return seen

    async def _subscribe_work(self) -> None:
        self._work_sub = await self.js.subscribe(
            f"{REQUEST_PREFIX}.>", queue=names.ROUTER_DURABLE, durable=names.ROUTER_DURABLE,
            stream=names.REQUESTS_STREAM, cb=self._on_request, manual_ack=True,
            config=js_api.ConsumerConfig(
                ack_policy=js_api.AckPolicy.EXPLICIT, ack_wait=30,
                max_ack_pending=self.max_in_flight, max_deliver=1,
                deliver_subject=names.ROUTER_DELIVER,
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
                await self.js.consumer_info(names.REQUESTS_STREAM, names.ROUTER_DURABLE)
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
        await self.affinities.aclose()
        if self.heartbeat is not None:
            await self.heartbeat.aclose()
        if self.facts:
            await self.facts.aclose()
        if self.http:
            await self.http.close()
        if self.nc and not self.nc.is_closed:
            await self.nc.drain()

    # -- NATS callbacks ----------------------------------------------------------------------
    async def _on_ping(self, msg: Msg) -> None:
        if not self._stopping:  # a stopping router takes no more work: not "ready"
            await msg.respond(self.router_id.encode())

    async def _on_rollcall(self, msg: Msg) -> None:
        if not self._stopping:
            await msg.respond(msgspec.json.encode(
                {"router": self.router_id, "in_flight": len(self._inflight),
                 "applied": self.applied}))

    async def _on_models(self, msg: Msg) -> None:
        # nats-py runs one subscription's callbacks one after another: a models request that
        # waits for a provider's list must not hold the next one up past the edge's timeout
        received = time.monotonic()
        task = asyncio.create_task(self._answer_models(msg, received))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _answer_models(self, msg: Msg, received: float) -> None:
        providers = self.table.active()
        discovered: dict[str, list[str]] = {}
        if self.catalog is not None:
            budget = max(0.0, 1.5 - (time.monotonic() - received))
            discovered = await self.catalog.names(providers, timeout=budget)
        with contextlib.suppress(Exception):
            await msg.respond(render_models(msg.data.decode() or "openai-chat", providers,
                                            discovered))

    async def _on_alive(self, msg: Msg) -> None:
        await msg.respond(b"1")

    async def _on_ack(self, msg: Msg) -> None:
        fut = self._acks.pop(msg.subject.rsplit(".", 1)[-1], None)
        if fut is None or fut.done():
            return
        status = (msg.headers or {}).get("Status")
        # "no responders" (the edge is gone) comes as an empty message with Status 503
        fut.set_result(status is None and msg.data == b"1")

    async def _on_cancel(self, msg: Msg) -> None:
        rid = msg.subject[len(CANCEL_PREFIX) + 1:]
        entry = self._inflight.get(rid)
        if entry is not None:
            entry[0].cancel()
        else:  # the cancel overtook its request (NATS reconnecting): drop it when it comes
            self._cancelled[rid] = time.monotonic()
            if len(self._cancelled) > 10_000:
                cutoff = time.monotonic() - 300
                self._cancelled = {k: t for k, t in self._cancelled.items() if t > cutoff}

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
        now = time.time()
        if self._cancelled and self._cancelled.pop(env.request_id, None) is not None:
            return  # its edge already answered (and cancelled it)
        if env.deadline and now > env.deadline - DEADLINE_MARGIN_S:
            return  # the edge stopped waiting (and answered 503); nobody to reply to
        task = asyncio.create_task(self._handle(env, msg.data))
        if env.deadline and env.deadline - now < 1.0:
            self._accept_late(env.reply)  # late pickup: tell the edge now, before its timer
        rid = env.request_id
        self._inflight[rid] = (task, env.reply)

        def forget(_task: asyncio.Task[None]) -> None:
            self._inflight.pop(rid, None)

        task.add_done_callback(forget)

    def _accept_late(self, reply: str) -> None:
        assert self.nc is not None
        task = asyncio.ensure_future(self.nc.publish(reply, self._accept))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _heartbeat(self) -> None:
        """Tell every waiting edge that its request is still being worked on."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            assert self.nc is not None
            for _, reply in list(self._inflight.values()):
                try:
                    await self.nc.publish(reply, self._accept)
                except Exception:
                    break

    @property
    def _accept(self) -> bytes:
        return _A + self.router_id.encode()

    async def _watch_edges(self) -> None:
        """Cancel the upstream calls of an edge that died (its clients are cut): asked every
        EDGE_CHECK_S, one request per edge with requests here; "no responders" = gone."""
        assert self.nc is not None
        nc = self.nc
        prefix = len(REPLY_PREFIX) + 1
        while True:
            await asyncio.sleep(EDGE_CHECK_S)
            edges: dict[str, list[str]] = {}
            for rid, (_, reply) in list(self._inflight.items()):
                edge = reply[prefix:].split(".", 1)[0]
                edges.setdefault(edge, []).append(rid)
            if not edges or not nc.is_connected:
                continue

            async def check(edge: str, rids: list[str]) -> None:
                try:
                    await nc.request(f"{REPLY_PREFIX}.{edge}.ping", b"", timeout=1.0)
                except NoRespondersError:
                    for rid in rids:
                        entry = self._inflight.get(rid)
                        if entry is not None and not entry[0].done():
                            self._gone[rid] = "edge_lost"
                            entry[0].cancel()
                    log.warning("edge %s is gone: cancelled %d requests", edge, len(rids))
                except Exception:
                    pass  # slow or NATS away: not a verdict

            await asyncio.gather(*(check(e, r) for e, r in edges.items()))

    # -- one request -------------------------------------------------------------------------
    async def _handle(self, env: RequestEnvelope, body: bytes) -> None:
        assert self.nc is not None and self.caller is not None
        reply = Reply(self.nc, env.reply, router=self.router_id, rid=env.request_id,
                      acks=self._acks)
        # Any reply tells the edge its request was taken; an explicit "accepted" is only sent
        # when the answer takes a while to start (saves a message on every fast request).
        accept = asyncio.get_running_loop().call_later(
            ACCEPT_AFTER_S, self._accept_late, env.reply)
        t0 = time.perf_counter()
        attempts: list[Attempt] = []
        final: Attempt | None = None
        status = 0
        error_class: str | None = None
        error_message: str | None = None
        ttfb_ms: float | None = None
        delivered = True
        rule: RouteRule | None = None
        try:
            if env.body_ref:
                obs = await self.js.object_store(names.BODIES_BUCKET)
                body = (await obs.get(env.body_ref)).data or b""
                await obs.delete(env.body_ref)
            request = RequestBody(body)  # decoded at most once, whatever the attempts
            routing = self.settings.routing
            rule = self._route(env, request)
            reply.route = rule.name if rule is not None else None
            try:
                candidates = self._plan(env, rule)
            except NoProviderError as exc:
                status, error_class, error_message = exc.status, "no_provider", exc.message
                await self._reply_error(env, reply, exc.status, exc.message, "no_provider",
                                        final=True)
                candidates = []
            for number, cand in enumerate(candidates, 1):
                has_next = number < len(candidates)
                if has_next and not await self.breakers.admit(cand):
                    continue  # circuit open (or another router is probing it): next one
                att = Attempt(cand, number, time.time())
                attempts.append(att)
                name = cand.provider.name
                self.load[name] = self.load.get(name, 0) + 1
                # if this router dies now, the call is still recorded
                self._intend(env, att, reply.route)
                reply.before_final = partial(self._intend, env, att, reply.route, True)
                try:
                    await self.caller.run(env, request, att, reply, has_next,
                                          routing.failover_statuses)
                finally:
                    reply.before_final = None
                    self.load[name] -= 1
                self.breakers.judge(att)
                if att.committed or att.outcome != "fallback":
                    final = att
                    break
                self._attempt_fact(env, att)
            if final is not None and final.committed and final.status < 400 \
                    and final.candidate.rule is None:  # a rule's pick teaches affinity nothing
                await self._stick(env, final.candidate.provider.name)
            if final is None and attempts:
                final = attempts[-1]
                final.outcome = "failed"
                await self._relay_failure(env, final, reply, attempts)
            elif final is not None and not final.committed:
                await self._relay_failure(env, final, reply, attempts)
            if final is not None:
                status = final.status if final.committed or final.status else 502
                if not final.committed and not final.status:
                    status = 504 if final.error_class == "timeout" else 502
                error_class = final.error_class
                error_message = final.error_message
                ttfb_ms = final.ttfb_ms
        except asyncio.CancelledError:
            why = self._gone.pop(env.request_id, "client_disconnected")
            status, error_class, delivered = 499, why, False
            error_message = ("the edge serving the client stopped" if why == "edge_lost"
                             else "client went away")
            if attempts:
                last = attempts[-1]
                last.outcome = "cancelled"
                last.error_class = last.error_class or why
                if last.usage is None and last.tracker is not None:
                    last.usage = last.tracker.usage  # what was used until the cut
                final = last
        except Exception as exc:
            log.exception("router failure on %s", env.request_id)
            status, error_class, error_message = 500, "internal", type(exc).__name__
            try:
                await self._reply_error(env, reply, 500, "gateway error while routing the request",
                                        "internal")
            except Exception:
                pass
        finally:
            accept.cancel()
            self.handled += 1
            if final is not None and final.outcome != "fallback":
                self._attempt_fact(env, final)
        if reply.finished:  # the answer (or error) went out: did the edge take it?
            word = await reply.delivered()
            if word is False:
                delivered, status = False, 499
                error_class = error_class or "not_delivered"
                error_message = error_message or "the answer did not reach the client"
        self._record(env, attempts, final, status, error_class, error_message, ttfb_ms,
                     (time.perf_counter() - t0) * 1000, delivered,
                     rule.name if rule is not None else None)

    # -- planning ----------------------------------------------------------------------------
    def _route(self, env: RequestEnvelope, request: RequestBody) -> RouteRule | None:
        """The first route rule the request matches (``rules.match``), None when there are no
        rules, none matches or a provider is pinned (a pin beats every rule). Body features
        only when a rule reads the body, from the one decode of it the attempts share."""
        rules = self.settings.routes
        if not rules or env.pin_provider:
            return None
        if "/" in env.model and split_pinned_model(env.model, self.table.providers)[0]:
            return None
        f = features(model=env.model, dialect=env.dialect, client=env.client,
                     user=env.user_name or env.user, key=env.key_name,
                     headers=env.match_headers)
        if rules.needs_body:
            try:
                doc = request.doc()
            except Exception:  # not a JSON object: the attempt says so to the client
                doc = None
            if doc is not None:
                body_features(f, doc, env.body_size)
        return match(rules, f)

    def _plan(self, env: RequestEnvelope, rule: RouteRule | None = None) -> list[Candidate]:
        """The candidates in order: this router's state (watched KV copies, cool-downs, load,
        session affinities) and the clocks, handed to the pure planner
        (``plan.plan_request``)."""
        settings = self.settings
        routing = settings.routing
        sticky = (self.affinities.sticky(env.session, env.model, routing.affinity_ttl_s)
                  if routing.affinity and env.session else None)
        return plan_request(
            self.table.active(), dialect=env.dialect, model=env.model,
            pinned=env.pin_provider, can_translate=translator.can_translate,
            routing=routing, active=settings.active, unified=settings.unified,
            circuits=self.circuits.get, cool_downs=self.table.cool_downs, now=time.time(),
            monotonic=time.monotonic(), rr=self.rr, load=self.load, sticky=sticky, rule=rule)

    async def _stick(self, env: RequestEnvelope, provider: str) -> None:
        """Session affinity: this session's next request for this model goes to ``provider``
        while it is healthy (a pinned request or a token count teaches nothing)."""
        routing = self.settings.routing
        if (routing.affinity and env.session and not env.pin_provider
                and env.operation == "generate"):
            await self.affinities.served(env.session, env.model, provider,
                                         routing.affinity_ttl_s)

    async def _relay_failure(self, env: RequestEnvelope, att: Attempt, reply: Reply,
                             attempts: list[Attempt] | None = None) -> None:
        """Nothing was sent yet: send the final attempt's error in the client's dialect. It is
        final (``schemas.errors.final_error``): when the providers failed (nothing answered,
        a timeout, a failover status) the gateway says which it tried and that retrying is
        pointless now; the request's own error (a 400, a rejected key) is relayed as the
        provider sent it, told not to be retried."""
        p = att.candidate.provider
        tried = attempts or [att]
        if att.status == 0 or att.status in self.settings.routing.failover_statuses \
                or att.error_class == "stream_error":
            status = att.status if att.status >= 400 else (
                504 if att.error_class in ("timeout", "connect_timeout") else 502)
            status, data, headers = final_error(
                env.dialect, status, _all_failed(env.model, tried), client=env.client,
                code=att.error_class, request_id=env.request_id)
            if "retry-after" in att.headers:
                headers["retry-after"] = att.headers["retry-after"]
        else:
            status, data = att.status, att.body
            if att.body_dialect != env.dialect and p.dialect != env.dialect:
                status, data = translator.translate_error(p.dialect, env.dialect, status, data)
            elif not data.strip():
                data = error_body(env.dialect, status, att.error_message or "upstream error")
            headers = {k: v for k, v in att.headers.items() if k == "retry-after"}
            headers["x-should-retry"] = "false"
            status = final_status(status, env.client)
        await reply.full(ReplyStart(status=status, provider=p.name,
                                    upstream_model=att.candidate.upstream_model,
                                    headers=headers), data)

    async def _reply_error(self, env: RequestEnvelope, reply: Reply, status: int, message: str,
                           code: str, *, final: bool = False) -> None:
        if final:  # no provider for the request: the client must not retry it
            status, data, headers = final_error(env.dialect, status, message,
                                                client=env.client, code=code,
                                                request_id=env.request_id)
            await reply.full(ReplyStart(status=status, headers=headers), data)
            return
        await reply.full(ReplyStart(status=status),
                         error_body(env.dialect, status, message, code=code,
                                    request_id=env.request_id))

    # -- facts -------------------------------------------------------------------------------
    def _intend(self, env: RequestEnvelope, att: Attempt, route: str | None = None,
                served: bool = False) -> None:
        """The fact to publish if this router dies before the request's own fact (written to
        the outbox, published only then; the real fact resolves it). Before the upstream call
        (``served`` false): the call may be billed and nobody else would record it; usage is
        an estimate, the prompt at ~4 bytes per token, nothing generated. Just before the
        answer's final message (``served``, ``Reply.before_final``): what was served, with its
        real usage, so a router killed between the answer's last bytes and its fact leaves the
        row the client's experience deserves, not a "router_lost" estimate."""
        facts = self.facts
        if facts is None or facts.wal is None or env.operation != "generate":
            return  # token counts are not billed
        c = att.candidate
        status = 502
        error_class: str | None = "router_lost"
        error_message: str | None = "the router stopped during the upstream call"
        usage: Usage | None = Usage(input_tokens=env.body_size // 4)
        estimated = True
        if served:
            status = att.status or 200
            error_class = att.error_class
            if error_class is None and att.tracker is not None and att.tracker.error:
                error_class = "stream_error"
            error_message = att.error_message if error_class else None
            if att.usage is not None:
                usage, estimated = att.usage, False
        facts.intent(env.request_id, [(
            response_subject(env.dialect, c.provider.name), RequestCompleted(
                id=new_id(), ts=time.time(), request_id=env.request_id, dialect=env.dialect,
                operation=env.operation, model=env.model, provider=c.provider.name,
                provider_dialect=c.provider.dialect, upstream_model=c.upstream_model,
                stream=env.stream, status=status, error_class=error_class,
                error_message=error_message, received_at=env.received_at,
                ttfb_ms=att.ttfb_ms if served else None, usage=usage,
                usage_estimated=estimated, attempts=att.number, translated=c.translated,
                finish_reason=att.finish_reason if served else None,
                user=env.user, session=env.session, client=env.client, edge=env.edge,
                router=self.router_id, bytes_in=env.body_size,
                bytes_out=att.bytes_out if served else 0, delivered=served,
                source="recovered", client_request_id=env.client_request_id,
                user_id=env.user_id, key_id=env.key_id, device=device_name(), route=route,
            ))])

    def _attempt_fact(self, env: RequestEnvelope, att: Attempt) -> None:
        facts = self.facts
        if facts is None:
            return
        c = att.candidate
        facts.emit(attempt_subject(env.dialect, c.provider.name), AttemptFinished(
            id=new_id(), ts=time.time(), request_id=env.request_id, attempt=att.number,
            dialect=env.dialect, provider=c.provider.name,
            provider_dialect=c.provider.dialect, model=env.model,
            upstream_model=c.upstream_model, stream=env.stream, outcome=att.outcome,
            status=att.status, error_class=att.error_class,
            error_message=att.error_message, started_at=att.started_at,
            ttfb_ms=att.ttfb_ms, duration_ms=att.duration_ms, usage=att.usage,
            translated=c.translated, route=c.rule,
        ))

    def _record(self, env: RequestEnvelope, attempts: list[Attempt], final: Attempt | None,
                status: int, error_class: str | None, error_message: str | None,
                ttfb_ms: float | None, duration_ms: float, delivered: bool = True,
                route: str | None = None) -> None:
        facts = self.facts
        if facts is None:
            return
        served = final.candidate if final is not None and final.committed else None
        facts.emit(response_subject(env.dialect, served.provider.name if served else None),
                   RequestCompleted(
            id=new_id(), ts=time.time(), request_id=env.request_id, dialect=env.dialect,
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
            delivered=delivered, client_request_id=env.client_request_id,
            user_id=env.user_id, key_id=env.key_id, device=device_name(), route=route,
        ), resolves=env.request_id)

def _upstream_words(text: str) -> str:
    """The provider's own message out of its error body (any dialect's shape), one line."""
    try:
        doc = msgspec.json.decode(text)
    except msgspec.DecodeError:
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        text = err["message"]
    elif isinstance(doc, dict) and isinstance(doc.get("message"), str):
        text = doc["message"]
    return " ".join(text.split())


def _all_failed(model: str, attempts: list[Attempt]) -> str:
    """"every provider failed for model 'x' (tried a: 503 ..., b: ...)": the client's message
    once the router has tried every candidate."""
    parts = []
    for a in attempts:
        what = _upstream_words(a.error_message or a.error_class or "failed")
        if len(what) > 120:
            what = what[:117] + "..."
        parts.append(f"{a.candidate.provider.name}: "
                     + (f"{a.status} {what}" if a.status else what))
    who = "every provider" if len(attempts) > 1 else f"provider {parts[0].split(':')[0]}"
    return (f"{who} failed for model {model!r} (tried {'; '.join(parts)}). The gateway "
            "already tried " + ("each of them" if len(attempts) > 1 else "it")
            + ", so this is not retried automatically: see `codeswitch provider status`, "
            "check a provider with `codeswitch provider test NAME`, or try again later")


async def run(nats_url: str, home: Any = None, stop: asyncio.Event | None = None,
              **kwargs: Any) -> None:
    """Run one router until ``stop`` is set."""
    router = Router(nats_url, home=home, **kwargs)
    await router.startup()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await router.shutdown()
