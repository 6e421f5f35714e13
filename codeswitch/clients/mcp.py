"""MCP servers: one list, written into Claude Code's and Codex's formats (pure core).

Claude Code keeps user-scope servers in ``~/.claude.json`` under ``mcpServers``:
``{"type": "stdio", "command", "args", "env"}`` or ``{"type": "http"|"sse", "url",
"headers"}`` (code.claude.com/docs/en/mcp, "MCP installation scopes"). Codex keeps them in
``config.toml`` as ``[mcp_servers.<name>]`` with ``command``/``args``/``env`` (stdio) or
``url``/``http_headers`` (streamable HTTP), and ``enabled = false`` switches one off
(developers.openai.com/codex/mcp; openai/codex ``docs/config.md`` "mcp_servers"). Codex has
no SSE transport, so SSE servers go to Claude Code only.

Servers we did not write are the user's: they are listed, never changed or deleted, and a
server of ours with the same name is not written over them. Which names we own is kept in
``<home>/mcp-state.json`` next to the exact entry written, so an entry edited by hand
afterwards is left alone too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from codeswitch.clients._docs import Format, open_doc
from codeswitch.clients._errors import McpError

__all__ = [
    "NAME_RE",
    "McpServer",
    "SyncResult",
    "claude_entry",
    "codex_entry",
    "parse_pairs",
    "read_servers",
    "sync_text",
]

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
Transport = Literal["stdio", "http", "sse"]


class McpServer(msgspec.Struct, frozen=True, kw_only=True):
    """One MCP server as stored in KV (``cs_mcp``, key = name)."""

    name: str
    transport: Transport = "stdio"
    command: str | None = None
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    url: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    enabled: bool = True

    def check(self) -> McpServer:
        if not NAME_RE.match(self.name):
            raise McpError(f"invalid server name {self.name!r}: use letters, digits, - and _")
        if self.transport == "stdio":
            if not self.command:
                raise McpError(f"{self.name}: a stdio server needs a command")
            if self.url or self.headers:
                raise McpError(f"{self.name}: url and headers are for http/sse servers")
        else:
            if not self.url or not re.match(r"^https?://", self.url):
                raise McpError(f"{self.name}: an {self.transport} server needs an http(s) url")
            if self.command or self.args or self.env:
                raise McpError(f"{self.name}: command, args and env are for stdio servers")
        return self

    def target(self) -> str:
        if self.transport == "stdio":
            return " ".join([self.command or "", *self.args])
        return self.url or ""


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    """``["K=V", ...]`` (env) or ``["Name: value", ...]`` / ``["Name=value"]`` (headers)."""
    out: dict[str, str] = {}
    for item in items:
        sep = "=" if "=" in item and (":" not in item or item.index("=") < item.index(":")) \
            else ":"
        key, found, value = item.partition(sep)
        if not found or not key.strip():
            raise McpError(f"{what} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip() if sep == ":" else value
    return out


def claude_entry(server: McpServer) -> dict[str, Any] | None:
    if not server.enabled:
        return None
    if server.transport == "stdio":
        return {"type": "stdio", "command": server.command, "args": list(server.args),
                "env": dict(server.env)}
    entry: dict[str, Any] = {"type": server.transport, "url": server.url}
    if server.headers:
        entry["headers"] = dict(server.headers)
    return entry


def codex_entry(server: McpServer) -> dict[str, Any] | None:
    if server.transport == "sse":
        return None
    entry: dict[str, Any]
    if server.transport == "stdio":
        entry = {"command": server.command}
        if server.args:
            entry["args"] = list(server.args)
        if server.env:
            entry["env"] = dict(server.env)
    else:
        entry = {"url": server.url}
        if server.headers:
            entry["http_headers"] = dict(server.headers)
    if not server.enabled:
        entry["enabled"] = False
    return entry


@dataclass(frozen=True)
class Target:
    client: str
    fmt: Format
    section: tuple[str, ...]


CLAUDE = Target("claude", "json", ("mcpServers",))
CODEX = Target("codex", "toml", ("mcp_servers",))


@dataclass
class SyncResult:
    client: str
    path: Path
    old: str | None
    new: str | None
    owned: dict[str, Any]
    created_section: bool
    hand_added: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.old != self.new


def read_servers(target: Target, text: str | None, path: Path) -> dict[str, Any]:
    """Every server in the file, by name (for listing)."""
    doc = open_doc(target.fmt, text, path)
    section = list(target.section)
    names = doc.keys_at(section) or []
    return {name: doc.get([*section, name])[1] for name in names}


def sync_text(
    target: Target,
    text: str | None,
    path: Path,
    servers: list[McpServer],
    owned: dict[str, Any],
    created_section: bool = False,
) -> SyncResult:
    """The file's new text with our servers in it; hand-added servers untouched."""
    build = claude_entry if target.client == "claude" else codex_entry
    doc = open_doc(target.fmt, text, path)
    section = list(target.section)
    present = set(doc.keys_at(section) or [])
    if not present and not doc.get(section)[0]:
        created_section = True
    desired = {s.name: e for s in servers if (e := build(s)) is not None}
    notes: list[str] = []
    kept: dict[str, Any] = {}
    for name, entry in desired.items():
        key = [*section, name]
        if name in present and name not in owned:
            notes.append(f"{target.client}: '{name}' already exists in {path} (added by hand); "
                         "left as is")
            continue
        if name in owned and name in present and doc.get(key)[1] != owned[name]:
            notes.append(f"{target.client}: '{name}' was edited by hand in {path}; left as is "
                         "and no longer managed")
            continue
        doc.set(key, entry)
        kept[name] = entry
    for name, entry in owned.items():
        if name in desired:
            continue
        exists, current = doc.get([*section, name])
        if exists and current == entry:
            doc.delete([*section, name])
        elif exists:
            notes.append(f"{target.client}: '{name}' was edited by hand in {path}; left as is")
    if created_section and doc.get(section) == (True, {}):
        doc.delete(section)
    final = read_servers(target, doc.text, path)
    hand = {n: v for n, v in final.items() if n not in kept}
    new = doc.text if (text is not None or doc.text.strip("{}\n ")) else None
    return SyncResult(target.client, path, text, new, kept, created_section, hand, notes)
