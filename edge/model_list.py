"""``GET /v1/models`` (and Gemini's ``/v1beta/models``) for a key with a model allow-list: the
routers' list, in the client's dialect, cut to the models the key may request. Pure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["allowed_models"]

_enc = msgspec.json.Encoder()


def _name(entry: Any) -> str:
    if not isinstance(entry, dict):
        return ""
    name = entry.get("id") or entry.get("name") or ""
    if not isinstance(name, str):
        return ""
    return name[len("models/"):] if name.startswith("models/") else name


def allowed_models(body: bytes, allow: Callable[[str], object]) -> bytes:
    """The list in ``body`` (Anthropic/OpenAI ``data``, Gemini ``models``) with only the
    models ``allow`` matches. A body of another shape is returned unchanged."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body
    if not isinstance(doc, dict):
        return body
    field = "models" if isinstance(doc.get("models"), list) else "data"
    entries = doc.get(field)
    if not isinstance(entries, list):
        return body
    kept = [e for e in entries if allow(_name(e))]
    doc[field] = kept
    if "first_id" in doc:  # Anthropic's paging fields follow the list
        doc["first_id"] = _name(kept[0]) if kept else None
        doc["last_id"] = _name(kept[-1]) if kept else None
    return _enc.encode(doc)
