"""A temporary HOME holding real-world client files (unrelated keys, comments, MCP servers
added by hand), and the CLI wired into a throwaway typer app."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from codeswitch.cli_clients import register

CLAUDE_SETTINGS = """{
  "model": "opus",
  "permissions": {
    "allow": ["Bash(npm run test:*)", "Read(~/.zshrc)"],
    "deny": []
  },
  "env": {
    "DISABLE_TELEMETRY": "1"
  },
  "hooks": {
    "PostToolUse": [{"matcher": "Edit", "hooks": [{"type": "command", "command": "ruff"}]}]
  },
  "includeCoAuthoredBy": false
}
"""

CLAUDE_JSON = """{
  "numStartups": 42,
  "theme": "dark",
  "mcpServers": {
    "github": {
      "type": "http",
      "url": "https://api.githubcopilot.com/mcp/",
      "headers": {"Authorization": "Bearer ghp_hand"}
    },
    "fs": {
      "type": "stdio",
      "command": "npx",
      "args": ["-y", "@modelcontextprotocol/server-filesystem", "/home/me"],
      "env": {}
    }
  },
  "projects": {
    "/home/me/src/app": {"allowedTools": [], "hasTrustDialogAccepted": true}
  }
}
"""

CODEX_CONFIG = """# Codex configuration (edited by hand)
model = "gpt-5-codex"          # my favourite
approval_policy = "on-request"

[model_providers.openrouter]
name = "OpenRouter"
base_url = "https://openrouter.ai/api/v1"
env_key = "OPENROUTER_API_KEY"
wire_api = "responses"

# servers I added myself
[mcp_servers.context7]
command = "npx"
args = ["-y", "@upstash/context7-mcp"]

[mcp_servers.context7.env]
DEBUG = "1"

[tui]
notifications = true
"""

GEMINI_SETTINGS = """// Gemini CLI settings (comments are allowed here)
{
    "ui": {
        "theme": "GitHub"
    },
    "security": {
        "auth": {
            "selectedType": "oauth-personal" /* logged in with Google */
        }
    },
    "mcpServers": {}
}
"""

GEMINI_ENV = """# my gemini env
GEMINI_MODEL=gemini-2.5-pro
export GEMINI_API_KEY="AIza-real-key"
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME with the three clients configured by hand; CODESWITCH_HOME next to it."""
    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.setenv("HOME", str(user))
    for var in ("CLAUDE_CONFIG_DIR", "CODEX_HOME", "GEMINI_CLI_HOME", "CODESWITCH_NATS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CODESWITCH_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))  # no real CLI binary is detected
    (user / ".claude").mkdir()
    (user / ".claude" / "settings.json").write_text(CLAUDE_SETTINGS)
    (user / ".claude.json").write_text(CLAUDE_JSON)
    (user / ".codex").mkdir()
    (user / ".codex" / "config.toml").write_text(CODEX_CONFIG)
    (user / ".gemini").mkdir()
    (user / ".gemini" / "settings.json").write_text(GEMINI_SETTINGS)
    (user / ".gemini" / ".env").write_text(GEMINI_ENV)
    return user


@pytest.fixture
def data_dir(home: Path) -> Path:
    return home.parent / "data"


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file (and symlink target) under ``root``, by relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = b"->" + str(p.readlink()).encode()
        elif p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes()
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = b""
    return out


@pytest.fixture
def run() -> Callable[..., Any]:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """test app"""

    register(app)
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke
