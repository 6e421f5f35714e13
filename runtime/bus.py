"""Connecting to NATS and creating the streams and KV buckets (named in ``runtime.names``),
applied idempotently by every process on start and by ``deploy/nats/init-streams.sh`` (which
runs ``codeswitch nats init``).

    CS_REQUESTS  llm.request.>   work queue of request commands, memory storage, short max age
    CS_EVENTS    facts           the event log (attempts, responses, provider/admin/user/alert)
    KV cs_providers              one key per provider (ProviderConfig JSON)
    KV cs_settings               gateway settings and other small documents
    OBJ cs_bodies                request bodies too large for one NATS message (short TTL)
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import (
    BadBucketError,
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    NoKeysError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from runtime.names import (
    BODIES_BUCKET,
    BODY_LOG_BUCKET,
    BODY_LOG_MAX_BYTES,
    BODY_LOG_TTL_S,
    EVENTS_STREAM,
    KV_BUCKETS,
    REQUESTS_STREAM,
)
from schemas.subjects import FACT_SUBJECTS, REQUEST_PREFIX

__all__ = [
    "HubUnavailableError",
    "StreamLimits",
    "explain",
    "replicas_from_env",
    "servers",
    "body_log_store",
    "connect",
    "ensure_all",
    "follow_bucket",
    "read_bucket",
    "stream_configs",
    "tls_context",
]

log = logging.getLogger("codeswitch.bus")
_background: set[asyncio.Future[None]] = set()


class HubUnavailableError(ConnectionError):
    """A write to a bucket shared through the hub while the hub does not answer."""

    def __init__(self, bucket: str) -> None:
        super().__init__(
            f"the hub does not answer: {bucket} is shared by the devices joined to it and "
            "changes only through the hub, so this change was not made. Requests are served "
            "as before with the settings this device has; try again when the hub is back "
            "(`codeswitch sync` says when)")


@dataclass(frozen=True)
class StreamLimits:
    """Retention of the event log (0 means unlimited) and the bounds of the work queue."""

    events_max_age_s: float = float(os.environ.get("CODESWITCH_EVENTS_MAX_AGE", 0) or 0)
    events_max_bytes: int = int(os.environ.get("CODESWITCH_EVENTS_MAX_BYTES", 0) or 0)
    requests_max_age_s: float = 120.0
    # requests waiting for a router, in nats-server's memory: 8 of the largest messages. Full
    # (routers gone, a flood), the oldest go (their edges answer 503 at the pickup timeout,
    # as they would anyway); reserved against the server's max_memory_store (runtime/natsd.py)
    requests_max_bytes: int = 64 * 1024 * 1024
    extra_fact_subjects: tuple[str, ...] = field(default=())
    # copies of each stream and bucket on a NATS cluster (1 on one server). Only ever raised
    # on an existing stream, never lowered (``ensure_all``)
    replicas: int = field(default_factory=lambda: replicas_from_env())


def replicas_from_env() -> int:
    """``$CODESWITCH_REPLICAS`` (1..5), else 1."""
    raw = os.environ.get("CODESWITCH_REPLICAS", "").strip()
    if not raw:
        return 1
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"CODESWITCH_REPLICAS={raw!r}: a whole number 1..5") from None
    if not 1 <= value <= 5:
        raise ValueError(f"CODESWITCH_REPLICAS={raw!r}: JetStream keeps 1 to 5 replicas")
    return value


def explain(exc: Exception) -> str:
    """What a failed stream or bucket creation means, for a person."""
    text = str(exc)
    if "no suitable peers" in text or "insufficient resources" in text:
        return (f"{text}: the NATS cluster has fewer servers with JetStream than the replicas "
                f"asked for ({replicas_from_env()}); lower --replicas / CODESWITCH_REPLICAS "
                "or add servers")
    if "replicas > 1 not supported in non-clustered mode" in text:
        return f"{text}: this NATS is one server; replicas need a cluster"
    return text


def servers(url: str) -> str | list[str]:
    """A comma-separated list of servers (as the nats tools take it) -> nats-py's list; one
    URL stays a string. ``tls://`` URLs connect with TLS (the system's CAs)."""
    parts = [u.strip() for u in url.split(",") if u.strip()]
    return parts if len(parts) > 1 else (parts[0] if parts else url)


