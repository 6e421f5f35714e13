"""Where each CLI keeps the files we edit, honouring the variables that relocate them.

- Claude Code: ``~/.claude/settings.json`` (``env`` block), ``~/.claude.json`` (``mcpServers``,
  user scope) and ``~/.claude/skills/``; ``CLAUDE_CONFIG_DIR`` moves all three into one
  directory (code.claude.com/docs/en/settings, /en/mcp, /en/env-vars; anthropics/claude-code
  issues #361 and #79952).
- Codex CLI: ``$CODEX_HOME/config.toml`` and ``$CODEX_HOME/.env``, ``CODEX_HOME`` defaulting
  to ``~/.codex`` (openai/codex ``codex-rs/core`` ``find_codex_home``; ``codex-rs/arg0``
  ``load_dotenv`` reads ``$CODEX_HOME/.env`` and ignores names starting with ``CODEX_``).
- Gemini CLI: ``~/.gemini/settings.json`` and ``~/.gemini/.env``, where ``~`` is
  ``GEMINI_CLI_HOME`` when set (google-gemini/gemini-cli ``packages/core/src/utils/paths.ts``
  ``homedir``, ``packages/cli/src/config/settings.ts`` ``findEnvFile``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ClientPaths"]


@dataclass(frozen=True)
class ClientPaths:
    claude_dir: Path
    claude_json: Path
    codex_home: Path
    gemini_dir: Path

    @classmethod
    def discover(cls, env: Mapping[str, str] | None = None) -> ClientPaths:
        env = os.environ if env is None else env
        home = Path(env.get("HOME") or Path.home())
        claude_cfg = env.get("CLAUDE_CONFIG_DIR")
        if claude_cfg:
            claude_dir = Path(claude_cfg).expanduser()
            claude_json = claude_dir / ".claude.json"
        else:
            claude_dir, claude_json = home / ".claude", home / ".claude.json"
        codex_home = Path(env.get("CODEX_HOME") or home / ".codex").expanduser()
        gemini_home = Path(env.get("GEMINI_CLI_HOME") or home).expanduser()
        return cls(claude_dir, claude_json, codex_home, gemini_home / ".gemini")

    @property
    def claude_settings(self) -> Path:
        return self.claude_dir / "settings.json"

    @property
    def claude_skills(self) -> Path:
        return self.claude_dir / "skills"

    @property
    def codex_config(self) -> Path:
        return self.codex_home / "config.toml"

    @property
    def codex_env(self) -> Path:
        return self.codex_home / ".env"

    @property
    def gemini_settings(self) -> Path:
        return self.gemini_dir / "settings.json"

    @property
    def gemini_env(self) -> Path:
        return self.gemini_dir / ".env"
