"""Alert rules' writes, shared by ``codeswitch alerts add|remove|test`` and the console: parse
what a person types (durations, thresholds with ``%``, channels), put and remove a rule in KV
(``cs_rules``) and send a rule's test notification, each recorded as an admin fact. Typer-free
(the console runs in the edge): errors are ``RuleError`` with the message a person reads.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from runtime import bus, names
from workers.alerts.rules import CHANNEL_FORMATS, METRICS, PERCENT_METRICS, Channel, Rule

__all__ = ["RuleError", "RuleExistsError", "build_rule", "get_rule", "parse_channel",
           "parse_duration", "parse_threshold", "put_rule", "remove_rule", "rules_kv",
           "send_test"]

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class RuleError(ValueError):
    """Bad input for a rule, or no such rule: the message says what is wrong, ``field`` which
    of the rule's fields (``threshold``, ``window``, ``channels``...; None: not one)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# Rule's own checks (workers/alerts/rules.py) start with the field they refuse
_FIELD_OF = (("rule name", "name"), ("metric", "metric"), ("comparison", "comparison"),
             ("scope", "scope"), ("quota_used_pct scope", "scope"), ("severity", "severity"),
             ("window_s", "window"), ("no_traffic", "minutes"), ("cooldown_s", "cooldown"),
             ("threshold", "threshold"))


class RuleExistsError(RuleError):
    pass


