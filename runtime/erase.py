"""Erasing for real: stream messages overwritten on disk, not just marked deleted.

JetStream's ``STREAM.MSG.DELETE`` erases by default (``no_erase`` false: the file store
overwrites the message with random bytes), while a purge, a KV/object-store delete or a
retention drop only forgets it: its bytes stay in the block file until the block is compacted.
What a session delete must not leave behind goes through here, one message at a time.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

__all__ = ["erase_messages", "erase_object", "object_seqs", "subject_seqs"]

log = logging.getLogger("codeswitch.erase")

# the message is not there: 10043 sequence not found (erased before, or dropped by
# retention), 10037 no message found, 10057 "stream store EOF" (past the last sequence)
_GONE = frozenset({10043, 10037, 10057})


async def erase_messages(nc: NATS, stream: str, seqs: Iterable[int]) -> int:
    """Erase these sequences from ``stream`` (overwritten on disk). Returns how many were
    there; a sequence already gone (retention, an earlier erase) is not an error."""
    erased = 0
    api = f"$JS.API.STREAM.MSG.DELETE.{stream}"
    for seq in seqs:
        # explicit no_erase false: nats-py's delete_msg leaves it to the server default
        resp = await nc.request(api, json.dumps({"seq": seq, "no_erase": False}).encode(),
                                    timeout=5.0)
        body = json.loads(resp.data or b"{}")
        if body.get("success"):
            erased += 1
        elif (body.get("error") or {}).get("err_code") not in _GONE:
            raise RuntimeError(f"erasing {stream} seq {seq}: {body.get('error')}")
    return erased


async def subject_seqs(nc: NATS, stream: str, subject: str) -> list[int]:
    """Every sequence of ``stream`` on ``subject`` (one lookup per message)."""
    js = nc.jetstream()
    seqs: list[int] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return seqs
        if msg.seq is None:
            return seqs
        seqs.append(msg.seq)
        seq = msg.seq + 1


async def erase_object(nc: NATS, bucket: str, name: str) -> int:
    """Erase an object store entry: its chunks and every version of its metadata (an object
    store delete would only purge them, leaving the bytes in the file). Returns the number of
    messages erased (0: there was no such entry)."""
    return await erase_messages(nc, f"OBJ_{bucket}", await object_seqs(nc, bucket, name))


async def object_seqs(nc: NATS, bucket: str, name: str) -> list[int]:
    """The stream sequences of an object store entry: its metadata and its chunks."""
    stream = f"OBJ_{bucket}"
    meta = f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
    js = nc.jetstream()
    seqs = await subject_seqs(nc, stream, meta)
    nuids: set[str] = set()
    for seq in seqs:
        try:
            info = json.loads((await js.get_msg(stream, seq=seq)).data or b"{}")
        except (NotFoundError, ValueError):
            continue
        if isinstance(info, dict) and info.get("nuid"):
            nuids.add(str(info["nuid"]))
    for nuid in nuids:
        seqs += await subject_seqs(nc, stream, f"$O.{bucket}.C.{nuid}")
    return sorted(seqs)
