"""Claude Code: point it at the gateway through the ``env`` block of its user settings.

Claude Code reads ``~/.claude/settings.json`` (``$CLAUDE_CONFIG_DIR/settings.json`` when that
is set); the ``env`` object is applied to every session and wins over the shell
(code.claude.com/docs/en/settings, "env"). ``ANTHROPIC_BASE_URL`` is the root URL (the client
appends ``/v1/messages`` itself) and ``ANTHROPIC_AUTH_TOKEN`` is sent as
``Authorization: Bearer`` (code.claude.com/docs/en/env-vars; /work/shared/CLIENTS.md).
"""

from __future__ import annotations

from codeswitch.clients._edits import KeyEdit
from codeswitch.clients.paths import ClientPaths

__all__ = ["NAME", "edits", "present", "warnings"]

NAME = "claude"


def edits(paths: ClientPaths, base_url: str, key: str) -> list[KeyEdit]:
    settings = paths.claude_settings
    return [
        KeyEdit(settings, "json", ("env", "ANTHROPIC_BASE_URL"), base_url.rstrip("/")),
        KeyEdit(settings, "json", ("env", "ANTHROPIC_AUTH_TOKEN"), key),
    ]


def present(paths: ClientPaths) -> bool:
    return paths.claude_dir.is_dir() or paths.claude_json.exists()


def warnings(data: dict[str, object]) -> list[str]:
    """Advice about settings we do not own but that change how the gateway is reached."""
    env = data.get("env")
    if isinstance(env, dict) and "ANTHROPIC_API_KEY" in env:
        return ["claude: settings.json env also sets ANTHROPIC_API_KEY; Claude Code then sends "
                "both x-api-key and Authorization (left as is)"]
    return []