def parse_duration(text: str) -> float:
    """"90", "90s", "5m", "1.5h", "2d" -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if not m:
        raise RuleError(f"{text!r} is not a duration like 90s, 5m, 1h, 2d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_threshold(metric: str, text: str, flag: str = "--threshold ") -> float:
    """A threshold in the metric's unit. A percentage metric (``PERCENT_METRICS``) takes
    ``20%``, ``20 %`` or a bare number above 1 (``20``: 20 %); a bare number in (0, 1] is
    refused, since ``0.2`` may mean 20 % or 0.2 %. Other metrics take plain numbers only.
    ``flag`` is how the messages name the option (the console's form: none)."""
    raw = text.strip()
    number, percent = raw, raw.endswith("%")
    if percent:
        number = raw[:-1].rstrip()
    try:
        value = float(number)
    except ValueError:
        raise RuleError(f"threshold {text!r} is not a number") from None
    if not math.isfinite(value):
        raise RuleError(f"threshold {text!r} is not a finite number")
    if metric not in PERCENT_METRICS:
        if percent:
            unit = METRICS.get(metric, "a plain number")
            raise RuleError(f"{metric} is not a percentage ({unit}): write a plain number, "
                            f"e.g. {flag}{value:g}")
        return value
    if value < 0:
        raise RuleError(f"{metric} is a percentage: {text!r} is below 0 %")
    if not percent and 0 < value <= 1:
        raise RuleError(
            f"{metric} is a percentage: did you mean {value * 100:g}%? Write {flag}"
            f"{value * 100:g}% (or {flag}{value:g}% for {value:g} %); a bare {raw} is "
            "refused because it could mean either")
    return value


def parse_channel(spec: str) -> Channel:
    """``[FORMAT=]URL`` or a JSON object with the Channel fields."""
    try:
        if spec.lstrip().startswith("{"):
            return msgspec.json.decode(spec.encode(), type=Channel)
        fmt, sep, url = spec.partition("=")
        if sep and fmt in CHANNEL_FORMATS:
            return Channel(url=url, format=fmt)
        return Channel(url=spec)
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
        raise RuleError(f"channel {spec!r}: {exc}") from None


def build_rule(name: str, metric: str, *, threshold: str = "0", comparison: str = ">",
               scope: str = "all", window: str = "5m", severity: str = "warning",
               enabled: bool = True, cooldown: str = "10m", remind: bool = True,
               channels: list[str] | None = None, minutes: float = 0.0, min_samples: int = 1,
               description: str = "", flag: str = "--threshold ") -> Rule:
    """A rule from what a person typed (``alerts add``'s options, the console's form). A
    ``RuleError`` names the field it refuses."""
    def part(field: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except RuleError as exc:
            raise RuleError(str(exc), field) from None

    try:
        limit = parse_threshold(metric, threshold, flag) if metric in METRICS else 0.0
    except RuleError as exc:
        raise RuleError(f"invalid {flag.strip() or 'threshold'}: {exc}", "threshold") from None
    window_s = part("window", parse_duration, window)
    cooldown_s = part("cooldown", parse_duration, cooldown)
    parsed = [part("channels", parse_channel, c) for c in channels or []]
    try:
        return Rule(name=name, metric=metric, threshold=limit, comparison=comparison,
                    scope=scope, window_s=window_s, severity=severity, enabled=enabled,
                    cooldown_s=cooldown_s, remind=remind, channels=parsed, minutes=minutes,
                    min_samples=min_samples, description=description)
    except ValueError as exc:
        text = str(exc)
        field = next((f for start, f in _FIELD_OF if text.startswith(start)), None)
        raise RuleError(f"invalid rule: {text}", field) from None


async def rules_kv(nc: NATS) -> Any:
    js = nc.jetstream()
    try:
        return await js.key_value(names.RULES_BUCKET)
    except BucketNotFoundError:
        await bus.ensure_all(js)
        return await js.key_value(names.RULES_BUCKET)


async def get_rule(nc: NATS, name: str) -> Rule | None:
    kv = await rules_kv(nc)
    try:
        entry = await kv.get(name)
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    try:
        return msgspec.json.decode(entry.value, type=Rule)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def put_rule(nc: NATS, audit: Any, rule: Rule, *, replace: bool) -> str:
    """Store ``rule``; without ``replace`` an existing rule of that name is refused
    (``RuleExistsError``). Records ``rule.added`` or ``rule.updated``; returns which."""
    kv = await rules_kv(nc)
    data = msgspec.json.encode(rule)
    action = "rule.added"
    if replace:
        try:
            existed = bool((await kv.get(rule.name)).value)
        except KeyNotFoundError:
            existed = False
        await kv.put(rule.name, data)
        action = "rule.updated" if existed else action
    else:
        try:
            await kv.create(rule.name, data)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise RuleExistsError(f"rule {rule.name} exists (use --replace to change it)"
                                  ) from None
    # the channels' URLs can hold tokens: only how many there are
    await audit.record(
        action, f"rule:{rule.name}", metric=rule.metric, threshold=rule.threshold,
        comparison=rule.comparison, scope=rule.scope, window_s=rule.window_s,
        severity=rule.severity, enabled=rule.enabled, channels=len(rule.channels))
    return action


async def remove_rule(nc: NATS, audit: Any, name: str) -> bool:
    """Remove a rule (a firing alert of it resolves); False when there is none."""
    kv = await rules_kv(nc)
    try:
        await kv.get(name)
    except KeyNotFoundError:
        return False
    await kv.delete(name)
    await audit.record("rule.removed", f"rule:{name}")
    return True


async def send_test(nc: NATS, audit: Any, name: str) -> list[tuple[str, bool, str]]:
    """Send the rule's test notification through each of its channels: (label, sent, detail)
    per channel. Records ``rule.tested`` (how many channels, how many took it)."""
    from workers.alerts.notify import Notifier, probe_notification

    rule = await get_rule(nc, name)
    if rule is None:
        raise RuleError(f"no rule named {name}")
    if not rule.channels:
        raise RuleError(f"rule {name} has no channels")
    notifier = Notifier(backoff_base=0.5)
    try:
        note = probe_notification(rule)
        results = await asyncio.gather(*(notifier.deliver(c, note) for c in rule.channels))
    finally:
        await notifier.aclose()
    out = [(c.label, r.ok, r.error or f"HTTP {r.status}, {r.attempts} attempt(s)")
           for c, r in zip(rule.channels, results, strict=True)]
    await audit.record("rule.tested", f"rule:{name}", channels=len(out),
                       sent=sum(1 for _, ok, _ in out if ok))
    return out
