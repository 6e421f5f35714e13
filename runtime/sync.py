"""Several devices: a gateway's embedded nats-server as a leaf node of a hub (``codeswitch up
--join``), and what crosses the leaf connection. The decisions and their reasons are in
docs/architecture.md ("Several devices"); in short:

- **JetStream domains.** Every device's server has its own domain (``device_domain``), the hub
  has ``hub``: each device's streams, buckets and JetStream API stay its own (nats-server then
  refuses ``$JS.API.>``, ``$KV.>`` and ``$OBJ.>`` on the leaf connection by itself), and a
  request published on one device is stored and run there only.
- **Deny lists on the leaf connection** (``LOCAL_ONLY``, both ways): requests, replies,
  cancels, router and ledger queries, the facts' own subjects. Without them a device's work
  queue would take the other devices' requests (a stream's subject interest crosses a leaf
  connection) and their facts would be stored twice.
- **The event log: stream sources, both ways, with the origin in the subject.** The hub's
  stream ``CS_HUB`` sources every device's ``CS_EVENTS`` (only the facts' own subjects, so
  never what that device got from the others) and writes them as ``dev.<domain>.<subject>``;
  each device's ``CS_EVENTS`` sources from ``CS_HUB`` one filter per other device
  (``dev.<peer>.>``). A source resumes where it stopped (the server reads its position from
  the ``Nats-Stream-Source`` headers it stored), so after an outage each side catches up with
  nothing twice; the ledger folds by event and request id on top.
- **Shared settings: KV mirrors.** The buckets in ``SHARED_BUCKETS`` live on the hub; each
  device keeps a mirror (reads stay local, and keep working without the hub); writes go to the
  hub through the domain's API prefix (``$JS.hub.API.$KV.<bucket>.<key>``, as nats.go does for
  a mirrored bucket), see ``bus.key_value``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Final

from runtime.names import (
    BODY_LOG_BUCKET,
    BODY_LOG_MAX_BYTES,
    BODY_LOG_TTL_S,
    EVENTS_STREAM,
    KEYS_BUCKET,
    MCP_BUCKET,
    NAMES_BUCKET,
    PEER_BODIES_BUCKET,
    PROVIDERS_BUCKET,
    RULES_BUCKET,
    SETTINGS_BUCKET,
    USERS_BUCKET,
)
from schemas.subjects import FACT_SUBJECTS

__all__ = [
    "HUB_DOMAIN",
    "HUB_STREAM",
    "JOIN_ENV",
    "LOCAL_ONLY",
    "PEER_PREFIX",
    "SHARED_BUCKETS",
    "device_domain",
    "hub_api",
    "hub_leaf_lines",
    "hub_seq",
    "hub_source",
    "leaf_remote_lines",
    "local_subject",
    "peer_domain",
    "peer_source",
    "read_state",
    "write_state",
]

HUB_DOMAIN: Final = "hub"
HUB_STREAM: Final = "CS_HUB"  # on the hub: every device's facts, as dev.<domain>.<subject>
# on the hub: every device's body log (its object store's messages) as dev.<domain>.bodies.>
HUB_BODIES_STREAM: Final = "CS_HUB_BODIES"
BODY_LOG_STREAM: Final = f"OBJ_{BODY_LOG_BUCKET}"
PEER_BODIES_STREAM: Final = f"OBJ_{PEER_BODIES_BUCKET}"
PEER_PREFIX: Final = "dev"
JOIN_ENV: Final = "CODESWITCH_JOIN"  # the hub's leaf URL (with its password: not on argv)
STATE_FILE: Final = "sync.json"
SECRET_CHECK: Final = "codeswitch_secret_check"  # CS_HUB metadata: which secret key
# the KV buckets every joined device shares (mirrors of the hub's); the others stay local:
# circuits, affinity and alert state describe this device's routers and alerts
SHARED_BUCKETS: Final[tuple[str, ...]] = (PROVIDERS_BUCKET, SETTINGS_BUCKET, MCP_BUCKET,
                                          USERS_BUCKET, KEYS_BUCKET, NAMES_BUCKET,
                                          RULES_BUCKET)

# never across the leaf connection, either way: the work queue and its replies, the core
# request/reply subjects of routers, edges and the ledger, the facts' own subjects (they
# travel by stream sourcing, which catches up; a core copy would be stored twice), the object
# stores (nats-server already denies $JS.API.>, $KV.> and $OBJ.> between two domains)
LOCAL_ONLY: Final[tuple[str, ...]] = (
    "llm.>", "cs.>", "_INBOX.cs.>", "_INBOX.csack.>", "$O.>", f"{PEER_PREFIX}.>",
    *(s for s in FACT_SUBJECTS if not s.startswith("llm.")),
)


def device_domain(device: str) -> str:
    """The JetStream domain of a device's server: its name made a subject token (letters,
    digits, ``_``, ``-``), prefixed so that no device is the hub."""
    token = re.sub(r"[^A-Za-z0-9_-]", "_", device.strip())[:48] or "device"
    return f"d-{token}"


def hub_api(domain: str = HUB_DOMAIN) -> str:
    return f"$JS.{domain}.API"


def local_subject(subject: str) -> str:
    """A fact's own subject, whether it was recorded here or came from another device."""
    if subject.startswith(PEER_PREFIX + "."):
        parts = subject.split(".", 2)
        return parts[2] if len(parts) == 3 else subject
    return subject