def stream_configs(limits: StreamLimits | None = None) -> list[js_api.StreamConfig]:
    limits = limits or StreamLimits()
    return [
        js_api.StreamConfig(
            name=REQUESTS_STREAM,
            description="codeswitch request commands (work queue)",
            subjects=[f"{REQUEST_PREFIX}.>"],
            retention=js_api.RetentionPolicy.WORK_QUEUE,
            # Memory: a request lives here for about a millisecond (routers ack on pickup) and
            # is worthless after the edge's pickup timeout (5 s); file storage cost 0.4 ms of
            # latency per request (docs/architecture.md). Facts stay on file storage.
            storage=js_api.StorageType.MEMORY,
            max_age=limits.requests_max_age_s,
            max_bytes=limits.requests_max_bytes,
            duplicate_window=limits.requests_max_age_s,
            discard=js_api.DiscardPolicy.OLD,
            num_replicas=limits.replicas,
        ),
        js_api.StreamConfig(
            name=EVENTS_STREAM,
            description="codeswitch event log (facts)",
            subjects=[*FACT_SUBJECTS, *limits.extra_fact_subjects],
            retention=js_api.RetentionPolicy.LIMITS,
            storage=js_api.StorageType.FILE,
            max_age=limits.events_max_age_s or None,
            max_bytes=limits.events_max_bytes or None,
            duplicate_window=120.0,
            discard=js_api.DiscardPolicy.OLD,
            num_replicas=limits.replicas,
        ),
    ]


_AUTH_OPTIONS = ("user", "password", "token", "user_credentials", "nkeys_seed",
                 "nkeys_seed_str", "signature_cb", "user_jwt_cb")


async def _quiet_error(exc: Exception) -> None:
    """nats-py logs connection errors with tracebacks by default; the CLI reports them."""


async def connect(url: str, *, name: str,
                  on_reconnect: Callable[[], Awaitable[None]] | None = None,
                  once: bool = False, **kwargs: Any) -> NATS:
    """Connect with reconnects forever: a NATS restart under a running process is survived.
    ``on_reconnect`` runs after each reconnect (e.g. to re-create a stream or consumer that a
    restarted server no longer has).

    ``once=True`` is the CLI's connection: one attempt (2 s unless ``connect_timeout`` says
    otherwise), no reconnect loop, errors left to the caller to report.

    Credentials: the caller's (``user``/``password``/``token``/``user_credentials`` or a
    ``user:pass@`` URL), else the ones ``runtime.nats_auth_options`` finds for this URL (the
    running gateway's, ``$CODESWITCH_NATS_CREDS``, ``$CODESWITCH_NATS_AUTH``)."""
    from runtime.home import nats_auth_options

    async def _error_cb(exc: Exception) -> None:
        log.debug("nats error (%s): %s", name, exc)

    async def _disconnected_cb() -> None:
        log.info("nats disconnected (%s)", name)

    async def _reconnected_cb() -> None:
        log.warning("nats reconnected (%s)", name)
        if on_reconnect is not None:
            task = asyncio.ensure_future(on_reconnect())
            _background.add(task)
            task.add_done_callback(_background.discard)

    opts: dict[str, Any] = {
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "allow_reconnect": True,
        "connect_timeout": 5,
        "error_cb": _error_cb,
        "disconnected_cb": _disconnected_cb,
        "reconnected_cb": _reconnected_cb,
        "pending_size": 64 * 1024 * 1024,
    }
    if once:
        # max_reconnect_attempts must stay > 0: nats-py treats 0 as "no limit" when picking
        # a server, and the first connect would loop forever
        opts.update(allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=2,
                    reconnect_time_wait=0.1, error_cb=_quiet_error)
    opts.update(kwargs)
    if opts["max_reconnect_attempts"] == 0:
        # nats-py treats 0 as "no limit"; callers mean "fail fast" (the CLI).
        opts["max_reconnect_attempts"] = 1
        opts["allow_reconnect"] = False
    if not any(opts.get(k) for k in _AUTH_OPTIONS):
        opts.update(nats_auth_options(url))
    if "tls" not in opts:
        context = tls_context()
        if context is not None:
            opts["tls"] = context
    return await nats.connect(servers(url), **opts)


