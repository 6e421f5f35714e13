"""``codeswitch alerts``: manage alert rules (KV cs_rules), send a test notification, and show
the alert history.

History source: the ledger is asked first over NATS request/reply on ``cs.ledger.alert_history``
(request ``{"since", "until", "rule", "limit"}``, unix seconds or null; reply
``{"ok": true, "result": [rows]}`` with rows of its alert_history table). When no ledger answers
within 2 s, the ``alert.>`` facts are read from the event log (stream CS_EVENTS) directly; the
output says which source was used.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import nats.errors
import typer
from nats.aio.client import Client as NATS
from nats.js import api as js_api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError
from rich.console import Console
from rich.table import Table

from codeswitch import alert_rules
from runtime import bus, names
from runtime.home import home_dir, masked_url, nats_url_for
from schemas.events import AlertFired, AlertNotificationFailed, AlertResolved, decode_event
from schemas.subjects import ledger_query_subject
from workers.alerts.rules import (
    METRICS,
    PERCENT_METRICS,
    AlertState,
    Channel,
    Rule,
)
from workers.ledger.wire import decode_reply

__all__ = ["LEDGER_HISTORY_SUBJECT", "parse_duration", "parse_threshold", "parse_time",
           "register"]

LEDGER_HISTORY_SUBJECT = ledger_query_subject("alert_history")
console = Console()
T = TypeVar("T")
HomeOpt = Annotated[Path | None, typer.Option("--home", help="data directory")]
UrlOpt = Annotated[str | None, typer.Option("--nats-url", help="NATS URL of the gateway")]


def parse_duration(text: str) -> float:
    """"90", "90s", "5m", "1.5h", "2d" -> seconds."""
    try:
        return alert_rules.parse_duration(text)
    except alert_rules.RuleError as exc:
        raise typer.BadParameter(str(exc)) from None


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds, an ISO date/time (UTC unless it says otherwise), or "<duration>" ago."""
    now = time.time() if now is None else now
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return now - parse_duration(text.removesuffix("ago").strip())
    except typer.BadParameter:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: use 1h (ago), 2025-01-31T12:00 or unix seconds"
        ) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def parse_threshold(metric: str, text: str) -> float:
    """``--threshold`` in the metric's unit (``codeswitch.alert_rules.parse_threshold``)."""
    try:
        return alert_rules.parse_threshold(metric, text)
    except alert_rules.RuleError as exc:
        raise typer.BadParameter(str(exc)) from None


def parse_channel(spec: str) -> Channel:
    """``[FORMAT=]URL`` or a JSON object with the Channel fields."""
    try:
        return alert_rules.parse_channel(spec)
    except alert_rules.RuleError as exc:
        raise typer.BadParameter(str(exc)) from None


def _run(home: Path | None, url: str | None, fn: Callable[[NATS], Awaitable[T]]) -> T:
    """Connect (once, no reconnect loop), run ``fn``, close. NATS down: a message, exit 2."""
    target = nats_url_for(home_dir(home), url)

    async def main() -> T:
        try:
            nc = await bus.connect(target, name="codeswitch-cli", once=True)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            console.print(f"[red]cannot reach NATS at {masked_url(target)}[/red] "
                          f"({type(exc).__name__}). "
                          "Is the gateway running (codeswitch up)? Or pass --nats-url.")
            raise typer.Exit(2) from None
        try:
            return await fn(nc)
        finally:
            await nc.close()

    return asyncio.run(main())


async def _kv(nc: NATS, bucket: str) -> Any:
    js = nc.jetstream()
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        await bus.ensure_all(js)
        return await js.key_value(bucket)


def _admin_log(nc: NATS, home: Path | None) -> Any:
    """This command's admin facts (codeswitch/audit.py)."""
    from codeswitch.audit import AdminLog

    return AdminLog(nc, home=home_dir(home))


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]{message}[/red]")
    return typer.Exit(code)


