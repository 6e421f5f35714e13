"""The edge: a thin ASGI app. It authenticates, reads the body, puts ONE request message on
JetStream (``llm.request.<dialect>``) and relays what the router streams back on its reply
subject. It never calls an upstream and parses only model, stream flag and identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from edge.auth import Directory, authenticate, for_client
from edge.bodylog import BodyCapture
from edge.errors import EdgeError, render
from edge.identity import identify, peek_body
from edge.metrics import EdgeMetrics
from edge.model_list import allowed_models
from edge.quota import SpendView
from edge.ratelimit_bus import RateLimits
from edge.relay import DISCONNECTED, PICKUP_TIMEOUT, ROUTER_LOST, Dispatcher
from edge.routes import Route, match_route
from edge.server import ClientGone, body_timeout, drain_body, read_body
from runtime import bus, names
from runtime.facts import FactPublisher
from runtime.health import parts_file, parts_health, supervised_home
from runtime.presence import Heartbeat, device_name
from runtime.prices import LivePrices
from schemas.config import GatewaySettings
from schemas.envelope import (
    ENV_HEADER,
    KIND_ACCEPTED,
    KIND_DATA,
    KIND_END,
    KIND_FULL,
    KIND_START,
    SEQ_BYTES,
    ReplyStart,
    RequestEnvelope,
)
from schemas.errors import GatewayError, stream_error
from schemas.events import RequestCompleted, new_id
from schemas.prices import PRICES_KV_KEY
from schemas.routes import ROUTES_KEY, SECRET_HEADERS, RouteTable
from schemas.subjects import (
    ROUTER_MODELS,
    ROUTER_PING,
    cancel_subject,
    request_subject,
    response_subject,
)

__all__ = ["EdgeApp"]

log = logging.getLogger("codeswitch.edge")
# how long a request is sent again while the work queue does not acknowledge it (a NATS
# restart, a cluster's leader election), from its arrival
RESEND_S = 12.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Client headers passed to an upstream of the same dialect (the rest stays here).
PASS_HEADERS = ("anthropic-version", "anthropic-beta", "openai-beta")
_env_encoder = msgspec.json.Encoder()
_start_decoder = msgspec.json.Decoder(ReplyStart)
_settings_decoder = msgspec.json.Decoder(GatewaySettings)
_routes_decoder = msgspec.json.Decoder(RouteTable)
# Where the body goes to the object store instead of inline (headroom for headers).
_HEADROOM = 64 * 1024


class _Stop(Exception):
    pass


# Errors for a request that a router took and may have started upstream: a status no SDK or
# CLI retries on its own (they retry 408, 409, 429 and every 5xx), so a lost answer never
# becomes a second, billed call without the user deciding so.
MAYBE_EXECUTED = 424
# ... except for the clients that retry a 424 too. Codex (checked with 0.171) retries every
# status but 400, 401 and 429 itself (its turn loop reconnects up to 5 times and does not read
# x-should-retry): a lost request would run again. 400 is the one of those it neither retries
# nor hides the body of (it shows the body as the error). By client family (edge.identity).
_MAYBE_EXECUTED_FOR = {"codex": 400}


def _names(principal: Any, directory: Directory) -> dict[str, str]:
    """The gateway user's name and the key as USER/NAME, for route rules (none without
    users)."""
    if principal.user_id is None:
        return {}
    user = directory.users.get(principal.user_id)
    out = {"user_name": user.name} if user is not None else {}
    key = directory.keys.get(principal.key_id) if principal.key_id else None
    if key is not None:
        out["key_name"] = f"{user.name if user else principal.user_id}/{key.name}"
    return out


def maybe_executed_status(client: str | None) -> int:
    """The status for a request that may have run upstream: one ``client`` never retries."""
    return _MAYBE_EXECUTED_FOR.get(client or "", MAYBE_EXECUTED)


# the console (console/app.py) serves these paths; a GET/HEAD of one may also match the
# models or root routes (a session id "models"), never an LLM route (its POST paths end in
# fixed words: tests/console/test_api.py checks every one)
CONSOLE_PATHS = ("/console", "/admin/api")
CONSOLE_MODULE = "console.app"

# edge-side outcomes where the upstream's answer did not reach the client
_UNDELIVERED = frozenset({"router_lost", "reply_gap", "gateway_stopping"})


class EdgeApp:
    """ASGI application. ``startup``/``shutdown`` are driven by the lifespan protocol."""

    def __init__(self, nats_url: str, *, edge_id: str | None = None,
                 settings: GatewaySettings | None = None, ensure_streams: bool = True,
                 home: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.nats_url = nats_url
        self.clock = clock  # a request's arrival time (its budget period); tests inject one
        # write-ahead facts (runtime.facts) in <home>/outbox when run by `codeswitch up`
        self.outbox = Path(home) / "outbox" if home is not None else None
        self.home = Path(home) if home is not None else None
        self._console: Any = None  # the console (console.app), loaded on its first request
        self._parts_home = supervised_home()  # set by `codeswitch up` for its parts
        # under `codeswitch up`: ready once the supervisor has applied the streams and the
        # config (it writes parts.json then; the parts start while it does that)
        self._supervisor_ready = self._parts_home is None
        self.edge_id = edge_id
        self.settings = settings or GatewaySettings()
        self._fixed_settings = settings is not None
        self.ensure_streams = ensure_streams
        self.metrics = EdgeMetrics()
        self.nc: NATS | None = None
        self.dispatcher: Dispatcher | None = None
        self.facts: FactPublisher | None = None
        self._watch_task: asyncio.Task[None] | None = None
        # users and keys (KV cs_users, cs_keys), watched: empty = no users, today's behaviour
        self.directory = Directory()
        self.spend = SpendView()  # KV cs_quota: spend per user and key (edge/quota.py)
        self._directory_tasks: list[asyncio.Task[None]] = []
        # RPM/TPM/concurrency of users and keys, counted across edges (edge/ratelimit*.py)
        self.ratelimits = RateLimits(self.directory)
        # budgets: each fact of a user's request counted at once, before the quota worker's
        # record (edge/quota.py, "early counts"), priced as the worker prices it
        self.prices = LivePrices(self.home)
        self.ratelimits.on_done = lambda done, now: self.spend.observe(
            done, self.directory, self.prices.book)
        self._background: set[asyncio.Future[None]] = set()  # body-log writes
        self.heartbeat: Heartbeat | None = None  # cs_presence: this gateway is alive
        self.draining = False
        # the request headers route rules match on (cs_settings "routes"): forwarded to the
        # routers in the envelope, the rest stays here
        self.route_headers: tuple[str, ...] = ()
        self.stopping = False  # the server is shutting down (edge.main): long streams end

    # -- lifespan ---------------------------------------------------------------------------
    async def startup(self) -> None:
        self.nc = await bus.connect(self.nats_url, name=f"edge-{self.edge_id or ''}")
        await bus.wait_ready(self.nc)
        if self.ensure_streams:
            await bus.ensure_all(self.nc.jetstream())
        self.js = self.nc.jetstream()
        self.dispatcher = Dispatcher(self.nc, self.edge_id)
        self.edge_id = self.dispatcher.edge_id
        await self.dispatcher.start()
        await self.ratelimits.start(self.nc, self.edge_id)
        self.facts = FactPublisher(self.nc, wal=self.outbox, name="edge")
        self.facts.start()
        self.heartbeat = Heartbeat(self.nc, "edge", f"edge-{self.edge_id}").start()
        # the settings (gateway keys!), the users and the keys are in place before the first
        # request is served (an edge that served before it knew the users exist would let any
        # key through); the three are read at the same time
        js = self.js
        await self.prices.load(js)
        loads: list[asyncio.Event] = []

        async def follow(bucket: str, apply: Callable[[str, bytes | None, int], None]
                         ) -> asyncio.Task[None]:
            loaded = asyncio.Event()
            loads.append(loaded)
            kv = await js.key_value(bucket)
            return asyncio.create_task(bus.follow_bucket(kv, apply, loaded))

        watched: list[tuple[str, Callable[[str, bytes | None, int], None]]] = [
                   (names.SETTINGS_BUCKET, self._apply_settings),
                   (names.USERS_BUCKET, self.directory.apply_user),
                   (names.KEYS_BUCKET, self.directory.apply_key),
                   (names.QUOTA_BUCKET, self.spend.apply)]
        tasks = await asyncio.gather(*(follow(b, a) for b, a in watched))
        self._watch_task = tasks[0]
        tasks = tasks[1:]
        self._directory_tasks.extend(tasks)
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in loads)), 10)

    async def shutdown(self) -> None:
        if self._console is not None:
            await self._console.aclose()
        if self.heartbeat is not None:
            await self.heartbeat.aclose()
        if self._watch_task:
            self._watch_task.cancel()
        for task in self._directory_tasks:
            task.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        if self.dispatcher:
            self.dispatcher.stop()
        await self.ratelimits.stop()
        if self.facts:
            await self.facts.aclose()
        if self.nc and not self.nc.is_closed:
            await self.nc.drain()

    def _apply_settings(self, key: str, value: bytes | None, revision: int) -> None:
        if key == ROUTES_KEY:
            try:
                rules = _routes_decoder.decode(value).rules if value else []
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                log.error("ignoring invalid route rules: %s", exc)
                return
            self.route_headers = tuple(sorted(
                {n.lower() for r in rules for n in (r.match.header or {})} - SECRET_HEADERS))
            return
        if key == PRICES_KV_KEY:
            self.prices.apply_kv(value)
            return
        if key != "gateway" or self._fixed_settings:
            return
        if value is None:
            self.settings = GatewaySettings()
            return
        try:
            self.settings = _settings_decoder.decode(value)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.error("ignoring invalid gateway settings: %s", exc)
            return
        self.spend.zone = self.settings.timezone  # until a record names its zone

    # -- ASGI -------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = match_route(scope["method"], scope["path"])
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if route is None:
            if scope["path"].startswith(CONSOLE_PATHS):  # the console: not on an LLM route's way
                await self._to_console(scope, receive, send)
                return
            dialect = _guess_dialect(scope["path"], headers)
            if scope["method"] not in ("GET", "HEAD"):  # keep the connection usable
                await drain_body(receive, self.settings.max_body_bytes, body_timeout(scope))
            await _respond(send, 404, render(dialect, 404, f"no such endpoint: "
                                             f"{scope['method']} {scope['path']}"))
            return
        if route.kind == "llm":
            await self._llm(scope, receive, send, route, headers)
        elif route.kind == "health":
            await self._health(send)
        elif route.kind == "readiness":
            await self._readiness(send)
        elif route.kind == "metrics":
            await _respond(send, 200, self.metrics.render(),
                           "text/plain; version=0.0.4; charset=utf-8")
        elif scope["path"].startswith(CONSOLE_PATHS):  # GET /admin/api/sessions/models, HEAD
            await self._to_console(scope, receive, send)
        elif route.kind == "models":
            await self._models(send, route, headers,
                               scope.get("query_string", b"").decode("latin-1"))
        else:  # "/" and HEAD preconnects
            await _respond(send, 200, b'{"service":"codeswitch"}')

    async def _to_console(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The console and its admin API (console/app.py), loaded by module path on first use:
        console/ sits above the CLI's shared functions, which a part may not import
        (docs/console.md)."""
        if self._console is None:
            self._console = importlib.import_module(CONSOLE_MODULE).build(self)
        await self._console(scope, receive, send)

    async def _health(self, send: Send) -> None:
        """200 while every part is up; under `codeswitch up` a part that is down (or crash
        looping) makes it 503 and names the part (codeswitch/health.py)."""
        if self._parts_home is None:  # not under a supervisor
            await _respond(send, 200, b'{"status":"ok"}')
            return
        ok, detail = parts_health(self._parts_home)
        body = msgspec.json.encode({"status": "ok" if ok else "degraded", **detail})
        await _respond(send, 200 if ok else 503, body)

    def _started(self) -> bool:
        """Under `codeswitch up`: the supervisor has applied the streams and the config (it
        writes parts.json then)."""
        if self._parts_home is not None and not parts_file(self._parts_home).exists():
            return False
        self._supervisor_ready = True
        return True

    async def _readiness(self, send: Send) -> None:
        if not self._supervisor_ready and not self._started():
            await _respond(send, 503, b'{"status":"starting"}')
            return
        nc = self.nc
        if nc is None or not nc.is_connected:
            await _respond(send, 503, b'{"status":"nats disconnected"}')
            return
        try:
            await nc.request(ROUTER_PING, b"", timeout=1.0)
        except Exception:
            await _respond(send, 503, b'{"status":"no router alive"}')
            return
        await _respond(send, 200, b'{"status":"ready"}')

    async def _models(self, send: Send, route: Route, headers: dict[str, str],
                      query: str) -> None:
        dialect = route.dialect or (
            "anthropic" if "anthropic-version" in headers
            else "gemini" if "x-goog-api-key" in headers else "openai-chat"
        )
        try:  # the list comes from the providers' own accounts: same keys as the LLM routes
            if not self._supervisor_ready and not self._started():
                raise EdgeError(503, "the gateway is starting", "starting")
            principal = authenticate(headers, query, self.settings, self.directory)
        except GatewayError as exc:
            await _respond(send, exc.status, exc.render(dialect))
            return
        assert self.nc is not None
        try:
            reply = await self.nc.request(ROUTER_MODELS, dialect.encode(), timeout=2.0)
        except Exception:
            await _respond(send, 503, render(dialect, 503, "no router available"))
            return
        allow = principal.grant.allow if principal.grant is not None else None
        await _respond(send, 200, reply.data if allow is None else
                       allowed_models(reply.data, allow))  # the key's model allow-list

    # -- the request path -------------------------------------------------------------------
    async def _llm(self, scope: Scope, receive: Receive, send: Send, route: Route,
                   headers: dict[str, str]) -> None:
        t0 = self.clock()
        started = time.perf_counter()
        request_id = new_id()
        dialect = route.dialect
        query = scope.get("query_string", b"").decode("latin-1")
        state: dict[str, Any] = {"status": 0, "provider": None, "ttfb": None, "bytes_out": 0}
        env: RequestEnvelope | None = None
        capture = BodyCapture(send) if self.settings.body_log else None
        if capture is not None:
            send = capture
        body = b""
        body_read = False  # tried: after a refusal before it, the rest is drained
        try:
            if not self._supervisor_ready and not self._started():
                # `codeswitch up` is still applying the config: its keys and users are not
                # known yet, so nothing is let through (not even with any key)
                raise EdgeError(503, "the gateway is starting (its configuration is being "
                                "applied); try again in a moment", "starting")
            principal = authenticate(headers, query, self.settings, self.directory)
            state["user_id"], state["key_id"] = principal.user_id, principal.key_id
            self.spend.check(principal, self.directory, t0)  # budgets (edge/quota.py)
            body_read = True
            body = await read_body(receive, self.settings.max_body_bytes, body_timeout(scope))
            peek = peek_body(body)
            if dialect == "gemini":
                model, stream = route.model, bool(route.stream)
            else:
                if not peek.model:
                    raise EdgeError(400, "missing required field: model", "missing_model")
                model, stream = peek.model, bool(peek.stream)
            principal.check_model(model)  # the key's model allow-list (users only)
            # rate limits (users only): 429 with retry-after, or counted until released
            state["admission"] = await self.ratelimits.admit(principal, request_id,
                                                             len(body))
            if dialect == "openai-responses" and peek.previous_response_id:
                raise EdgeError(400, "previous_response_id is not supported: codeswitch serves "
                                "the Responses API statelessly; send the whole conversation "
                                "in `input` (as Codex CLI does)", "previous_response_not_found")
            ident = identify(headers, peek, derive=route.operation == "generate")
            if self.draining:
                raise EdgeError(503, "gateway is shutting down", "shutting_down")
            assert self.dispatcher is not None
            reply, queue, timer = self.dispatcher.register(request_id,
                                                           self.settings.pickup_timeout)
            try:
                env = RequestEnvelope(
                    request_id=request_id, reply=reply, dialect=dialect,
                    operation=route.operation, model=model, stream=stream,
                    deadline=t0 + self.settings.pickup_timeout, received_at=t0,
                    headers={h: headers[h] for h in PASS_HEADERS if h in headers},
                    query=_strip_key(query), api_version=route.api_version,
                    body_size=len(body), user=ident.user, session=ident.session,
                    client=ident.client, pin_provider=headers.get("x-codeswitch-provider"),
                    edge=self.edge_id, key_hash=principal.key_hash,
                    user_id=principal.user_id, key_id=principal.key_id,
                    client_request_id=(headers.get("x-client-request-id") or None),
                    **_names(principal, self.directory),
                    match_headers={h: headers[h] for h in self.route_headers if h in headers},
                )
                env = await self._publish(env, body, queue, state, timer)
                if state.pop("resent", False):  # the pickup wait starts at the stored copy
                    timer.cancel()
                    timer = self.dispatcher.rearm(request_id, self.settings.pickup_timeout)
                await self._relay(env, queue, timer, receive, send, state, started)
            finally:
                self.dispatcher.unregister(request_id)
        except GatewayError as exc:  # every failure the gateway means: one shape per dialect
            if "user_id" not in state:  # a known key refused (403): the fact names it
                state["user_id"] = getattr(exc, "user_id", None)
                state["key_id"] = getattr(exc, "key_id", None)
            for_client(exc, headers)  # a refused key: the status this client stops at
            if not body_read:  # refused before its body: keep the connection usable
                await drain_body(receive, self.settings.max_body_bytes, body_timeout(scope))
            await self._fail(send, state, dialect, exc, request_id)
        except (_Stop, ClientGone):
            pass
        except asyncio.CancelledError:
            # The server is stopping past its grace period (or its supervisor died): end the
            # answer in the client's dialect rather than uvicorn's plain-text 500, and say
            # whether it may have run upstream (published: yes, so not retryable).
            await self._stopped(send, state, dialect, request_id, started, env)
            raise
        except Exception as exc:  # never a bare 500 with a traceback
            log.exception("edge error on %s", request_id)
            await self._fail(send, state, dialect, GatewayError(
                f"gateway error: {type(exc).__name__}", status=500, code="internal"), request_id)
        finally:
            self.ratelimits.release(state.get("admission"))
            latency = time.perf_counter() - started
            self.metrics.observe(dialect, state["provider"], state["status"], latency,
                                 state["ttfb"])
            if capture is not None and capture.status:
                self._keep_bodies(capture.entry(
                    request_id=request_id, dialect=dialect, path=scope["path"],
                    model=env.model if env else route.model, provider=state["provider"],
                    request=body), request_id)
            if state.get("fact") and self.facts is not None:
                # The edge answered alone (no router did): it records the request itself.
                self.facts.emit(response_subject(dialect, None), RequestCompleted(
                    id=new_id(), ts=time.time(), request_id=request_id, dialect=dialect,
                    operation=route.operation, model=(env.model if env else route.model),
                    stream=bool(env and env.stream), status=state["status"],
                    error_class=state["fact"], error_message=state.get("message"),
                    received_at=t0, duration_ms=latency * 1000,
                    user=env.user if env else None, session=env.session if env else None,
                    client=env.client if env else None, edge=self.edge_id,
                    provider=state["provider"], router=state.get("router"),
                    delivered=state["fact"] not in _UNDELIVERED, source="edge",
                    bytes_out=state["bytes_out"],
                    client_request_id=env.client_request_id if env else
                    (headers.get("x-client-request-id") or None),
                    user_id=state.get("user_id"), key_id=state.get("key_id"),
                    device=device_name(),
                ))

    async def _stopped(self, send: Send, state: dict[str, Any], dialect: str, request_id: str,
                       started: float, env: RequestEnvelope | None) -> None:
        if env is not None:
            await self._cancel(request_id)
        message = "the gateway stopped before this request finished"
        try:
            if state["status"] == 0:  # nothing sent yet
                if env is None:
                    await self._fail(send, state, dialect,
                                     EdgeError(503, message, "gateway_stopping"), request_id)
                else:
                    await self._fail(send, state, dialect, EdgeError(
                        maybe_executed_status(env.client), f"{message}; its provider may "
                        "already have been working on it, so it is not retried automatically",
                        "gateway_stopping", retryable=False), request_id)
                    state["fact"] = "gateway_stopping"
            else:  # a stream under way: close it with the dialect's error event
                state["fact"], state["message"] = "gateway_stopping", message
                await send({"type": "http.response.body", "more_body": False,
                            "body": stream_error(dialect, 503, message)})
        except Exception:
            pass

    def _keep_bodies(self, entry: bytes, request_id: str) -> None:
        """Store a body-log entry in the background (the response has been sent)."""
        async def put() -> None:
            try:
                obs = await bus.body_log_store(self.js)
                await obs.put(request_id, entry)
            except Exception as exc:  # the body log never fails a request
                log.warning("body log: %s not kept: %s: %s", request_id, type(exc).__name__,
                            str(exc)[:200])

        task = asyncio.ensure_future(put())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _publish(self, env: RequestEnvelope, body: bytes, queue: asyncio.Queue[bytes],
                       state: dict[str, Any],
                       timer: asyncio.TimerHandle | None = None) -> RequestEnvelope:
        assert self.nc is not None
        if len(body) + _HEADROOM > self.nc.max_payload:
            # Too large for one message: the body goes to the object store, the message
            # carries its name. (The only case where the request path writes twice.)
            obs = await self.js.object_store(names.BODIES_BUCKET)
            await obs.put(env.request_id, body)
            env = msgspec.structs.replace(env, body_ref=env.request_id)
            body = b""
        headers = {"Nats-Msg-Id": env.request_id, ENV_HEADER: _env_encoder.encode(env).decode()}
        subject = request_subject(env.dialect)
        # No ack: NATS restarting, or on a cluster the work queue's leader being elected
        # (nats-server's Raft elects within 4-9 s of losing a leader). The same message is
        # sent again with the same Nats-Msg-Id for up to RESEND_S: the stream keeps one copy
        # (its duplicate window is the request's lifetime), and a router that took the first
        # copy has already said so on the reply subject (registered before the publish),
        # which ends the loop. Each resend carries a fresh pickup deadline, and the caller
        # re-arms its pickup timer (``state["resent"]``).
        last = env.received_at + max(RESEND_S, self.settings.pickup_timeout) - 0.5
        recreated = False
        while True:
            try:
                ack = await self.js.publish(subject, body, headers=headers,
                                            timeout=max(0.5, min(2.0, last - time.time())))
                break
            except NoRespondersError as exc:
                # no stream answered: the work queue is gone (a restarted NATS, an operator's
                # `stream rm`: recreate it, once) or has no leader yet (a cluster election)
                if not recreated:
                    recreated = True
                    with contextlib.suppress(Exception):
                        await bus.ensure_all(self.js, retry_for=0)
                    continue
                failure: Exception = exc
            except Exception as exc:
                failure = exc
            # no pickup timeout while it is not stored; the caller re-arms it
            state["resent"] = True
            if timer is not None:
                timer.cancel()
            if not queue.empty():
                return env  # a router took it: the first copy was stored
            if time.time() + 0.25 >= last:
                # a publish nats-py kept while reconnecting may still go out: the cancel
                # follows it on the same connection, so a router that takes it drops it
                with contextlib.suppress(Exception):
                    await self.nc.publish(cancel_subject(env.request_id), b"")
                raise EdgeError(503, "gateway bus unavailable, try again",
                                "bus_unavailable") from failure
            log.info("request %s: no ack from the work queue (%s); sending it again",
                     env.request_id, type(failure).__name__)
            await asyncio.sleep(0.25)
            env = msgspec.structs.replace(
                env, deadline=time.time() + self.settings.pickup_timeout)
            headers[ENV_HEADER] = _env_encoder.encode(env).decode()
        state["seq"] = ack.seq
        return env

    async def _untaken(self, state: dict[str, Any]) -> bool:
        """After the pickup timeout: remove the request from the work queue. True when it was
        still there (no router took it: nothing ran upstream)."""
        seq = state.get("seq")
        if not seq:
            return False
        try:
            return bool(await self.js.delete_msg(names.REQUESTS_STREAM, seq))
        except Exception:
            return False

    async def _relay(self, env: RequestEnvelope, queue: asyncio.Queue[bytes],
                     timer: asyncio.TimerHandle, receive: Receive, send: Send,
                     state: dict[str, Any], started: float) -> None:
        """Relay the reply stream to the HTTP client; cancel upstream work if it goes away."""
        disconnect = asyncio.ensure_future(receive())

        def _on_disconnect(task: asyncio.Future[Message]) -> None:
            if not task.cancelled():
                queue.put_nowait(DISCONNECTED)

        disconnect.add_done_callback(_on_disconnect)
        try:
            # 1. until the answer starts: heartbeats, or a marker from the edge itself
            while True:
                data = await queue.get()
                if data == DISCONNECTED:
                    await self._cancel(env.request_id)
                    state["status"] = 499
                    raise _Stop
                kind = data[0]
                if kind == KIND_ACCEPTED:
                    timer.cancel()
                    continue
                if data == PICKUP_TIMEOUT:
                    await self._cancel(env.request_id)
                    if await self._untaken(state):
                        raise EdgeError(503, "no router available to take the request (is "
                                        "`codeswitch worker router` running?)", "no_router")
                    raise _lost("router_lost", env.client)
                if data == ROUTER_LOST:
                    state["router"] = self.dispatcher.owner.get(env.request_id) \
                        if self.dispatcher else None
                    raise _lost("router_lost", env.client)
                break
            # 2. the answer
            if kind == KIND_FULL:
                head, _, body = data[1:].partition(b"\n")
                start = _start_decoder.decode(head)
                await self._send_start(send, start, env, state, len(body))
                state["ttfb"] = time.perf_counter() - started
                await send({"type": "http.response.body", "body": body, "more_body": False})
                state["bytes_out"] = len(body)
                return
            if kind != KIND_START:  # the start was lost (NATS restarting): it may have run
                await self._cancel(env.request_id)
                raise _lost("reply_gap", env.client)
            head, _, first = data[1:].partition(b"\n")
            start = _start_decoder.decode(head)
            if start.router and self.dispatcher is not None:
                self.dispatcher.owner[env.request_id] = start.router
            await self._send_start(send, start, env, state, None)
            out = 0
            expect = 1  # sequence number of the next D/E message
            if first:
                state["ttfb"] = time.perf_counter() - started
                out = len(first)
                await send({"type": "http.response.body", "body": first, "more_body": True})
            while True:
                data = await queue.get()
                if data == DISCONNECTED:
                    await self._cancel(env.request_id)
                    state["status"] = 499
                    return
                kind = data[0]
                if kind in (KIND_DATA, KIND_END):
                    seq = int.from_bytes(data[1:1 + SEQ_BYTES], "big")
                    if seq != expect:  # a reply message was lost (NATS restarted)
                        await self._cancel(env.request_id)
                        state["fact"] = "reply_gap"
                        state["message"] = "part of the answer was lost between router and edge"
                        await send({"type": "http.response.body", "more_body": True,
                                    "body": stream_error(env.dialect, 502,
                                                         "part of the answer was lost inside "
                                                         "the gateway (its message bus "
                                                         "restarted); the answer is incomplete")})
                        break
                    expect += 1
                if kind == KIND_DATA:
                    if state["ttfb"] is None:
                        state["ttfb"] = time.perf_counter() - started
                    out += len(data) - 1 - SEQ_BYTES
                    await send({"type": "http.response.body", "body": data[1 + SEQ_BYTES:],
                                "more_body": True})
                elif kind == KIND_END:
                    break
                elif data == ROUTER_LOST:
                    state["fact"], state["message"] = "router_lost", "router stopped mid-stream"
                    state["router"] = start.router
                    await send({"type": "http.response.body", "more_body": True,
                                "body": stream_error(env.dialect, 502, "the router handling "
                                                     "this request stopped responding")})
                    break
            state["bytes_out"] = out
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            timer.cancel()
            disconnect.cancel()

    async def _send_start(self, send: Send, start: ReplyStart, env: RequestEnvelope,
                          state: dict[str, Any], length: int | None) -> None:
        state["status"] = start.status
        state["provider"] = start.provider
        rid = env.request_id.encode()
        # the SDKs and CLIs show request-id (Anthropic) / x-request-id (OpenAI, Codex) in their
        # errors: make that our id, the one `codeswitch log` knows (the provider's own id is in
        # x-upstream-request-id)
        raw = [
            (b"content-type", start.content_type.encode("latin-1")),
            (b"x-codeswitch-request-id", rid), (b"x-request-id", rid), (b"request-id", rid),
        ]
        if start.provider:
            raw.append((b"x-codeswitch-provider", start.provider.encode("latin-1")))
        if start.upstream_model:
            raw.append((b"x-codeswitch-model", start.upstream_model.encode("latin-1")))
        if start.route:
            raw.append((b"x-codeswitch-route", start.route.encode("latin-1")))
        for name, value in start.headers.items():
            raw.append((name.encode("latin-1"), value.encode("latin-1")))
        if length is not None:
            raw.append((b"content-length", str(length).encode()))
        elif start.content_type.startswith("text/event-stream"):
            raw.append((b"cache-control", b"no-cache"))
            raw.append((b"x-accel-buffering", b"no"))
        await send({"type": "http.response.start", "status": start.status, "headers": raw})

    async def _cancel(self, request_id: str) -> None:
        if self.nc is not None and self.nc.is_connected:
            try:
                await self.nc.publish(cancel_subject(request_id), b"")
            except Exception:  # best effort: the router also stops when the deadline passes
                pass

    async def _fail(self, send: Send, state: dict[str, Any], dialect: str, exc: GatewayError,
                    request_id: str) -> None:
        """Answer ``exc`` in the client's dialect (its status, shape and retry headers); its
        code becomes the fact's error class."""
        state["status"] = exc.status
        state["fact"] = exc.code
        state["message"] = exc.message
        body = exc.render(dialect or "openai-chat", request_id=request_id)
        try:
            await _respond(send, exc.status, body, request_id=request_id,
                           extra=exc.http_headers() or None)
        except Exception:  # response already started: nothing more to say on this socket
            pass


_LOST_MESSAGE = ("the gateway lost this request while its provider may already have been "
                 "working on it (the codeswitch router handling it stopped). It is not retried "
                 "automatically, so that you are not billed twice: send it again if you want.")


def _lost(code: str, client: str | None = None) -> EdgeError:
    """A request a router took and lost: it may have run upstream, so 424 (400 for Codex),
    never retried."""
    return EdgeError(maybe_executed_status(client), _LOST_MESSAGE, code, retryable=False)


async def _respond(send: Send, status: int, body: bytes,
                   content_type: str = "application/json", *,
                   request_id: str | None = None,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type.encode()),
               (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    if request_id:
        rid = request_id.encode()
        headers += [(b"x-codeswitch-request-id", rid), (b"x-request-id", rid),
                    (b"request-id", rid)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _strip_key(query: str) -> str:
    if "key=" not in query:
        return query
    return "&".join(p for p in query.split("&") if not p.startswith("key="))


def _guess_dialect(path: str, headers: dict[str, str]) -> str:
    if "anthropic-version" in headers or "/messages" in path:
        return "anthropic"
    if "x-goog-api-key" in headers or "/models/" in path:
        return "gemini"
    return "openai-chat"

