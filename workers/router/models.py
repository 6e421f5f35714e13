"""GET /v1/models and /v1beta/models: the models the configured providers serve, in the
shape of the asking client's dialect. Exact names from ``models`` and ``model_map``, plus what
each provider lists itself (``model_catalog``) where requesting that name routes back to it
unchanged (so a ``claude-*`` provider shows its Claude models, and a renamed one does not
show the upstream names)."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from schemas.config import ProviderConfig
from workers.router.plan import split_pinned_model

__all__ = ["model_names", "render_models"]

_enc = msgspec.json.Encoder()
_GLOB = set("*?[")


def model_names(providers: list[ProviderConfig],
                discovered: dict[str, list[str]] | None = None) -> list[tuple[str, str]]:
    """(model, provider) pairs, each model once, owned by the first provider in priority
    order."""
    seen: dict[str, str] = {}
    names = {p.name for p in providers}
    for p in sorted(providers, key=lambda p: (p.priority, p.name)):
        if not p.enabled:
            continue
        for name in [*p.models, *p.model_map]:
            if not (_GLOB & set(name)):
                seen.setdefault(name, p.name)
        for name in (discovered or {}).get(p.name, []):
            if split_pinned_model(name, names)[0] is not None:
                continue  # "anthropic/x" from OpenRouter's list: asking for it pins a provider

            if p.serves(name) and p.upstream_model(name) == name:
                seen.setdefault(name, p.name)
    return sorted(seen.items())


def render_models(dialect: str, providers: list[ProviderConfig],
                  discovered: dict[str, list[str]] | None = None) -> bytes:
    names = model_names(providers, discovered)
    created = int(time.time())
    doc: dict[str, Any]
    if dialect == "anthropic":
        data = [{"type": "model", "id": n, "display_name": n,
                 "created_at": "2025-01-01T00:00:00Z"} for n, _ in names]
        doc = {"data": data, "has_more": False,
               "first_id": data[0]["id"] if data else None,
               "last_id": data[-1]["id"] if data else None}
    elif dialect == "gemini":
        doc = {"models": [{
            "name": f"models/{n}", "displayName": n, "version": "001",
            "supportedGenerationMethods": ["generateContent", "streamGenerateContent",
                                           "countTokens"],
        } for n, _ in names]}
    else:
        doc = {"object": "list", "data": [
            {"id": n, "object": "model", "created": created, "owned_by": owner}
            for n, owner in names]}
    return _enc.encode(doc)
