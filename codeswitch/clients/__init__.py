"""Connecting the coding CLIs to the gateway, MCP servers and Claude Skills.

Modules: ``connect`` (plan/apply connect and disconnect), ``claude``/``codex``/``gemini``
(which keys each CLI needs, with sources), ``mcp`` (pure MCP sync), ``mcp_store`` (NATS KV),
``mcp_files`` (writing the MCP list), ``skills`` and ``archive`` (safe skill installs),
``paths`` (where each CLI keeps its files).
"""

from codeswitch.clients._errors import (
    ClientsError,
    ConfigShapeError,
    MalformedConfigError,
    McpError,
    McpStoreUnavailableError,
    SkillError,
    SkillValidationError,
    UnsafeArchiveError,
)
from codeswitch.clients.connect import (
    CLIENT_NAMES,
    DEFAULT_BASE_URL,
    DEFAULT_KEY,
    connect_all,
)
from codeswitch.clients.paths import ClientPaths

__all__ = [
    "CLIENT_NAMES",
    "DEFAULT_BASE_URL",
    "DEFAULT_KEY",
    "ClientPaths",
    "ClientsError",
    "ConfigShapeError",
    "MalformedConfigError",
    "McpError",
    "McpStoreUnavailableError",
    "SkillError",
    "SkillValidationError",
    "UnsafeArchiveError",
    "connect_all",
]
