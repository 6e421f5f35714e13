"""Changes to codeswitch's MCP server list in KV (``cs_mcp``), each recorded as an admin fact:
shared by ``codeswitch mcp add|enable|disable|remove`` and the console. Writing the list into
the clients' files (``codeswitch mcp sync``) is each machine's own step, not here.
"""

from __future__ import annotations

from typing import Any

import msgspec

from codeswitch.clients._errors import McpError
from codeswitch.clients.mcp import McpServer, parse_pairs
from codeswitch.clients.mcp_store import McpStore

__all__ = ["McpNotFoundError", "add_server", "build_server", "remove_server", "set_enabled"]


class McpNotFoundError(McpError):
    code = "mcp_not_found"


def build_server(name: str, *, command: list[str] | None = None, url: str | None = None,
                 transport: str | None = None, env: list[str] | None = None,
                 headers: list[str] | None = None, enabled: bool = True) -> McpServer:
    """A checked server from ``mcp add``'s arguments: ``command`` is the command and its
    arguments (stdio), ``env`` ``KEY=VALUE`` items, ``headers`` ``Name: value`` items."""
    kind = transport or ("http" if url else "stdio")
    if kind not in ("stdio", "http", "sse"):
        raise McpError(f"unknown transport {kind!r}: use stdio, http or sse")
    args = list(command or [])
    return McpServer(
        name=name, transport=kind,  # type: ignore[arg-type]
        command=args[0] if args else None, args=args[1:],
        env=parse_pairs(env or [], "--env"), url=url or None,
        headers=parse_pairs(headers or [], "--header"), enabled=enabled,
    ).check()


async def add_server(store: McpStore, audit: Any, server: McpServer, *,
                     replace: bool) -> str:
    """Put ``server``; an existing one of that name is refused unless ``replace``. Records
    ``mcp.added`` or ``mcp.updated`` (header and env names only: values can hold tokens)."""
    existed = await store.get(server.name) is not None
    if not replace and existed:
        raise McpError(f"a server named {server.name!r} exists (use --replace)")
    await store.put(server)
    action = "mcp.updated" if existed else "mcp.added"
    await audit.record(
        action, f"mcp:{server.name}", transport=server.transport, command=server.command,
        url=server.url, env=sorted(server.env) or None, headers=sorted(server.headers) or None,
        enabled=server.enabled)
    return action


async def set_enabled(store: McpStore, audit: Any, name: str, enabled: bool) -> McpServer:
    server = await store.get(name)
    if server is None:
        raise McpNotFoundError(f"no server named {name!r} in codeswitch's list")
    changed = msgspec.structs.replace(server, enabled=enabled)
    await store.put(changed)
    await audit.record("mcp.enabled" if enabled else "mcp.disabled", f"mcp:{name}")
    return changed


async def remove_server(store: McpStore, audit: Any, name: str) -> None:
    if not await store.delete(name):
        raise McpNotFoundError(f"no server named {name!r} in codeswitch's list "
                               "(servers added by hand are left to you)")
    await audit.record("mcp.removed", f"mcp:{name}")