def tls_context() -> ssl.SSLContext | None:
    """TLS to NATS with a private CA or a client certificate, as the nats tools take them:
    ``$CODESWITCH_NATS_CA`` (CA file), ``$CODESWITCH_NATS_CERT`` and ``$CODESWITCH_NATS_KEY``
    (client certificate and key). None: nats-py's default (the system's CAs for tls:// URLs)."""
    ca, cert, key = (os.environ.get(f"CODESWITCH_NATS_{n}") or None
                     for n in ("CA", "CERT", "KEY"))
    if not (ca or cert):
        return None
    context = ssl.create_default_context(cafile=ca)
    if cert:
        context.load_cert_chain(cert, key)
    return context


async def _ensure_stream(js: JetStreamContext, config: js_api.StreamConfig) -> None:
    try:
        info = await js.stream_info(config.name)  # type: ignore[arg-type]
    except NotFoundError:
        await js.add_stream(config)
        log.info("created stream %s", config.name)
        return
    if info.config.sources and not config.sources:
        # a joined device's event log sources the other devices' facts (runtime/sync.py)
        return
    # never lower a replica count an operator (or `nats init --replicas`) raised
    config.num_replicas = max(config.num_replicas or 1, info.config.num_replicas or 1)
    try:
        await js.update_stream(config)
    except BadRequestError as exc:  # e.g. retention cannot change on an existing stream
        log.warning("stream %s kept as is: %s", config.name, exc)


async def _raise_replicas(js: JetStreamContext, stream: str, replicas: int) -> None:
    """A bucket's or object store's stream to ``replicas`` copies, if it has fewer."""
    info = await js.stream_info(stream)
    if (info.config.num_replicas or 1) >= replicas:
        return
    info.config.num_replicas = replicas
    try:
        await js.update_stream(info.config)
        log.info("stream %s now has %d replicas", stream, replicas)
    except BadRequestError as exc:
        log.warning("stream %s kept at %d replicas: %s", stream,
                    info.config.num_replicas or 1, exc)


