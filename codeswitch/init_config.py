"""The config file ``codeswitch init`` writes: commented TOML from what it finds (pure).

Each provider whose key variable is set is written as a ``[[providers]]`` table with
``api_key = "env:NAME"`` (the key stays in the environment; nothing secret goes into the
file); the other well-known providers are there commented out, ready to be enabled by setting
their variable and uncommenting. ``codeswitch up`` loads the result like any config file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from codeswitch.envproviders import KNOWN, Known

__all__ = ["render_config"]


def _toml_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def _provider(k: Known, var: str, *, commented: bool) -> list[str]:
    c = "# " if commented else ""
    return [
        f"{c}[[providers]]",
        f"{c}name = {json.dumps(k.name)}",
        f"{c}dialect = {json.dumps(k.dialect)}",
        f"{c}base_url = {json.dumps(k.base_url)}",
        f"{c}api_key = {json.dumps('env:' + var)}   # the variable's name, never its value",
        f"{c}models = {_toml_list(k.models)}",
        f"{c}priority = {k.priority}",
        "",
    ]


def render_config(chosen: dict[str, str], *, port: int = 18100,
                  demo_hint: bool = True) -> str:
    """``chosen``: provider name (from ``KNOWN``) -> the variable holding its key."""
    lines = [
        "# codeswitch config, written by `codeswitch init`. `codeswitch up` reads it from",
        "# <data directory>/config.toml (or --config / $CODESWITCH_CONFIG). Every option:",
        "# codeswitch.example.toml and the README.",
        "",
        "[gateway]",
        f"port = {port}                 # host defaults to 127.0.0.1",
        "# api_keys = [\"env:CODESWITCH_KEY\"]   # if set, clients must send one of these keys",
        "",
        "# Providers, tried by priority (lower first); a request goes to the ones whose",
        "# models (globs) match the model it names.",
    ]
    if not chosen:
        lines += ["# No provider key was found in the environment: set one of the variables",
                  "# below and uncomment its table, or add providers with",
                  "# `codeswitch provider add`."
                  + (" To try the gateway meanwhile: `codeswitch up --demo`." if demo_hint
                     else "")]
    lines.append("")
    for k in KNOWN:
        if k.name in chosen:
            lines += _provider(k, chosen[k.name], commented=False)
    others = [k for k in KNOWN if k.name not in chosen]
    if others:
        lines += ["# More providers: set the variable, then uncomment.", ""]
        for k in others:
            lines += _provider(k, k.variables[0], commented=True)
    lines += [
        "# [routing]",
        "# strategy = \"round-robin\"    # round-robin | weighted | least-loaded",
        "",
    ]
    return "\n".join(lines)
