"""`codeswitch route add|list|remove|test`: route rules in KV (codeswitch/routes.py), used by
the running routers on their next request. Every change is an admin fact (route.added,
route.updated, route.removed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from runtime.home import nats_url_for
from schemas.routes import MATCH_KEYS, RouteError, RouteMatch, RouteRule, RouteTable, check_rules

__all__ = ["guess_dialect", "parse_match", "register", "verdict_lines"]

route_app = typer.Typer(no_args_is_help=True, help="Route rules: send requests that match to "
                        "chosen providers (first matching rule wins).")
out = Console(soft_wrap=True)
err = Console(stderr=True)
HomeOpt = Annotated[Path | None, typer.Option("--home", help="Data directory "
                    "(default $CODESWITCH_HOME or ~/.code-switch).", show_default=False)]
NatsOpt = Annotated[str | None, typer.Option("--nats-url", help="NATS URL (default: the "
                    "running gateway's, or $CODESWITCH_NATS_URL).", show_default=False)]

_BOOL_KEYS = ("thinking", "image", "subagent")
_LIST_KEYS = ("model", "client", "dialect", "user", "key")


def parse_match(items: list[str]) -> RouteMatch:
    """``--match KEY=VALUE`` items into a RouteMatch: globs (a comma makes a list), true/false,
    a number for min_input_tokens, tools as a comma list, ``header:NAME=GLOB``."""
    doc: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--match {item!r}: expected KEY=VALUE (keys: "
                             f"{', '.join(MATCH_KEYS)})")
        if key.startswith("header:"):
            doc.setdefault("header", {})[key[7:]] = value
        elif key in _BOOL_KEYS:
            if value.lower() not in ("true", "false"):
                raise ValueError(f"--match {key}: true or false, not {value!r}")
            doc[key] = value.lower() == "true"
        elif key == "min_input_tokens":
            try:
                doc[key] = int(value.replace("_", "").replace(",", ""))
            except ValueError:
                raise ValueError(f"--match {key}: a whole number, not {value!r}") from None
        elif key == "tools":
            doc[key] = [t.strip() for t in value.split(",") if t.strip()]
        elif key in _LIST_KEYS:
            parts = [v.strip() for v in value.split(",")]
            doc[key] = parts[0] if len(parts) == 1 else parts
        elif key == "session_turn" or key == "header":
            doc[key] = value
        else:
            raise ValueError(f"--match: unknown key {key!r} (keys: {', '.join(MATCH_KEYS)}; "
                             "header:NAME=GLOB for a header)")
    try:
        return msgspec.convert(doc, RouteMatch)
    except msgspec.ValidationError as exc:
        raise ValueError(f"--match: {exc}") from None


def _with_nats(url: str | None, home: Path | None, fn: Any) -> Any:
    from codeswitch.cli import _with_nats as run

    return run(nats_url_for(home, url), fn)


@route_app.command("add")
def route_add(
    name: Annotated[str, typer.Argument(help="The rule's name (shown in facts, logs and the "
                                        "x-codeswitch-route header).")],
    to: Annotated[list[str], typer.Option("--to", help="A provider to send matching requests "
                                          "to (repeatable: tried in order).")],
    match: Annotated[list[str] | None, typer.Option(
        "--match", help="KEY=VALUE, all must hold (repeatable): model=GLOB, client=GLOB, "
        "dialect=GLOB, thinking=true|false, min_input_tokens=N, image=true|false, "
        "tools=NAME[,NAME], user=GLOB, key=GLOB, header:NAME=GLOB, subagent=true|false, "
        "session_turn=first|later; a comma gives a list of globs.")] = None,
    upstream_model: Annotated[str | None, typer.Option(
        "--model", help="The model to ask the rule's providers for (default: as requested, "
        "through each provider's model map).")] = None,
    no_fallback: Annotated[bool, typer.Option(
        "--no-fallback", help="When the rule's providers fail, fail (default: normal "
        "routing takes over).")] = False,
    before: Annotated[str | None, typer.Option(
        "--before", help="Put it before this rule (default: last; a rule replaced keeps "
        "its place).")] = None,
    first: Annotated[bool, typer.Option("--first", help="Put it first.")] = False,
    nats_url: NatsOpt = None, home: HomeOpt = None,
) -> None:
    """Add a route rule (or replace the one of that name). Routers use it on the next
    request."""
    from codeswitch.cli import _applied, _audit
    from codeswitch.routes import get_routes, known_providers, put_routes, rule_details

    try:
        rule = RouteRule(name=name, to=to, match=parse_match(match or []),
                         model=upstream_model, fallback=not no_fallback, source="cli")
    except ValueError as exc:
        err.print(f"[red]invalid route rule:[/] {exc}")
        raise typer.Exit(2) from None

    async def go(nc: Any) -> tuple[str | None, str]:
        rules = list((await get_routes(nc)).rules)
        at = next((i for i, r in enumerate(rules) if r.name == name), None)
        existed = at is not None
        if at is not None:
            if rules[at].source == "config":
                return (f"rule {name!r} comes from the config file: change it there (or give "
                        "this one another name)"), ""
            rules.pop(at)
        if first:
            at = 0
        elif before is not None:
            at = next((i for i, r in enumerate(rules) if r.name == before), None)
            if at is None:
                return f"--before: no rule named {before!r}", ""
        if at is None:
            at = len(rules)
        rules.insert(at, rule)
        try:
            check_rules(rules, await known_providers(nc))
        except RouteError as exc:
            return str(exc), ""
        await put_routes(nc, RouteTable(rules=rules))
        await _audit(nc, home).record("route.updated" if existed else "route.added",
                                      f"route:{name}", position=at + 1, **rule_details(rule))
        return None, f"#{at + 1} of {len(rules)}; " + await _applied(nc)

    problem, applied = _with_nats(nats_url, home, go)
    if problem:
        err.print(f"[red]route rule refused:[/] {problem}")
        raise typer.Exit(2)
    out.print(f"route [bold]{name}[/] saved ({applied})")


@route_app.command("remove")
def route_remove(name: str, nats_url: NatsOpt = None, home: HomeOpt = None) -> None:
    """Remove a route rule."""
    from codeswitch.cli import _applied, _audit
    from codeswitch.routes import get_routes, put_routes

    async def go(nc: Any) -> tuple[str | None, str]:
        rules = list((await get_routes(nc)).rules)
        rule = next((r for r in rules if r.name == name), None)
        if rule is None:
            return f"no route rule named {name!r}", ""
        if rule.source == "config":
            return f"rule {name!r} comes from the config file: remove it there", ""
        rules.remove(rule)
        await put_routes(nc, RouteTable(rules=rules))
        await _audit(nc, home).record("route.removed", f"route:{name}")
        return None, await _applied(nc)

    problem, applied = _with_nats(nats_url, home, go)
    if problem:
        err.print(f"[red]{problem}[/]")
        raise typer.Exit(1)
    out.print(f"route [bold]{name}[/] removed; {applied}")


@route_app.command("list")
def route_list(json_out: Annotated[bool, typer.Option("--json")] = False,
               nats_url: NatsOpt = None, home: HomeOpt = None) -> None:
    """The route rules in the order they are tried."""
    from codeswitch.routes import get_routes, summary

    async def go(nc: Any) -> RouteTable:
        return await get_routes(nc)

    table: RouteTable = _with_nats(nats_url, home, go)
    if json_out:
        sys.stdout.write(msgspec.json.encode(table.rules).decode() + "\n")
        return
    if not table.rules:
        out.print("no route rules: requests go by `use`, affinity and the strategy")
        return
    t = Table("#", "name", "match", "to", "model", "fallback", "from", title_justify="left")
    for i, r in enumerate(table.rules, 1):
        t.add_row(str(i), r.name, summary(r), ", ".join(r.to), r.model or "-",
                  "yes" if r.fallback else "no", "config" if r.source == "config" else "cli")
    out.print(t)


def guess_dialect(doc: dict[str, Any], headers: dict[str, str]) -> str:
    """The dialect of a request body when the caller does not say."""
    if "contents" in doc or "x-goog-api-key" in headers:
        return "gemini"
    if "input" in doc and "messages" not in doc:
        return "openai-responses"
    if "anthropic-version" in headers or "system" in doc or "thinking" in doc \
            or isinstance(doc.get("metadata"), dict):
        return "anthropic"
    return "openai-chat"


def verdict_lines(rules: list[RouteRule], raw: bytes, *, dialect: str | None = None,
               headers: dict[str, str] | None = None, model: str | None = None,
               client: str | None = None, user: str | None = None,
               key: str | None = None) -> list[str]:
    """What ``route test`` prints: the request's features, then each rule's verdict."""
    from edge.identity import client_family
    from workers import translator
    from workers.router.rules import compile_rules, explain, features

    headers = {k.lower(): v for k, v in (headers or {}).items()}
    doc = translator.parse_request(raw)
    dialect = dialect or guess_dialect(doc, headers)
    f = features(model=model or str(doc.get("model") or ""), dialect=dialect,
                 client=client or client_family(headers), user=user, key=key,
                 headers=headers, doc=doc, body_size=len(raw))
    lines = [f"request: dialect={f.dialect} model={f.model or '-'} client={f.client or '-'} "
             f"thinking={str(f.thinking).lower()} image={str(f.image).lower()} "
             f"subagent={str(f.subagent).lower()} "
             f"session_turn={'first' if f.first_turn else 'later'} "
             f"input_tokens~{f.input_tokens} tools={len(f.tools)}"
             + (f" ({', '.join(sorted(f.tools)[:8])}{', ...' if len(f.tools) > 8 else ''})"
                if f.tools else "")]
    verdicts = explain(compile_rules(rules), f)
    chosen = next((n for n, v in verdicts if v == "matched"), None)
    for name, verdict in verdicts:
        lines.append(f"  {'→' if name == chosen else ' '} {name}: {verdict}")
    if chosen is None:
        lines.append("no rule matches: normal routing (use, affinity, strategy)")
    else:
        rule = next(r for r in rules if r.name == chosen)
        lines.append(f"route {chosen}: to {', '.join(rule.to)}"
                     + (f" as {rule.model}" if rule.model else "")
                     + ("; then normal routing" if rule.fallback else "; no fallback"))
    return lines


@route_app.command("test")
def route_test(
    file: Annotated[Path, typer.Argument(help="A request body (JSON). FILE.headers.json "
                                         "beside it, when there, gives its headers.")],
    dialect: Annotated[str | None, typer.Option(help="The client's dialect (default: guessed "
                                                "from the body).")] = None,
    model: Annotated[str | None, typer.Option(help="The requested model (Gemini has it in "
                                              "the URL).")] = None,
    header: Annotated[list[str] | None, typer.Option("--header", help="Name: value "
                                                     "(repeatable).")] = None,
    client: Annotated[str | None, typer.Option(help="The client family (default: from the "
                                               "headers).")] = None,
    user: Annotated[str | None, typer.Option(help="The gateway user's name.")] = None,
    key: Annotated[str | None, typer.Option(help="The gateway key, USER/NAME.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="Test the rules of this config file (no gateway needed) instead "
        "of the running gateway's.")] = None,
    nats_url: NatsOpt = None, home: HomeOpt = None,
) -> None:
    """Which rule a request body would match, and why each other one does not."""
    from codeswitch.config import ConfigError, load_config
    from workers.translator import TranslationError

    try:
        raw = file.read_bytes()
    except OSError as exc:
        err.print(f"[red]cannot read {file}:[/] {exc.strerror}")
        raise typer.Exit(2) from None
    headers: dict[str, str] = {}
    side = file.with_name(file.name.removesuffix(".json") + ".headers.json")
    if side.exists():
        try:
            headers = {str(k): str(v) for k, v in json.loads(side.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            err.print(f"[yellow]{side} ignored: not a JSON object[/]")
    for item in header or []:
        name, _, value = item.partition(":")
        headers[name.strip()] = value.strip()
    if config is not None:
        try:
            rules = load_config(config).routes
        except ConfigError as exc:
            err.print(f"[red]config error[/] {exc}")
            raise typer.Exit(2) from None
    else:
        from codeswitch.routes import get_routes

        async def go(nc: Any) -> RouteTable:
            return await get_routes(nc)

        rules = _with_nats(nats_url, home, go).rules
    try:
        lines = verdict_lines(rules, raw, dialect=dialect, headers=headers, model=model,
                           client=client, user=user, key=key)
    except TranslationError as exc:
        err.print(f"[red]{file} is not a request body:[/] {exc.message}")
        raise typer.Exit(2) from None
    for line in lines:
        out.print(line, highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(route_app, name="route")

