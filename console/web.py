"""The console's small web layer: endpoints declared once (method, path, who may call it, the
msgspec types of the query and body) so the router, the validation and the OpenAPI document
all come from the same declarations. No framework: the edge is raw ASGI and this keeps the
console to what it needs (see docs/console.md for why not Starlette/FastAPI)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgspec

if TYPE_CHECKING:
    from console.app import Call

__all__ = ["ENDPOINTS", "Endpoint", "HttpError", "Response", "endpoint", "openapi", "resolve"]

Access = Literal["public", "user", "admin"]
PREFIX = "/admin/api"


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str = "",
                 field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field  # the input field at fault, for a form to mark
        self.code = code or {400: "bad_request", 401: "unauthenticated", 403: "forbidden",
                             404: "not_found", 409: "conflict"}.get(status, "error")


@dataclass
class Response:
    body: Any = None
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Endpoint:
    method: str
    path: str  # /admin/api/users/{id}/disable
    handler: Callable[[Call], Awaitable[Any]]
    access: Access
    summary: str
    query: type | None = None
    body: type | None = None
    result: Any = None  # a type for the OpenAPI document (None: an object)
    pattern: re.Pattern[str] = field(init=False)
    params: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.params = re.findall(r"{(\w+)}", self.path)
        self.pattern = re.compile("^" + re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", self.path) + "$")


ENDPOINTS: list[Endpoint] = []


def endpoint(method: str, path: str, *, access: Access = "admin", query: type | None = None,
             body: type | None = None, result: Any = None
             ) -> Callable[[Callable[[Call], Awaitable[Any]]], Callable[[Call], Awaitable[Any]]]:
    def register(fn: Callable[[Call], Awaitable[Any]]) -> Callable[[Call], Awaitable[Any]]:
        summary = (fn.__doc__ or fn.__name__).strip().split("\n\n")[0].replace("\n", " ")
        ENDPOINTS.append(Endpoint(method, PREFIX + path, fn, access, summary, query, body,
                                  result))
        return fn
    return register


def resolve(method: str, path: str) -> tuple[Endpoint | None, dict[str, str], bool]:
    """The endpoint, its path parameters, and whether the path exists under another method."""
    other = False
    for ep in ENDPOINTS:
        m = ep.pattern.match(path)
        if m is None:
            continue
        if ep.method == method:
            return ep, m.groupdict(), True
        other = True
    return None, {}, other


def _ref(name: str) -> str:
    return f"#/components/schemas/{name}"


def openapi(version: str) -> dict[str, Any]:
    """OpenAPI 3.1 for every endpoint, from the declarations above and msgspec's JSON Schema of
    their query, body and result types."""
    types = {t for ep in ENDPOINTS for t in (ep.body, ep.result) if isinstance(t, type)}
    ordered = sorted(types, key=lambda t: t.__name__)
    _, components = msgspec.json.schema_components(ordered, ref_template=_ref("{name}"))
    paths: dict[str, dict[str, Any]] = {}
    for ep in ENDPOINTS:
        op: dict[str, Any] = {
            "summary": ep.summary, "operationId": ep.handler.__name__,
            "tags": [ep.path.split("/")[3]],
            "responses": {"200": {"description": "OK", "content": {"application/json": {
                "schema": {"$ref": _ref(ep.result.__name__)} if isinstance(ep.result, type)
                else {"type": "object"}}}},
                "400": {"description": "invalid input: {error, code, field} (field: the "
                        "input at fault, when known)"},
                "401": {"description": "not signed in"},
                "403": {"description": "not allowed (role, CSRF token, Origin)"}},
        }
        if ep.access != "public":
            op["security"] = [{"cookie": [], "csrf": []}, {"bearer": []}]
            op["x-access"] = ep.access
        params: list[dict[str, Any]] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in ep.params]
        if ep.query is not None:
            for f in msgspec.structs.fields(ep.query):
                params.append({"name": f.encode_name, "in": "query",
                               "required": f.required,
                               "schema": msgspec.json.schema(f.type)})
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": _ref(ep.body.__name__)}}}}
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "codeswitch admin API", "version": version,
                 "description": "The JSON API the console uses. Sign in with POST "
                 "/admin/api/signin (a cookie; writes then need the X-CSRF-Token from "
                 "/admin/api/me), or send an admin's API key as `Authorization: Bearer`."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "cookie": {"type": "apiKey", "in": "cookie", "name": "cs_console"},
            "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"},
            "bearer": {"type": "http", "scheme": "bearer"}}},
    }