async def ensure_all(js: JetStreamContext, limits: StreamLimits | None = None, *,
                     retry_for: float = 30.0) -> None:
    """Create or update every stream, KV bucket and object store. Idempotent; replica counts
    are raised to ``limits.replicas``, never lowered.

    On a cluster a stream may have no leader for a few seconds (a node restarting, an
    election): JetStream then answers 503 or not at all. That is retried for ``retry_for``
    seconds (a part starting beside a restarting node waits instead of crashing), and so is
    a placement refused because a peer is offline (a cluster still forming); any other refusal
    (400: a bad config, more replicas than servers) is raised at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    pause = 0.25
    while True:
        try:
            await _ensure_all_once(js, limits)
            return
        except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError,
                BadRequestError) as exc:
            if isinstance(exc, BadRequestError) and not _peer_offline(exc):
                raise  # a refusal: retrying would not change it
            if loop.time() + pause > deadline:
                raise
            log.info("JetStream not answering yet (%s: %s); retrying",
                     type(exc).__name__, exc)
            await asyncio.sleep(pause)
            pause = min(1.0, pause * 2)


def _peer_offline(exc: BadRequestError) -> bool:
    """"no suitable peers for placement, peer offline" (10005): a cluster still forming (a
    server started but not yet seen by the meta leader) or a node restarting; it passes."""
    return "peer offline" in str(getattr(exc, "description", "") or exc)


async def _ensure_all_once(js: JetStreamContext, limits: StreamLimits | None) -> None:
    limits = limits or StreamLimits()
    replicas = limits.replicas
    for config in stream_configs(limits):
        await _ensure_stream(js, config)
    for bucket, opts in KV_BUCKETS.items():
        try:
            await js.key_value(bucket)
            if replicas > 1:
                await _raise_replicas(js, f"KV_{bucket}", replicas)
        except BadBucketError:
            pass  # a mirror created by a newer server: leave it
        except BucketNotFoundError:
            await js.create_key_value(
                js_api.KeyValueConfig(
                    bucket=bucket,
                    history=opts["history"],
                    description=opts["description"],
                    storage=(js_api.StorageType.MEMORY if opts.get("storage") == "memory"
                             else js_api.StorageType.FILE),
                    ttl=opts.get("ttl"),
                    limit_marker_ttl=opts.get("marker_ttl"),
                    replicas=replicas,
                )
            )
    try:
        await js.object_store(BODIES_BUCKET)
        if replicas > 1:
            await _raise_replicas(js, f"OBJ_{BODIES_BUCKET}", replicas)
    except (BucketNotFoundError, NotFoundError):
        await js.create_object_store(
            BODIES_BUCKET,
            config=js_api.ObjectStoreConfig(
                description="oversized request bodies", ttl=600.0,
                storage=js_api.StorageType.FILE, replicas=replicas,
            ),
        )
    # cs_body_log is not created here: its 1 GiB limit is reserved against the account's
    # JetStream storage, and it only exists once someone turns the body log on


class _WriteThrough:
    """The JetStream context a mirrored bucket's ``KeyValue`` writes through: reads (get,
    watch, keys) stay on the local mirror, writes go to the bucket it mirrors on the hub
    (``$JS.<domain>.API.$KV.<bucket>.<key>``: the domain's API prefix carries them across the
    leaf connection, where a bare ``$KV.>`` is refused). What nats.go does for a mirrored
    bucket; nats-py does not."""

    def __init__(self, js: JetStreamContext, api_prefix: str) -> None:
        self._js = js
        self._api = api_prefix

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)

    async def publish(self, subject: str, *args: Any, **kwargs: Any) -> Any:
        if not subject.startswith("$KV."):
            return await self._js.publish(subject, *args, **kwargs)
        try:
            return await self._js.publish(f"{self._api}.{subject}", *args, **kwargs)
        except (NoStreamResponseError, nats.errors.TimeoutError) as exc:

            raise HubUnavailableError(subject.split(".")[1]) from exc


async def key_value(js: JetStreamContext, bucket: str) -> KeyValue:
    """``js.key_value(bucket)``, and for a bucket this device mirrors from the hub (a joined
    device's shared settings, ``runtime/sync.py``) one whose writes go to the hub."""
    from nats.js.errors import InvalidBucketNameError
    from nats.js.object_store import VALID_BUCKET_RE

    if VALID_BUCKET_RE.match(bucket) is None:  # as nats-py's own key_value
        raise InvalidBucketNameError
    stream = f"KV_{bucket}"
    try:
        si = await js.stream_info(stream)
    except NotFoundError:
        raise BucketNotFoundError from None
    if (si.config.max_msgs_per_subject or 0) < 1:
        raise BadBucketError
    target: Any = js
    mirror = si.config.mirror
    if mirror is not None and mirror.external is not None and mirror.external.api:
        target = _WriteThrough(js, mirror.external.api)
    return KeyValue(name=bucket, stream=stream, pre=f"$KV.{bucket}.", js=target,
                    direct=bool(si.config.allow_direct))


async def _patched_key_value(self: JetStreamContext, bucket: str) -> KeyValue:
    return await key_value(self, bucket)


# every js.key_value() in the project (the parts, the CLI) gets the mirrored bucket's writes right
JetStreamContext.key_value = _patched_key_value  # type: ignore[method-assign]


async def body_log_store(js: JetStreamContext,
                         max_bytes: int = BODY_LOG_MAX_BYTES) -> ObjectStore:
    """The body log's object store, created on first use: at most BODY_LOG_MAX_BYTES, entries
    expire after a week, and when it is full the oldest go (nats-py creates object stores with
    discard=new, which would refuse every new entry instead)."""
    try:
        return await js.object_store(BODY_LOG_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        pass
    await js.create_object_store(
        BODY_LOG_BUCKET,
        config=js_api.ObjectStoreConfig(
            description="request and response bodies (body_log)", ttl=BODY_LOG_TTL_S,
            max_bytes=max_bytes, storage=js_api.StorageType.FILE,
            replicas=replicas_from_env(),
        ),
    )
    config = (await js.stream_info(f"OBJ_{BODY_LOG_BUCKET}")).config
    config.discard = js_api.DiscardPolicy.OLD
    await js.update_stream(config)
    return await js.object_store(BODY_LOG_BUCKET)


async def read_bucket(kv: KeyValue) -> dict[str, tuple[bytes, int]]:
    """Every current key of a bucket: value and revision (deleted and empty keys left out)."""
    try:
        keys = await _bucket_keys(kv)
    except NoKeysError:  # nats-py's answer for an empty bucket
        return {}
    async def one(key: str) -> tuple[bytes, int] | None:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:  # deleted since keys() listed it
            return None
        return (entry.value, entry.revision or 0) if entry.value else None

    out: dict[str, tuple[bytes, int]] = {}
    # 256 gets in flight at a time: one after the other, an edge took 5.3 s to load 10,000
    # API keys (cs_keys) before it could serve
    for i in range(0, len(keys), 256):
        batch = keys[i:i + 256]
        for key, found in zip(batch, await asyncio.gather(*map(one, batch)), strict=True):
            if found is not None:
                out[key] = found
    return out


async def _bucket_keys(kv: KeyValue) -> list[str]:
    """The keys of a bucket, from its stream's per-subject counts (one request, exact). nats-py's
    ``kv.keys()`` (a watcher that ends at the first message with nothing pending) missed a
    key written just before on a loaded server; it stays the fallback."""
    pre: str = kv._pre  # "$KV.<bucket>."
    try:
        info = await kv._js.stream_info(kv._stream, subjects_filter=f"{pre}>")
    except Exception:  # an older server or API: nats-py's way
        return await kv.keys()
    return [subject[len(pre):] for subject in (info.state.subjects or {})]


async def follow_bucket(kv: KeyValue, apply: Callable[[str, bytes | None, int], None],
                        ready: asyncio.Event | None = None,
                        progress: Callable[[int], None] | None = None) -> None:
    """Keep a local copy of a KV bucket: ``apply(key, value or None when deleted, revision)``
    for every current key, then ``ready`` is set, then every change, forever (re-reading
    everything after a reconnect).

    The current values are read with ``keys()``/``get()`` rather than taken from the watch:
    nats-py's "initial values done" marker can arrive before the initial values themselves,
    and a process that believed it had no providers, settings or rules would act on that
    (answer "no provider", accept any key, resolve alerts).

    ``progress(revision)`` is told the bucket revision this copy reflects (every write and
    delete up to it), so a writer can wait until its change is in effect everywhere."""
    while True:
        try:
            watcher = await kv.watchall()  # first, so that no change falls between the two
            seen: dict[str, int] = {}
            upto = (await kv.status()).stream_info.state.last_seq  # the read below has these
            for key, (value, revision) in (await read_bucket(kv)).items():
                seen[key] = revision
                apply(key, value, revision)
            if ready is not None:
                ready.set()
            if progress is not None:  # a write between status() and the read is in it too
                progress(max(upto, *seen.values()) if seen else upto)
            async for entry in watcher:
                if entry is None or (entry.revision or 0) <= seen.get(entry.key, 0):
                    continue
                deleted = entry.operation in ("DEL", "PURGE")
                apply(entry.key, None if deleted else entry.value, entry.revision or 0)
                if progress is not None:
                    progress(entry.revision or 0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # NATS restarted: read everything again
            log.debug("following %s ended (%s); again", getattr(kv, "_name", "?"), exc)
            await asyncio.sleep(0.5)


async def wait_ready(nc: NATS, timeout: float = 10.0) -> None:
    """Wait until JetStream answers (a fresh server may take a moment)."""
    js = nc.jetstream()
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await js.account_info()
            return
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)
