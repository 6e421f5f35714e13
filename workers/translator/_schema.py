"""JSON Schema -> the OpenAPI-3.0 subset Gemini's ``parameters`` accepts.

Gemini answers 400 "Invalid JSON payload received. Unknown name ..." for keys outside its
subset ($schema, additionalProperties, const, propertyNames...) and "Proto field is not
repeating" for type arrays. Every level is cleaned (no depth cut-off):
    $ref -> the $defs/definitions target inlined (a cycle becomes {"type": "object"})
    type: [T, "null"] -> type T + nullable; several non-null types -> anyOf
    const -> enum [const]; enum kept on strings only, values as strings
    oneOf -> anyOf; anyOf [X, {type: null}] -> X + nullable; allOf -> merged
    format kept only for strings with enum / date-time
    required filtered to existing properties; empty properties removed
    any other key dropped
"""

from __future__ import annotations

from typing import Any

__all__ = ["gemini_schema"]

_KEEP = {"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
         "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
         "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
         "maximum"}


def gemini_schema(schema: Any) -> dict[str, Any]:
    if not isinstance(schema, dict):
        return {"type": "object"}
    defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    return _clean(schema, defs, ())


def _resolve(ref: str, defs: dict[str, Any]) -> Any:
    name = ref.rsplit("/", 1)[-1]
    return defs.get(name)


def _clean(s: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(s, dict):
        return {}
    if "$ref" in s:
        ref = str(s["$ref"])
        target = _resolve(ref, defs)
        if target is None or ref in seen:
            return {"type": "object"}
        merged = {**target, **{k: v for k, v in s.items() if k != "$ref"}}
        return _clean(merged, defs, (*seen, ref))
    s = dict(s)
    if "allOf" in s:
        for sub in s.pop("allOf") or []:
            if isinstance(sub, dict):
                sub = _clean(sub, defs, seen)
                props = {**(s.get("properties") or {}), **(sub.get("properties") or {})}
                req = list(dict.fromkeys([*(s.get("required") or []),
                                          *(sub.get("required") or [])]))
                s = {**sub, **s}
                if props:
                    s["properties"] = props
                if req:
                    s["required"] = req
    if "oneOf" in s and "anyOf" not in s:
        s["anyOf"] = s.pop("oneOf")
    out: dict[str, Any] = {}
    typ = s.get("type")
    if isinstance(typ, list):
        non_null = [t for t in typ if t != "null"]
        if len(non_null) < len(typ):
            out["nullable"] = True
        if len(non_null) == 1:
            typ = non_null[0]
        elif non_null:
            out["anyOf"] = [_clean({**s, "type": t}, defs, seen) for t in non_null]
            typ = None
        else:
            typ = "string"
    if "const" in s and "enum" not in s:
        s["enum"] = [s["const"]]
        typ = typ or "string"
    if typ is not None:
        out["type"] = typ
    for key, value in s.items():
        if key not in _KEEP or key == "type" or key in out:
            continue
        if key == "properties" and isinstance(value, dict):
            props = {k: _clean(v, defs, seen) for k, v in value.items()}
            if props:
                out["properties"] = props
        elif key == "items":
            if isinstance(value, list):  # tuple form: Gemini takes one schema
                value = value[0] if value else {}
            out["items"] = _clean(value, defs, seen)
        elif key == "anyOf" and isinstance(value, list):
            subs = [v for v in value if isinstance(v, dict)]
            nulls = [v for v in subs if v.get("type") == "null"]
            rest = [_clean(v, defs, seen) for v in subs if v.get("type") != "null"]
            if nulls:
                out["nullable"] = True
            if len(rest) == 1:
                for k, v in rest[0].items():
                    out.setdefault(k, v)
            elif rest:
                out["anyOf"] = rest
        elif key == "enum" and isinstance(value, list):
            if out.get("type", "string") == "string":
                out["type"] = "string"
                out["enum"] = [str(v) for v in value if v is not None]
        elif key == "format":
            if out.get("type") == "string" and value in ("enum", "date-time"):
                out["format"] = value
        else:
            out[key] = value
    if "required" in out:
        names = set((out.get("properties") or {}).keys())
        req = [r for r in out["required"] if r in names]
        if req:
            out["required"] = req
        else:
            del out["required"]
    return out