def peer_domain(subject: str) -> str | None:
    """The domain of the device a fact came from, None for this device's own."""
    if subject.startswith(PEER_PREFIX + "."):
        parts = subject.split(".", 2)
        return parts[1] if len(parts) == 3 else None
    return None


def hub_seq(source_header: str | None, stream: str = HUB_STREAM) -> int | None:
    """The hub's sequence of a message this device sourced from the hub's ``stream`` (its
    ``Nats-Stream-Source`` header: ``<stream>[:<hash>] <seq> ...``)."""
    if not source_header:
        return None
    fields = source_header.split(" ")
    if len(fields) < 2 or fields[0].split(":", 1)[0] != stream:
        return None
    try:
        return int(fields[1])
    except ValueError:
        return None


def hub_source(domain: str) -> dict[str, Any]:
    """The hub stream's source for one device: its own facts only, renamed
    ``dev.<domain>.<subject>`` (JetStream API JSON)."""
    return {
        "name": EVENTS_STREAM,
        "external": {"api": hub_api(domain), "deliver": ""},
        "subject_transforms": [{"src": s, "dest": f"{PEER_PREFIX}.{domain}.{s}"}
                               for s in FACT_SUBJECTS],
    }


def peer_source(peer: str) -> dict[str, Any]:
    """A device's event log's source for one other device: its facts, from the hub."""
    return {"name": HUB_STREAM, "external": {"api": hub_api(), "deliver": ""},
            "filter_subject": f"{PEER_PREFIX}.{peer}.>"}


def hub_bodies_source(domain: str) -> dict[str, Any]:
    """The hub's body stream's source for one device: its body log (chunks and metadata)."""
    return {"name": BODY_LOG_STREAM, "external": {"api": hub_api(domain), "deliver": ""},
            "subject_transforms": [{"src": f"$O.{BODY_LOG_BUCKET}.>",
                                    "dest": f"{PEER_PREFIX}.{domain}.bodies.>"}]}


def peer_bodies_source(peer: str) -> dict[str, Any]:
    """A device's store of the others' bodies: one device's, from the hub, under the names of
    an object store (``$O.cs_body_log_peers.>``) so that it reads like one."""
    return {"name": HUB_BODIES_STREAM, "external": {"api": hub_api(), "deliver": ""},
            "subject_transforms": [{"src": f"{PEER_PREFIX}.{peer}.bodies.>",
                                    "dest": f"$O.{PEER_BODIES_BUCKET}.>"}]}


def source_domain(source: dict[str, Any]) -> str | None:
    """The device domain a source of the hub stream reads from."""
    api = ((source.get("external") or {}).get("api") or "")
    parts = api.split(".")
    if len(parts) == 3 and parts[0] == "$JS" and parts[2] == "API" and parts[1] != HUB_DOMAIN:
        return parts[1]
    return None


def _q(value: str) -> str:
    return json.dumps(value)


def leaf_remote_lines(url: str) -> list[str]:
    """nats-server config: connect to the hub as a leaf node, nothing local across."""
    deny = ", ".join(_q(s) for s in LOCAL_ONLY)
    return ["leafnodes {",
            '  reconnect: "1s"',
            "  remotes = [",
            f"    {{ url: {_q(url)}, deny_imports: [{deny}], deny_exports: [{deny}] }}",
            "  ]",
            "}"]


