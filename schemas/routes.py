"""Route rules (``[[routes]]`` in the config, ``codeswitch route add``): send a request to the
providers that fit it. Kept in KV ``cs_settings`` under the key ``routes`` (one ordered list: the
first matching rule wins), watched by every router and edge.

A rule: ``name``, ``match`` (keys combined with AND; a key left out matches anything), ``to``
(providers tried in order), optionally ``model`` (the upstream model to ask them for) and
``fallback`` (after the rule's providers failed: normal routing; default true).

``check_rules`` is the one validation (structure, providers, impossible combinations), used at
``codeswitch up``, by ``route add`` and by the routers (a rule that does not pass is never
silently ignored where an admin can see it: the CLI and ``up`` refuse it).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Literal

import msgspec

from schemas.dialects import DIALECTS

__all__ = [
    "CLIENT_DIALECTS",
    "MATCH_KEYS",
    "ROUTES_KEY",
    "SECRET_HEADERS",
    "RouteError",
    "RouteMatch",
    "RouteRule",
    "RouteTable",
    "check_rules",
    "globs",
]

ROUTES_KEY = "routes"  # the cs_settings key holding the RouteTable
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEADER_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")
# headers never forwarded to the routers, so never matched: they carry the client's key
SECRET_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key", "cookie",
                            "proxy-authorization", "api-key"})
# the client families edge/identity.py detects that speak one dialect only
CLIENT_DIALECTS = {"claude-code": "anthropic", "codex": "openai-responses",
                   "gemini-cli": "gemini"}


class RouteMatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                 omit_defaults=True):
    """What a request must have; every key given must hold (AND). Globs: fnmatch (``*``,
    ``?``, ``[...]``), case-sensitive; a list of globs matches when any does."""

    model: str | list[str] | None = None  # the requested model
    client: str | list[str] | None = None  # claude-code, codex, gemini-cli, anthropic-sdk, ...
    dialect: str | list[str] | None = None  # anthropic, openai-chat, openai-responses, gemini
    thinking: bool | None = None  # the request asks for reasoning (any dialect's way)
    min_input_tokens: int | None = None  # estimated: no tokenizer (workers/router/rules.py)
    image: bool | None = None  # some input part is an image
    tools: list[str] | None = None  # tool names (globs) that must all be present
    user: str | list[str] | None = None  # the gateway user's name, else the client's user id
    key: str | list[str] | None = None  # the gateway key: "USER/NAME" or "NAME"
    header: dict[str, str] | None = None  # request header name -> glob of its value
    subagent: bool | None = None  # Claude Code's subagent requests (docs/clients.md)
    session_turn: Literal["first", "later"] | None = None  # no assistant turn yet / some


MATCH_KEYS = tuple(RouteMatch.__struct_fields__)


class RouteRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                omit_defaults=True):
    name: str
    to: list[str]
    match: RouteMatch = RouteMatch()
    model: str | None = None  # the upstream model asked of the rule's providers
    fallback: bool = True  # after the rule's providers failed: normal routing
    source: str = "cli"  # "config" when it came from the config file


class RouteTable(msgspec.Struct, frozen=True, kw_only=True):
    """KV cs_settings key "routes": the rules in the order they are tried."""

    rules: list[RouteRule] = []


class RouteError(ValueError):
    """A rule that cannot be used: ``index`` is its place in the list, ``key`` what is wrong
    (``to``, ``match.client``, ...)."""

    def __init__(self, message: str, index: int | None = None, key: str | None = None,
                 rule: str | None = None) -> None:
        where = f"route {rule!r}: " if rule else ""
        super().__init__(where + (f"{key}: " if key else "") + message)
        self.message, self.index, self.key, self.rule = message, index, key, rule


def globs(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _is_catch_all(m: RouteMatch) -> bool:
    return m == RouteMatch()


def check_rules(rules: list[RouteRule], providers: Collection[str] | None) -> None:
    """Raise ``RouteError`` for the first rule that cannot be used: a bad or duplicate name, no
    ``to``, a provider that is not configured (when ``providers`` is given), a malformed match
    (empty globs, bad header names, a secret header, a negative token count, an unknown
    dialect), an impossible combination (a client with a dialect it does not speak, a subagent
    that is not Claude Code), or a rule no request can reach (an earlier rule matches every
    request)."""
    seen: dict[str, int] = {}
    catch_all: str | None = None
    for i, rule in enumerate(rules):
        def fail(message: str, key: str | None = None, _i: int = i,
                 _rule: str = rule.name) -> RouteError:
            return RouteError(message, _i, key, _rule)

        if not _NAME_RE.match(rule.name):
            raise RouteError(f"rule name {rule.name!r} must be 1-64 letters, digits, '_', '.' "
                             "or '-'", i, "name")
        if rule.name in seen:
            raise fail(f"duplicate rule name (also rule #{seen[rule.name] + 1})", "name")
        seen[rule.name] = i
        if not rule.to:
            raise fail("names no provider: give to = [\"provider\", ...]", "to")
        if len(set(rule.to)) != len(rule.to):
            raise fail("names a provider twice", "to")
        if providers is not None:
            unknown = [p for p in rule.to if p not in providers]
            if unknown:
                known = ", ".join(sorted(providers)) or "none"
                raise fail(f"unknown provider {unknown[0]!r} (configured: {known})", "to")
        if rule.model is not None and not rule.model.strip():
            raise fail("is empty (leave it out to keep the requested model)", "model")
        m = rule.match
        for key in ("model", "client", "dialect", "user", "key"):
            value = getattr(m, key)
            if value is None:
                continue
            pats = globs(value)
            if not pats or any(not isinstance(p, str) or not p for p in pats):
                raise fail("needs a non-empty glob or list of globs", f"match.{key}")
        for d in globs(m.dialect):
            if not any(_fn(d, known) for known in DIALECTS):
                raise fail(f"{d!r} matches no dialect (known: {', '.join(DIALECTS)})",
                           "match.dialect")
        if m.tools is not None and (not m.tools or any(not t for t in m.tools)):
            raise fail("needs a list of tool names (globs)", "match.tools")
        if m.min_input_tokens is not None and m.min_input_tokens < 0:
            raise fail("must be 0 or more", "match.min_input_tokens")
        if m.header is not None:
            if not m.header:
                raise fail("needs at least one name = \"glob\"", "match.header")
            for name, pat in m.header.items():
                if not _HEADER_RE.match(name):
                    raise fail(f"{name!r} is not a header name", "match.header")
                if name.lower() in SECRET_HEADERS:
                    raise fail(f"{name!r} carries the client's key and is never matched",
                               "match.header")
                if not pat:
                    raise fail(f"{name}: needs a glob (\"*\" = present)", "match.header")
        # impossible combinations
        clients = globs(m.client)
        dialects = globs(m.dialect)
        if clients and dialects:
            spoken = {CLIENT_DIALECTS[c] for c in clients if c in CLIENT_DIALECTS}
            if len(spoken) == len(clients) and not any(
                    _fn(s, d) for s in spoken for d in dialects):
                raise fail(f"client {'/'.join(clients)} never speaks dialect "
                           f"{'/'.join(dialects)}", "match")
        if m.subagent:
            if clients and not any(_fn("claude-code", c) for c in clients):
                raise fail("subagent requests come from claude-code only; this rule also "
                           f"asks for client {'/'.join(clients)}", "match")
            if dialects and not any(_fn("anthropic", d) for d in dialects):
                raise fail("subagent requests are anthropic; this rule also asks for dialect "
                           f"{'/'.join(dialects)}", "match")
        if catch_all is not None:
            raise fail(f"can never match: rule {catch_all!r} before it matches every request")
        if _is_catch_all(m):
            catch_all = rule.name


def _fn(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)
