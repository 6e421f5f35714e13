"""The part of a ``RequestCompleted`` fact the edges read: every edge subscribes to
``llm.response.>`` (the facts the routers and edges publish anyway; a JetStream-stored subject
reaches core subscribers too) and decodes this much of each fact of a user's request, to settle
its tokens for TPM (``edge/ratelimit_bus.py``) and to count its spend before the quota worker's
record arrives (``edge/quota.py``)."""

from __future__ import annotations

import msgspec

from schemas.events import Usage

__all__ = ["Done", "done_decoder"]


class Done(msgspec.Struct):
    request_id: str = ""
    user_id: str | None = None
    key_id: str | None = None
    usage: Usage | None = None
    ts: float = 0.0
    received_at: float = 0.0
    usage_estimated: bool = False
    provider: str | None = None
    model: str = ""
    upstream_model: str | None = None


done_decoder = msgspec.json.Decoder(Done)