def _condition(rule: Rule) -> str:
    if rule.metric == "no_traffic":
        return f"no request for {rule.minutes:g} min"
    if rule.metric == "circuit_open":
        return f"open circuits {rule.comparison} {rule.threshold:g}"
    if rule.metric == "quota_used_pct":
        return f"quota used {rule.comparison} {rule.threshold:g}% (latest, no window)"
    unit = "%" if rule.metric in PERCENT_METRICS else ""
    return f"{rule.metric} {rule.comparison} {rule.threshold:g}{unit} / {rule.window_s:g}s"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def register(app: typer.Typer) -> None:
    """Add the ``alerts`` command group to the main CLI."""
    alerts = typer.Typer(help="Alert rules, test notifications and alert history.",
                         no_args_is_help=True)
    app.add_typer(alerts, name="alerts")

    @alerts.command("add")
    def add(
        name: Annotated[str, typer.Argument(help="rule name: letters, digits, _ and -")],
        metric: Annotated[str, typer.Option(help=f"one of: {', '.join(METRICS)}")],
        threshold: Annotated[str, typer.Option(
            help="value the metric is compared to, in its unit; percentages "
                 f"({', '.join(sorted(PERCENT_METRICS))}) as 20% (a bare number <= 1 is "
                 "refused: write 20% or 0.2%)")] = "0",
        comparison: Annotated[str, typer.Option(help="> >= < <=")] = ">",
        scope: Annotated[str, typer.Option(help="all, provider:X, model:X, user:X, dialect:X "
                                                "(X may be a glob; quota_used_pct: all or "
                                                "user:X)")] = "all",
        window: Annotated[str, typer.Option(help="sliding window, e.g. 5m")] = "5m",
        severity: Annotated[str, typer.Option(help="info, warning or critical")] = "warning",
        enabled: Annotated[bool, typer.Option("--enabled/--disabled")] = True,
        cooldown: Annotated[str, typer.Option(help="min time between notifications")] = "10m",
        remind: Annotated[bool, typer.Option("--remind/--no-remind",
                                             help="re-notify every cooldown while firing")] = True,
        channel: Annotated[list[str] | None, typer.Option(
            help="webhook, repeatable: [json|slack|feishu|dingtalk=]URL or a JSON object "
                 '{"url","format","secret","timeout_s","retries","name"}; URL may be env:NAME'
        )] = None,
        minutes: Annotated[float, typer.Option(help="no_traffic: minutes of silence")] = 0.0,
        min_samples: Annotated[int, typer.Option(help="error_rate/percentiles: min samples")] = 1,
        description: Annotated[str, typer.Option(help="free text sent with notifications")] = "",
        replace: Annotated[bool, typer.Option("--replace", help="overwrite a rule")] = False,
        home: HomeOpt = None,
        nats_url: UrlOpt = None,
    ) -> None:
        """Add (or with --replace, change) a rule. Running workers pick it up at once."""
        try:
            rule = alert_rules.build_rule(
                name, metric, threshold=threshold, comparison=comparison, scope=scope,
                window=window, severity=severity, enabled=enabled, cooldown=cooldown,
                remind=remind, channels=channel, minutes=minutes, min_samples=min_samples,
                description=description)
        except alert_rules.RuleError as exc:
            raise _fail(str(exc), 2) from None

        async def put(nc: NATS) -> None:
            try:
                await alert_rules.put_rule(nc, _admin_log(nc, home), rule, replace=replace)
            except alert_rules.RuleExistsError as exc:
                raise _fail(str(exc)) from None

        _run(home, nats_url, put)
        console.print(f"rule [bold]{name}[/bold]: {_condition(rule)} ({rule.scope}), "
                      f"{len(rule.channels)} channel(s)")

    @alerts.command("list")
    def list_(
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
        home: HomeOpt = None,
        nats_url: UrlOpt = None,
    ) -> None:
        """List the rules and whether they are firing."""

        async def load(nc: NATS) -> tuple[list[Rule], dict[str, AlertState]]:
            return await _load_rules(nc), await _load_states(nc)

        rules, states = _run(home, nats_url, load)
        if as_json:
            out = [{**msgspec.to_builtins(r), "state": msgspec.to_builtins(states[r.name])
                    if r.name in states else None} for r in rules]
            print(msgspec.json.encode(out).decode())
            return
        if not rules:
            console.print("no alert rules (add one with: codeswitch alerts add NAME --metric ...)")
            return
        table = Table("name", "condition", "scope", "severity", "enabled", "channels", "state")
        for r in rules:
            st = states.get(r.name)
            state = f"[red]FIRING[/red] since {_when(st.fired_at)}" if st and st.firing else "ok"
            table.add_row(r.name, _condition(r), r.scope, r.severity, "yes" if r.enabled else "no",
                          ", ".join(c.label for c in r.channels) or "-", state)
        console.print(table)

    @alerts.command("remove")
    def remove(name: str, home: HomeOpt = None, nats_url: UrlOpt = None) -> None:
        """Remove a rule (a firing alert of it resolves)."""

        async def delete(nc: NATS) -> bool:
            return await alert_rules.remove_rule(nc, _admin_log(nc, home), name)

        if not _run(home, nats_url, delete):
            raise _fail(f"no rule named {name}")
        console.print(f"removed rule {name}")

    @alerts.command("test")
    def test(name: str, home: HomeOpt = None, nats_url: UrlOpt = None) -> None:
        """Send a test notification through the rule's channels."""

        async def send(nc: NATS) -> list[tuple[str, bool, str]]:
            try:
                return await alert_rules.send_test(nc, _admin_log(nc, home), name)
            except alert_rules.RuleError as exc:
                raise _fail(str(exc)) from None

        results = _run(home, nats_url, send)
        for label, ok, detail in results:
            verdict = "[green]sent[/green]" if ok else "[red]failed[/red]"
            console.print(f"{verdict} {label}: {detail}")
        if not all(ok for _, ok, _ in results):
            raise typer.Exit(1)

    @alerts.command("history")
    def history(
        since: Annotated[str | None, typer.Option(help="1h (ago), ISO time, unix s")] = None,
        until: Annotated[str | None, typer.Option(help="1h (ago), ISO time, unix s")] = None,
        rule: Annotated[str | None, typer.Option(help="only this rule")] = None,
        limit: Annotated[int, typer.Option(help="at most this many (the latest)")] = 200,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
        home: HomeOpt = None,
        nats_url: UrlOpt = None,
    ) -> None:
        """Alerts fired, resolved and failed deliveries, oldest first."""
        t0 = parse_time(since) if since else None
        t1 = parse_time(until) if until else None

        async def fetch(nc: NATS) -> tuple[str, list[dict[str, Any]]]:
            rows = await _ledger_history(nc, t0, t1, rule, limit)
            if rows is not None:
                return "ledger", rows
            return "event log", await _stream_history(nc, t0, t1, rule, limit)

        source, rows = _run(home, nats_url, fetch)
        if as_json:
            print(msgspec.json.encode({"source": source, "items": rows}).decode())
            return
        table = Table("time (UTC)", "event", "rule", "severity", "value", "message",
                      title=f"alert history (source: {source})")
        for row in rows:
            kind = str(row.get("type") or row.get("kind") or "").removeprefix("Alert")
            value = row.get("value")
            table.add_row(_when(float(row.get("ts", 0))), kind, str(row.get("rule", "")),
                          str(row.get("severity") or "-"),
                          "" if value is None else f"{value:.6g}",
                          str(row.get("message") or row.get("error") or ""))
        console.print(table)


