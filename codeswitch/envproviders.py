"""Providers from the environment: the well-known API key variables already in the shell
become providers on a first ``codeswitch up`` (and in ``codeswitch init``'s config).

``detect`` is pure (an environment in, providers out). Each provider's key is the reference
``env:NAME``, never the value: the router reads the variable at call time, so nothing secret
is written to KV, the event log or a config file. ``sync_env_providers`` is what ``up`` does
with them: only while no provider comes from elsewhere (the config file, the CLI, app.json),
it adds the detected ones and removes those whose variable is gone; once the user manages
providers, nothing here changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

from schemas.config import ProviderConfig

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from codeswitch.audit import AdminLog

__all__ = ["KNOWN", "ENV_SOURCE", "Known", "detect", "found_line", "sync_env_providers"]

ENV_SOURCE = "env"  # ProviderConfig.source of a provider made from an environment variable


class Known(NamedTuple):
    name: str  # the provider's name
    variables: tuple[str, ...]  # the first one set wins
    dialect: str
    base_url: str
    models: tuple[str, ...]  # globs of the model names it serves
    priority: int = 1


# The keys people have in their shell, with the providers' official endpoints and the model
# names each one answers. OpenRouter's ids are vendor/model: it takes those (priority 5: the
# direct providers first when both would serve a name).
KNOWN: tuple[Known, ...] = (
    Known("anthropic", ("ANTHROPIC_API_KEY",), "anthropic", "https://api.anthropic.com",
          ("claude-*",)),
    Known("openai", ("OPENAI_API_KEY",), "openai-responses", "https://api.openai.com/v1",
          ("gpt-*", "o1*", "o3*", "o4*", "chatgpt-*", "codex-*", "computer-use-*")),
    Known("gemini", ("GEMINI_API_KEY", "GOOGLE_API_KEY"), "gemini",
          "https://generativelanguage.googleapis.com", ("gemini-*", "gemma-*")),
    Known("deepseek", ("DEEPSEEK_API_KEY",), "openai-chat", "https://api.deepseek.com",
          ("deepseek-*",)),
    Known("mistral", ("MISTRAL_API_KEY",), "openai-chat", "https://api.mistral.ai/v1",
          ("mistral-*", "codestral-*", "devstral-*", "magistral-*", "ministral-*",
           "pixtral-*", "open-mistral-*")),
    Known("xai", ("XAI_API_KEY",), "openai-chat", "https://api.x.ai/v1", ("grok-*",)),
    Known("groq", ("GROQ_API_KEY",), "openai-chat", "https://api.groq.com/openai/v1",
          ("llama-*", "llama3-*", "meta-llama/*", "qwen/*", "moonshotai/*",
           "openai/gpt-oss-*"), 2),
    Known("moonshot", ("MOONSHOT_API_KEY",), "openai-chat", "https://api.moonshot.ai/v1",
          ("kimi-*", "moonshot-*")),
    Known("openrouter", ("OPENROUTER_API_KEY",), "openai-chat", "https://openrouter.ai/api/v1",
          ("*/*",), 5),
)

# values that are not a provider's key: the placeholder `codeswitch connect` writes, and this
# gateway's own user keys (a shell pointed at the gateway exports those)
_NOT_KEYS = ("codeswitch-local",)


def _usable(value: str | None) -> bool:
    return bool(value and value.strip()) and value not in _NOT_KEYS \
        and not (value or "").startswith("cs-")


def detect(environ: Mapping[str, str]) -> list[tuple[ProviderConfig, str]]:
    """(provider, the variable it reads) for every well-known key set in ``environ``."""
    found = []
    for k in KNOWN:
        var = next((v for v in k.variables if _usable(environ.get(v))), None)
        if var is None:
            continue
        found.append((ProviderConfig(
            name=k.name, dialect=k.dialect, base_url=k.base_url,  # type: ignore[arg-type]
            api_key=f"env:{var}", models=list(k.models), priority=k.priority,
            source=ENV_SOURCE), var))
    return found


def found_line(found: list[tuple[ProviderConfig, str]]) -> str:
    """The banner's word on it."""
    if not found:
        return ("no provider key in the environment (ANTHROPIC_API_KEY, OPENAI_API_KEY, "
                "GEMINI_API_KEY, OPENROUTER_API_KEY, DEEPSEEK_API_KEY, …)")
    return "providers from the environment: " + ", ".join(
        f"{p.name} ({var})" for p, var in found)


async def sync_env_providers(nc: NATS, environ: Mapping[str, str], *,
                             audit: AdminLog | None = None,
                             config_file: bool = False) -> list[str]:
    """On ``up``: while every provider in KV came from the environment (or the demo), make
    them the ones ``environ`` has. Returns the banner's lines (what was found, what changed).
    """
    from codeswitch.admin import delete_provider, list_providers, provider_details, put_provider

    current = await list_providers(nc)
    managed = [p for p in current if p.source not in (ENV_SOURCE, "demo")]
    if config_file or managed:
        return []
    found = detect(environ)
    lines = [found_line(found)]
    have = {p.name: p for p in current if p.source == ENV_SOURCE}
    for p, var in found:
        if have.get(p.name) != p:
            await put_provider(nc, p)
            verb = "updated" if p.name in have else "added"
            if audit is not None:
                await audit.record(f"provider.{verb}", f"provider:{p.name}",
                                   via="environment", **provider_details(p))
            if verb == "updated":
                lines.append(f"provider {p.name} updated from {var}")
    for name in set(have) - {p.name for p, _ in found}:
        await delete_provider(nc, name)
        lines.append(f"provider {name} removed (its variable is no longer set)")
        if audit is not None:
            await audit.record("provider.removed", f"provider:{name}", via="environment")
    return lines
