"""Codex CLI: a ``[model_providers.codeswitch]`` entry selected by ``model_provider``.

Codex reads ``$CODEX_HOME/config.toml`` (``~/.codex``). A custom provider has ``base_url``
(with the ``/v1`` prefix), ``wire_api = "responses"`` (the only value current Codex accepts;
``"chat"`` is refused) and ``env_key``, the name of a variable holding the key
(developers.openai.com/codex/config-reference; openai/codex ``docs/config.md``
"model_providers"; /work/shared/CLIENTS.md). ``OPENAI_BASE_URL`` is ignored by Codex.
Codex loads ``$CODEX_HOME/.env`` at start (``codex-rs/arg0`` ``load_dotenv``, which refuses
names starting with ``CODEX_``), so the key goes there as ``CODESWITCH_API_KEY``.
"""

from __future__ import annotations

from codeswitch.clients._edits import KeyEdit
from codeswitch.clients.paths import ClientPaths

__all__ = ["KEY_VAR", "NAME", "PROVIDER_ID", "edits", "present"]

NAME = "codex"
PROVIDER_ID = "codeswitch"
KEY_VAR = "CODESWITCH_API_KEY"


def edits(paths: ClientPaths, base_url: str, key: str) -> list[KeyEdit]:
    provider = {
        "name": "codeswitch gateway",
        "base_url": base_url.rstrip("/") + "/v1",
        "wire_api": "responses",
        "env_key": KEY_VAR,
    }
    return [
        KeyEdit(paths.codex_config, "toml", ("model_provider",), PROVIDER_ID),
        KeyEdit(paths.codex_config, "toml", ("model_providers", PROVIDER_ID), provider),
        KeyEdit(paths.codex_env, "dotenv", (KEY_VAR,), key),
    ]


def present(paths: ClientPaths) -> bool:
    return paths.codex_home.is_dir()