async def _load_rules(nc: NATS) -> list[Rule]:
    kv = await _kv(nc, names.RULES_BUCKET)
    try:
        keys = await kv.keys()
    except NoKeysError:
        return []
    rules = []
    for key in sorted(keys):
        try:
            entry = await kv.get(key)
            rules.append(msgspec.json.decode(entry.value or b"", type=Rule))
        except (KeyNotFoundError, msgspec.DecodeError):
            continue
    return rules


async def _load_states(nc: NATS) -> dict[str, AlertState]:
    kv = await _kv(nc, names.ALERT_STATE_BUCKET)
    try:
        keys = await kv.keys()
    except NoKeysError:
        return {}
    states = {}
    for key in keys:
        if key.startswith("sent."):
            continue
        try:
            states[key] = msgspec.json.decode((await kv.get(key)).value or b"", type=AlertState)
        except (KeyNotFoundError, msgspec.DecodeError):
            continue
    return states


async def _ledger_history(
    nc: NATS, since: float | None, until: float | None, rule: str | None, limit: int
) -> list[dict[str, Any]] | None:
    query = {"since": since, "until": until, "rule": rule, "limit": limit}
    try:
        reply = await nc.request(LEDGER_HISTORY_SUBJECT, msgspec.json.encode(query), timeout=2.0)
        data = decode_reply(reply.data, reply.headers)
    except (nats.errors.NoRespondersError, TimeoutError, msgspec.DecodeError):
        return None
    if isinstance(data, dict):  # the ledger answers {"ok": true, "result": [...]}, newest first
        if data.get("ok") is False:
            console.print(f"[yellow]ledger: {data.get('error')}; reading the event log[/yellow]")
            return None
        data = data.get("result", data.get("items", data.get("rows")))
    if not isinstance(data, list):
        return None
    rows = [row for row in data if isinstance(row, dict)]
    return sorted(rows, key=lambda row: float(row.get("ts") or 0))


async def _stream_history(
    nc: NATS, since: float | None, until: float | None, rule: str | None, limit: int
) -> list[dict[str, Any]]:
    js = nc.jetstream()
    config = js_api.ConsumerConfig(
        ack_policy=js_api.AckPolicy.NONE, inactive_threshold=10.0, mem_storage=True,
        filter_subjects=["alert.>"],
    )
    if since is not None:
        config.deliver_policy = js_api.DeliverPolicy.BY_START_TIME
        config.opt_start_time = datetime.fromtimestamp(since - 5, UTC)  # event ts vs store time
    try:
        sub = await js.pull_subscribe("", stream=names.EVENTS_STREAM, config=config)
    except nats.js.errors.NotFoundError:  # no event log yet: no history
        return []
    rows: list[dict[str, Any]] = []
    severity_of: dict[str, str] = {}  # alert id -> severity, for rows that do not carry one
    try:
        while True:
            try:
                msgs = await sub.fetch(500, timeout=0.5)
            except TimeoutError:
                break
            for msg in msgs:
                try:
                    ev = decode_event(msg.data)
                except msgspec.DecodeError:
                    continue
                if not isinstance(ev, AlertFired | AlertResolved | AlertNotificationFailed):
                    continue
                # a resolve written before AlertResolved carried it, a delivery failure: the
                # severity of the alert it refers to (when that is in the part read)
                severity: str | None
                if isinstance(ev, AlertNotificationFailed):
                    severity = severity_of.get(ev.alert_id)
                else:
                    if isinstance(ev, AlertFired):
                        severity = ev.severity
                    else:
                        severity = ev.severity or severity_of.get(ev.fired_id or "")
                    if severity is not None:
                        severity_of[ev.id] = severity
                if (since is not None and ev.ts < since) or (until is not None and ev.ts > until):
                    continue
                if rule is not None and ev.rule != rule:
                    continue
                rows.append({**msgspec.to_builtins(ev), "severity": severity})
            if msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return rows[-limit:] if limit > 0 else rows
