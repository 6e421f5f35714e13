"""Webhook notifications: payload shapes per channel format, and delivery with timeouts and
retry with exponential backoff.

Payload shapes (``Channel.format``):
    json      the Notification as a flat JSON object (``version`` 1), for any receiver
    slack     Slack incoming webhook: ``text`` plus one coloured attachment with fields
    feishu    Feishu/Lark custom bot: ``msg_type: text`` (+ ``timestamp``/``sign`` with a secret)
    dingtalk  DingTalk custom robot: ``msgtype: markdown`` (signed URL with a secret)

Every request carries ``X-Codeswitch-Alert-Id`` so that a receiver can drop a duplicate. The
renderers are pure; only ``Notifier.deliver`` does I/O, and it never raises: the outcome is a
``Delivery`` the service turns into an AlertNotificationFailed fact when it failed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import urllib.parse
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from runtime.secrets import resolve_secret
from schemas.events import AlertFired, AlertResolved
from workers.alerts.rules import Channel, Rule, format_value

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Delivery",
    "Notification",
    "Notifier",
    "dingtalk_url",
    "feishu_sign",
    "notification_of",
    "probe_notification",
    "render",
]

_COLORS = {"critical": "#d00000", "warning": "#f2a900", "info": "#439fe0", "resolved": "#2eb886"}


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """What a webhook says about one alert fact."""

    kind: str  # fired | reminder | resolved | test
    alert_id: str
    rule: str
    metric: str
    scope: str
    value: float
    severity: str
    message: str
    ts: float
    threshold: float | None = None
    comparison: str | None = None
    window_s: float | None = None
    fired_id: str | None = None
    description: str = ""

    @property
    def title(self) -> str:
        label = {"fired": "FIRING", "reminder": "STILL FIRING", "resolved": "RESOLVED"}
        head = label.get(self.kind, "TEST")
        return f"[{head}] {self.rule} ({self.severity})"


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    attempts: int
    status: int = 0
    error: str = ""


def notification_of(event: AlertFired | AlertResolved, rule: Rule | None) -> Notification:
    description = rule.description if rule is not None else ""
    if isinstance(event, AlertFired):
        return Notification(
            kind="reminder" if event.repeat_of else "fired",
            alert_id=event.id,
            rule=event.rule,
            metric=event.metric,
            scope=event.scope,
            value=event.value,
            severity=event.severity,
            message=event.message,
            ts=event.ts,
            threshold=event.threshold,
            comparison=event.comparison,
            window_s=event.window_s,
            fired_id=event.repeat_of or event.id,
            description=description,
        )
    return Notification(
        kind="resolved",
        alert_id=event.id,
        rule=event.rule,
        metric=event.metric,
        scope=event.scope,
        value=event.value,
        severity=event.severity or (rule.severity if rule is not None else "info"),
        message=event.message,
        ts=event.ts,
        fired_id=event.fired_id,
        description=description,
    )


def probe_notification(rule: Rule, now: float | None = None) -> Notification:
    """What ``codeswitch alerts test`` sends: the rule as if it fired, marked as a test."""
    return Notification(
        kind="test",
        alert_id=f"test-{int((now or time.time()) * 1000):x}",
        rule=rule.name,
        metric=rule.metric,
        scope=rule.scope,
        value=rule.effective_threshold,
        severity=rule.severity,
        message=f"test notification for rule {rule.name} (nothing is wrong)",
        ts=now or time.time(),
        threshold=rule.effective_threshold,
        comparison=rule.effective_comparison,
        window_s=rule.span,
        description=rule.description,
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _lines(n: Notification) -> list[tuple[str, str]]:
    rows = [("Metric", n.metric), ("Value", format_value(n.metric, n.value)), ("Scope", n.scope)]
    if n.threshold is not None and n.kind != "resolved":
        rows.append(("Threshold", f"{n.comparison} {format_value(n.metric, n.threshold)}"))
    if n.window_s:
        rows.append(("Window", f"{n.window_s:g}s"))
    rows.append(("Time", _iso(n.ts)))
    rows.append(("Alert id", n.alert_id))
    return rows


def _text(n: Notification) -> str:
    body = "\n".join(f"{k}: {v}" for k, v in _lines(n))
    extra = f"\n{n.description}" if n.description else ""
    return f"{n.title}\n{n.message}{extra}\n{body}"


def render(fmt: str, n: Notification, *, secret: str = "", now: float | None = None) -> Any:
    """The JSON body for one channel format."""
    if fmt == "slack":
        color = _COLORS["resolved"] if n.kind == "resolved" else _COLORS.get(n.severity, "#888")
        return {
            "text": f"{n.title}: {n.message}",
            "attachments": [
                {
                    "color": color,
                    "title": n.title,
                    "text": n.description or n.message,
                    "fields": [{"title": k, "value": v, "short": True} for k, v in _lines(n)],
                    "footer": "codeswitch alerts",
                    "ts": int(n.ts),
                }
            ],
        }
    if fmt == "feishu":
        body: dict[str, Any] = {"msg_type": "text", "content": {"text": _text(n)}}
        if secret:
            ts = str(int(now if now is not None else time.time()))
            body["timestamp"] = ts
            body["sign"] = feishu_sign(secret, ts)
        return body
    if fmt == "dingtalk":
        md = "\n".join(f"- **{k}**: {v}" for k, v in _lines(n))
        extra = f"\n\n{n.description}" if n.description else ""
        return {
            "msgtype": "markdown",
            "markdown": {"title": n.title, "text": f"### {n.title}\n\n{n.message}{extra}\n\n{md}"},
        }
    data = msgspec.to_builtins(n)
    data["version"] = 1
    data["time"] = _iso(n.ts)
    return data


def feishu_sign(secret: str, ts: str) -> str:
    """Feishu custom bot signature: HMAC-SHA256 keyed with "<ts>\\n<secret>" over nothing."""
    digest = hmac.new(f"{ts}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def dingtalk_url(url: str, secret: str, ts_ms: int) -> str:
    """DingTalk signed URL: HMAC-SHA256(secret, "<ms>\\n<secret>") in the query."""
    digest = hmac.new(secret.encode(), f"{ts_ms}\n{secret}".encode(), hashlib.sha256).digest()
    sign = urllib.parse.quote_plus(base64.b64encode(digest).decode())
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}timestamp={ts_ms}&sign={sign}"


def _body_error(fmt: str, response: httpx.Response) -> str:
    """Feishu and DingTalk answer 200 with an error code in the body."""
    if fmt not in ("feishu", "dingtalk"):
        return ""
    try:
        data = response.json()
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    code = data.get("code", data.get("errcode", data.get("StatusCode", 0)))
    if code in (0, None):
        return ""
    return f"{fmt} error {code}: {data.get('msg') or data.get('errmsg') or ''}".strip()


class Notifier:
    """Sends notifications to channels. Retries transport errors, timeouts, 408, 429, 5xx and
    Feishu/DingTalk body errors, waiting ``backoff_base * 2**n`` (capped) between attempts."""

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
    ) -> None:
        # httpx is imported with the first notification: it pulls in rich and pygments (its
        # own CLI), ~8 MB that the alerts' process would otherwise hold for ever
        self._client = client
        self._owns_client = client is None
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            import sys

            # httpx's optional CLI (httpx._main) imports rich, pygments and click
            sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
            import httpx

            self._client = httpx.AsyncClient(follow_redirects=False)
        return self._client

    async def deliver(self, channel: Channel, n: Notification) -> Delivery:
        import httpx

        client = self._http()
        url = resolve_secret(channel.url)
        secret = resolve_secret(channel.secret) if channel.secret else ""
        if not url:
            return Delivery(ok=False, attempts=0, error=f"{channel.url} is not set")
        headers = {"User-Agent": "codeswitch-alerts/1", "X-Codeswitch-Alert-Id": n.alert_id}
        error, status, attempt = "", 0, 0
        for attempt in range(1, channel.retries + 2):
            now = time.time()
            body = render(channel.format, n, secret=secret, now=now)
            target = url
            if channel.format == "dingtalk" and secret:
                target = dingtalk_url(url, secret, int(now * 1000))
            retry = True
            try:
                response = await client.post(
                    target, json=body, headers=headers, timeout=channel.timeout_s
                )
                status = response.status_code
                if response.is_success:
                    error = _body_error(channel.format, response)
                    if not error:
                        return Delivery(ok=True, attempts=attempt, status=status)
                else:
                    error = f"HTTP {status}"
                    retry = status in (408, 429) or status >= 500
            except httpx.TimeoutException:
                error = f"timeout after {channel.timeout_s:g}s"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}".replace(url, channel.label)
            if not retry or attempt > channel.retries:
                break
            await asyncio.sleep(min(self.backoff_base * 2 ** (attempt - 1), self.backoff_max))
        return Delivery(ok=False, attempts=attempt, status=status, error=error)
