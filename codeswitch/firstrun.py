"""What ``codeswitch up`` does for a first run: providers from the environment
(``codeswitch/envproviders.py``) and the demo provider (``codeswitch/demo.py``): registered
with ``--demo``, removed without it (never chosen unless enabled)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from codeswitch.envproviders import sync_env_providers

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from codeswitch.audit import AdminLog

__all__ = ["first_run"]


async def first_run(nc: NATS, environ: Mapping[str, str], *, audit: AdminLog | None,
                    config_file: bool, demo_port: int | None) -> list[str]:
    """The banner's lines about providers from the environment and the demo provider."""
    from codeswitch.admin import delete_provider, list_providers, provider_details, put_provider
    from codeswitch.demo import DEMO_NAME, demo_provider

    lines: list[str] = []
    current = {p.name: p for p in await list_providers(nc)}
    old = current.get(DEMO_NAME)
    if demo_port is not None:
        demo = demo_provider(demo_port)
        if old is not None and old.source != "demo":
            lines.append(f"--demo ignored: a provider of yours is named {DEMO_NAME!r}")
        else:
            if old != demo:
                await put_provider(nc, demo)
                if audit is not None and old is None:
                    await audit.record("provider.added", f"provider:{DEMO_NAME}", via="--demo",
                                       **provider_details(demo))
            lines.append(f"DEMO provider on ({demo.base_url}): answers any model with canned "
                         "text, a tool call and usage; no key, no network. Not a real model")
    elif old is not None and old.source == "demo":
        await delete_provider(nc, DEMO_NAME)
        if audit is not None:
            await audit.record("provider.removed", f"provider:{DEMO_NAME}", via="up without --demo")
    lines += await sync_env_providers(nc, environ, audit=audit, config_file=config_file)
    providers = [p for p in await list_providers(nc) if p.enabled]
    if not providers:
        lines.append("NO PROVIDER: requests will fail. Set ANTHROPIC_API_KEY / OPENAI_API_KEY / "
                     "GEMINI_API_KEY and restart, `codeswitch provider add …`, "
                     "`codeswitch init`, or try `codeswitch up --demo`")
    return lines
