"""Gemini CLI: base URL and key in ``~/.gemini/.env``, the API-key auth type in settings.json.

With the Gemini API key auth type the CLI builds its client with
``httpOptions.baseUrl = process.env.GOOGLE_GEMINI_BASE_URL`` and ``GEMINI_API_KEY``
(google-gemini/gemini-cli ``packages/core/src/core/contentGenerator.ts``). Those variables
come from the environment, which the CLI fills at start from the nearest ``.gemini/.env`` or
``.env`` walking up from the working directory, falling back to ``~/.gemini/.env``
(``packages/cli/src/config/settings.ts`` ``findEnvFile``/``loadEnvironment``; .env files are
only loaded in trusted folders). ``security.auth.selectedType = "gemini-api-key"`` in
``~/.gemini/settings.json`` selects the auth type, otherwise ``-p`` refuses to run
(geminicli.com/docs/reference/configuration; /work/shared/CLIENTS.md). settings.json may
hold comments, so it is edited as JSON with comments.
"""

from __future__ import annotations

from codeswitch.clients._edits import KeyEdit
from codeswitch.clients.paths import ClientPaths

__all__ = ["NAME", "edits", "present"]

NAME = "gemini"


def edits(paths: ClientPaths, base_url: str, key: str) -> list[KeyEdit]:
    return [
        KeyEdit(paths.gemini_env, "dotenv", ("GOOGLE_GEMINI_BASE_URL",), base_url.rstrip("/")),
        KeyEdit(paths.gemini_env, "dotenv", ("GEMINI_API_KEY",), key),
        KeyEdit(paths.gemini_settings, "jsonc", ("security", "auth", "selectedType"),
                "gemini-api-key"),
    ]


def present(paths: ClientPaths) -> bool:
    return paths.gemini_dir.is_dir()
