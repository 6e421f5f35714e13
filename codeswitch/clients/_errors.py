"""Errors raised while editing client configuration, MCP lists and skills.

    ClientsError                    root; every class has a stable ``code``
     ├── MalformedConfigError       an existing file does not parse; it is left untouched
     ├── ConfigShapeError           it parses, but a key we need holds the wrong type
     ├── FileChangedError           another program rewrote the file while we edited it
     ├── McpError
     │    └── McpStoreUnavailableError   the gateway's NATS cannot be reached
     └── SkillError
          ├── UnsafeArchiveError    traversal, absolute path, escaping symlink, bomb, ...
          └── SkillValidationError  SKILL.md missing or its front matter is invalid
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ClientsError",
    "ConfigShapeError",
    "FileChangedError",
    "MalformedConfigError",
    "McpError",
    "McpStoreUnavailableError",
    "SkillError",
    "SkillValidationError",
    "UnsafeArchiveError",
]


class ClientsError(Exception):
    code = "clients_error"


class MalformedConfigError(ClientsError):
    code = "malformed_config"

    def __init__(self, path: Path | str, detail: str) -> None:
        self.path = Path(path)
        self.detail = detail
        super().__init__(f"{path}: cannot parse ({detail}); the file was left untouched")


class ConfigShapeError(ClientsError):
    code = "config_shape"

    def __init__(self, path: Path | str, detail: str) -> None:
        self.path = Path(path)
        self.detail = detail
        super().__init__(f"{path}: {detail}; the file was left untouched")


class McpError(ClientsError):
    code = "mcp_error"


class McpStoreUnavailableError(McpError):
    code = "mcp_store_unavailable"


class SkillError(ClientsError):
    code = "skill_error"


class UnsafeArchiveError(SkillError):
    code = "unsafe_archive"


class SkillValidationError(SkillError):
    code = "skill_invalid"


class FileChangedError(ClientsError):
    """The file changed between our read and our write (Claude Code rewrites ~/.claude.json
    while it runs): nothing of ours replaced it; plan again from what is there now."""

    code = "file_changed"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        super().__init__(f"{path} changed while codeswitch was editing it (is the client "
                         "running and writing it?); it was left as the other program wrote it")