def hub_leaf_lines(host: str, port: int, auth: Any | None) -> list[str]:
    """nats-server config of a hub: accept leaf nodes on ``port`` (with ``auth``'s user and
    password when given)."""
    lines = ["leafnodes {", f"  host: {_q(host)}", f"  port: {port}"]
    if auth is not None:
        lines += ["  authorization {", f"    user: {_q(auth.user)}",
                  f"    password: {_q(auth.password)}", "  }"]
    return [*lines, "}"]


def read_state(home: Path) -> dict[str, Any]:
    try:
        data = json.loads((home / STATE_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_state(home: Path, state: dict[str, Any]) -> None:
    from runtime.process import write_private

    write_private(home / STATE_FILE, json.dumps(state, indent=2) + "\n")


# -- the NATS side ---------------------------------------------------------------------------

class HubError(RuntimeError):
    """The hub did not answer, or answered with an error (its text)."""


class DivergedError(HubError):
    """The hub's event history is not the one this device synced with."""


async def api(nc: Any, prefix: str, op: str, body: dict[str, Any] | None = None,
              timeout: float = 2.0) -> dict[str, Any]:
    """One JetStream API request (``prefix`` = ``$JS.API`` or ``$JS.<domain>.API``)."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    try:
        msg = await nc.request(f"{prefix}.{op}", json.dumps(body or {}).encode(),
                               timeout=timeout)
    except (NoRespondersError, NatsTimeout) as exc:
        raise HubError(f"no answer from {prefix} ({type(exc).__name__})") from None
    data: dict[str, Any] = json.loads(msg.data or b"{}")
    return data


def _not_found(reply: dict[str, Any]) -> bool:
    return (reply.get("error") or {}).get("code") == 404


def _err(reply: dict[str, Any]) -> str | None:
    e = reply.get("error")
    return None if not e else str(e.get("description") or e)


async def register(nc: Any, domain: str, synced_with: str | None = None,
                   secret_check: str | None = None) -> dict[str, Any]:
    """Make sure the hub stream exists and sources this device's facts; returns its info.
    ``synced_with``: the creation time of the hub stream this device synced with before;
    a hub whose stream is another one (or gone) raises DivergedError and is left as it is."""
    hub = hub_api()
    info = await api(nc, hub, f"STREAM.INFO.{HUB_STREAM}")
    created = info.get("created") if info.get("config") else None
    if synced_with and (_not_found(info) or (created and created != synced_with)):
        raise DivergedError(
            f"the hub's event history is not the one this device synced with (its stream "
            f"{HUB_STREAM} " + (f"was created {created}" if created else "does not exist")
            + f"; this device synced with one created {synced_with}): not syncing with it. "
            "Nothing is lost: this device keeps its own event log and serves as before. To "
            "start over with this hub, stop the gateway, remove <home>/sync.json and start it "
            "again (its facts go to the hub again; the other devices' facts come from it as "
            "they reach it)")
    if _not_found(info):
        config = {"name": HUB_STREAM, "description": "codeswitch: every device's facts",
                  "retention": "limits", "storage": "file", "discard": "old",
                  "num_replicas": 1, "sources": [hub_source(domain)]}
        info = await api(nc, hub, f"STREAM.CREATE.{HUB_STREAM}", config)
        if _err(info) and "already in use" not in (_err(info) or ""):
            raise HubError(f"creating {HUB_STREAM} on the hub: {_err(info)}")
        info = await api(nc, hub, f"STREAM.INFO.{HUB_STREAM}")
    if _err(info):
        raise HubError(f"{HUB_STREAM} on the hub: {_err(info)}")
    config = info["config"]
    sources = config.get("sources") or []
    meta = config.get("metadata") or {}
    if (domain not in {source_domain(s) for s in sources}
            or (secret_check and SECRET_CHECK not in meta)):
        if secret_check and SECRET_CHECK not in meta:
            config["metadata"] = {**meta, SECRET_CHECK: secret_check}
        if domain not in {source_domain(s) for s in sources}:
            config["sources"] = [*sources, hub_source(domain)]
        reply = await api(nc, hub, f"STREAM.UPDATE.{HUB_STREAM}", config)
        if _err(reply):
            raise HubError(f"adding this device to {HUB_STREAM}: {_err(reply)}")
        info = reply
    return info


async def ensure_hub_bucket(nc: Any, bucket: str) -> None:
    """The hub has this bucket (created like this device's) — for the presence bucket, which
    every device writes to on the hub (``runtime/presence.py``)."""
    stream = f"KV_{bucket}"
    theirs = await api(nc, hub_api(), f"STREAM.INFO.{stream}")
    if not _not_found(theirs):
        return
    mine = await api(nc, "$JS.API", f"STREAM.INFO.{stream}")
    if _err(mine):
        return
    cfg = {k: v for k, v in mine["config"].items()
           if k not in ("sources", "mirror", "created", "metadata")}
    reply = await api(nc, hub_api(), f"STREAM.CREATE.{stream}", cfg)
    if _err(reply) and "already in use" not in (_err(reply) or ""):
        raise HubError(f"bucket {bucket} on the hub: {_err(reply)}")


def secret_check_value(key: bytes) -> str:
    """Names a secret key without revealing it (an HMAC of a constant under the key): the
    devices of one hub compare theirs, since a literal provider key stored by one device is
    encrypted with its key (``runtime/secrets.py``) and only readable where the same key is."""
    import hashlib
    import hmac

    return hmac.new(key, b"codeswitch secret check", hashlib.sha256).hexdigest()[:16]


def key_mismatch(info: dict[str, Any], mine: str | None) -> str | None:
    theirs = ((info.get("config") or {}).get("metadata") or {}).get(SECRET_CHECK)
    if not mine or not theirs or theirs == mine:
        return None
    return ("this device's secret key (<home>/secret.key) is not the one the other devices of "
            "this hub use: a literal provider key added on another device cannot be decrypted "
            "here (its requests go out without it; env: keys are not affected). Copy the first "
            "device's secret.key here (or set CODESWITCH_SECRET_KEY) and restart")


def hub_devices(info: dict[str, Any]) -> list[str]:
    return sorted({d for s in (info.get("config") or {}).get("sources") or []
                   if (d := source_domain(s))})


async def register_bodies(nc: Any, domain: str) -> bool:
    """With the body log on here (its bucket exists), the hub's body stream sources it.
    Returns whether the hub has a body stream (some device's body log is on)."""
    hub = hub_api()
    mine = await api(nc, "$JS.API", f"STREAM.INFO.{BODY_LOG_STREAM}")
    info = await api(nc, hub, f"STREAM.INFO.{HUB_BODIES_STREAM}")
    if _not_found(mine):
        return not _not_found(info)
    if _not_found(info):
        config = {"name": HUB_BODIES_STREAM, "retention": "limits", "storage": "file",
                  "description": "codeswitch: every device's body log",
                  "discard": "old", "num_replicas": 1, "allow_rollup_hdrs": True,
                  "max_age": int(BODY_LOG_TTL_S * 1e9), "max_bytes": 4 * BODY_LOG_MAX_BYTES,
                  "sources": [hub_bodies_source(domain)]}
        info = await api(nc, hub, f"STREAM.CREATE.{HUB_BODIES_STREAM}", config)
        if _err(info) and "already in use" not in (_err(info) or ""):
            raise HubError(f"creating {HUB_BODIES_STREAM} on the hub: {_err(info)}")
        return True
    config = info["config"]
    sources = config.get("sources") or []
    if domain not in {source_domain(s) for s in sources}:
        config["sources"] = [*sources, hub_bodies_source(domain)]
        reply = await api(nc, hub, f"STREAM.UPDATE.{HUB_BODIES_STREAM}", config)
        if _err(reply):
            raise HubError(f"adding this device's body log on the hub: {_err(reply)}")
    return True


async def follow_peer_bodies(nc: Any, peers: list[str]) -> bool:
    """This device's store of the other devices' bodies (created on first use) sources each
    of them from the hub; returns whether it had to change."""
    local = "$JS.API"
    info = await api(nc, local, f"STREAM.INFO.{PEER_BODIES_STREAM}")
    if _not_found(info):
        config = {"name": PEER_BODIES_STREAM, "retention": "limits", "storage": "file",
                  "description": "codeswitch: the other devices' body logs",
                  "subjects": [f"$O.{PEER_BODIES_BUCKET}.C.>", f"$O.{PEER_BODIES_BUCKET}.M.>"],
                  "discard": "old", "num_replicas": 1, "allow_rollup_hdrs": True,
                  "allow_direct": True, "max_age": int(BODY_LOG_TTL_S * 1e9),
                  "max_bytes": BODY_LOG_MAX_BYTES,
                  "sources": [peer_bodies_source(p) for p in sorted(peers)]}
        reply = await api(nc, local, f"STREAM.CREATE.{PEER_BODIES_STREAM}", config)
        if _err(reply):
            raise HubError(f"the other devices' bodies: {_err(reply)}")
        return True
    config = info["config"]
    have = {t.get("src") for s in config.get("sources") or []
            for t in s.get("subject_transforms") or []}
    extra = [peer_bodies_source(p) for p in sorted(peers)
             if f"{PEER_PREFIX}.{p}.bodies.>" not in have]
    if not extra:
        return False
    config["sources"] = [*(config.get("sources") or []), *extra]
    reply = await api(nc, local, f"STREAM.UPDATE.{PEER_BODIES_STREAM}", config)
    if _err(reply):
        raise HubError(f"following the other devices' bodies: {_err(reply)}")
    return True


async def follow_peers(nc: Any, peers: list[str]) -> bool:
    """This device's event log sources each other device's facts from the hub; returns
    whether it had to change."""
    local = "$JS.API"
    info = await api(nc, local, f"STREAM.INFO.{EVENTS_STREAM}")
    if _err(info):
        raise HubError(f"{EVENTS_STREAM}: {_err(info)}")
    config = info["config"]
    have = {s.get("filter_subject") for s in config.get("sources") or []}
    want = {f"{PEER_PREFIX}.{p}.>" for p in peers}
    if want <= have:
        return False
    # add only: a device that leaves the hub keeps its history here
    extra = [peer_source(p) for p in sorted(peers) if f"{PEER_PREFIX}.{p}.>" not in have]
    config["sources"] = [*(config.get("sources") or []), *extra]
    reply = await api(nc, local, f"STREAM.UPDATE.{EVENTS_STREAM}", config)
    if _err(reply):
        raise HubError(f"following the other devices: {_err(reply)}")
    return True


async def share_buckets(nc: Any, timeout: float = 2.0) -> list[str]:
    """Turn this device's shared KV buckets into mirrors of the hub's (the first join): the
    hub's bucket is created when missing, keys only this device has are copied to it first
    (a key the hub has wins), then the local bucket is replaced by a mirror. Returns what
    changed; raises HubError when the hub does not answer (nothing changed then)."""
    from runtime.bus import read_bucket

    done: list[str] = []
    local, hub = "$JS.API", hub_api()
    for bucket in SHARED_BUCKETS:
        stream = f"KV_{bucket}"
        mine = await api(nc, local, f"STREAM.INFO.{stream}", timeout=timeout)
        if _err(mine) or (mine.get("config") or {}).get("mirror"):
            continue  # not created yet (ensure_all makes the mirror), or a mirror already
        theirs = await api(nc, hub, f"STREAM.INFO.{stream}", timeout=timeout)
        if _not_found(theirs):
            cfg = {k: v for k, v in mine["config"].items()
                   if k not in ("sources", "mirror", "created", "metadata")}
            theirs = await api(nc, hub, f"STREAM.CREATE.{stream}", cfg, timeout=timeout)
        if _err(theirs) and "already in use" not in (_err(theirs) or ""):
            raise HubError(f"bucket {bucket} on the hub: {_err(theirs)}")
        copied = 0
        kv = await nc.jetstream().key_value(bucket)
        for key, (value, _rev) in (await read_bucket(kv)).items():
            reply = await nc.request(f"{hub}.$KV.{bucket}.{key}", value, timeout=timeout,
                                     headers={"Nats-Expected-Last-Subject-Sequence": "0"})
            copied += "error" not in json.loads(reply.data or b"{}")
        cfg = mine["config"]
        mirror_cfg = {k: v for k, v in cfg.items()
                      if k not in ("subjects", "sources", "mirror", "created", "metadata",
                                   "deny_delete", "deny_purge")}
        mirror_cfg["mirror"] = {"name": stream, "external": {"api": hub, "deliver": ""}}
        mirror_cfg["mirror_direct"] = True
        deleted = await api(nc, local, f"STREAM.DELETE.{stream}", timeout=timeout)
        if _err(deleted):
            raise HubError(f"bucket {bucket}: {_err(deleted)}")
        made = await api(nc, local, f"STREAM.CREATE.{stream}", mirror_cfg, timeout=timeout)
        if _err(made):
            raise HubError(f"mirroring bucket {bucket}: {_err(made)}")
        done.append(f"{bucket}: shared through the hub ({copied} of this device's keys "
                    "copied to it)")
    return done


async def _erase_with_hub(nc: Any, stream: str, hub_stream: str, seqs: list[int]) -> int:
    """Erase ``seqs`` from ``stream`` here, first the hub's copy of each one this device
    sourced from ``hub_stream`` (its ``Nats-Stream-Source`` header names the hub's sequence)."""
    from nats.js.errors import NotFoundError

    from runtime.erase import erase_messages

    info = await api(nc, "$JS.API", f"STREAM.INFO.{stream}")
    if (info.get("config") or {}).get("sources"):
        js = nc.jetstream()
        upstream: list[int] = []
        for seq in seqs:
            try:
                msg = await js.get_msg(stream, seq=seq)
            except NotFoundError:
                continue
            found = hub_seq((msg.headers or {}).get("Nats-Stream-Source"), hub_stream)
            if found is not None:
                upstream.append(found)
        for hseq in upstream:
            try:
                await api(nc, hub_api(), f"STREAM.MSG.DELETE.{hub_stream}",
                          {"seq": hseq, "no_erase": False})
            except HubError:
                break  # the hub is away: its copies stay there (docs: known limits)
    return await erase_messages(nc, stream, seqs)


async def erase_facts(nc: Any, seqs: list[int]) -> int:
    """Erase these facts from this device's event log (``runtime.erase``); on a joined device,
    first the hub's copy of each one this device sourced from the hub. The hub's copies of this
    device's own facts are erased by the other devices, which know their hub sequences."""
    return await _erase_with_hub(nc, EVENTS_STREAM, HUB_STREAM, seqs)


async def erase_bodies(nc: Any, request_id: str) -> int:
    """Erase a request's body-log entry here: from the own body log, and from the store of the
    other devices' bodies with the hub's copy (as ``erase_facts``). Returns messages erased."""
    from nats.js.errors import BucketNotFoundError, NotFoundError

    from runtime.erase import object_seqs

    erased = 0
    for bucket, hub_stream in ((BODY_LOG_BUCKET, HUB_BODIES_STREAM),
                               (PEER_BODIES_BUCKET, HUB_BODIES_STREAM)):
        try:
            seqs = await object_seqs(nc, bucket, request_id)
        except (BucketNotFoundError, NotFoundError):
            continue  # no such store here
        if seqs:
            erased += await _erase_with_hub(nc, f"OBJ_{bucket}", hub_stream, seqs)
    return erased


async def sources_failing(nc: Any, domain: str, hub_info: dict[str, Any]) -> bool:
    """Whether a source between this device and the hub reports an error (nats-server is
    then retrying it with its backoff)."""
    mine = [s for s in hub_info.get("sources") or [] if source_domain(s) == domain]
    local = await api(nc, "$JS.API", f"STREAM.INFO.{EVENTS_STREAM}")
    theirs = [s for s in local.get("sources") or [] if s.get("name") == HUB_STREAM]
    return any(s.get("error") for s in [*mine, *theirs])


async def kick_sources(nc: Any, domain: str) -> None:
    """Start the sources between this device and the hub again, now: after the hub was away,
    nats-server retries a source with a backoff of up to two minutes (10 s more per failed
    try). Removing a source and adding it back sets it up at once, and it resumes after the
    last message it stored (the server finds it from its ``Nats-Stream-Source`` headers):
    nothing is fetched twice."""
    for prefix, stream, mine in (
            ("$JS.API", EVENTS_STREAM, lambda s: s.get("name") == HUB_STREAM),
            (hub_api(), HUB_STREAM, lambda s: source_domain(s) == domain),
            ("$JS.API", PEER_BODIES_STREAM, lambda s: s.get("name") == HUB_BODIES_STREAM),
            (hub_api(), HUB_BODIES_STREAM, lambda s: source_domain(s) == domain)):
        info = await api(nc, prefix, f"STREAM.INFO.{stream}")
        if _err(info):
            continue
        config = info["config"]
        sources = config.get("sources") or []
        if not any(mine(s) for s in sources):
            continue
        config["sources"] = [s for s in sources if not mine(s)]
        if config["sources"] or stream in (EVENTS_STREAM, PEER_BODIES_STREAM):
            await api(nc, prefix, f"STREAM.UPDATE.{stream}", config)
        else:  # a stream with no subjects needs a source: keep a harmless one meanwhile
            continue
        config["sources"] = sources
        reply = await api(nc, prefix, f"STREAM.UPDATE.{stream}", config)
        if _err(reply):
            raise HubError(f"restarting the sources of {stream}: {_err(reply)}")
