"""``codeswitch tail``: the live event log, for users without the nats CLI."""

from __future__ import annotations

import asyncio
import fnmatch
import sys
import time

import msgspec
from rich.console import Console

from runtime import bus
from schemas.events import AttemptFinished, Event, RequestCompleted, decode_event

__all__ = ["follow", "matches", "render_line"]


def matches(event: Event, *, provider: str | None, model: str | None,
            status: str | None) -> bool:
    if not isinstance(event, (RequestCompleted, AttemptFinished)):
        return False
    if provider and event.provider != provider:
        return False
    if model and not fnmatch.fnmatchcase(event.model, model):
        return False
    if status:
        code = event.status
        if status == "error":
            return code >= 400 or code == 0 or bool(event.error_class)
        if status.endswith("xx"):
            return str(code).startswith(status[0])
        return str(code) == status
    return True


def render_line(event: Event) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(event.ts))
    if isinstance(event, RequestCompleted):
        u = event.usage
        tokens = (f"in {u.total_input_tokens} out {u.output_tokens}"
                  + (f" cache_r {u.cache_read_tokens}" if u.cache_read_tokens else "")
                  if u else "no usage")
        color = "green" if event.status < 400 else "red"
        ttfb = f"ttfb {event.ttfb_ms:.0f}ms " if event.ttfb_ms is not None else ""
        err = f" [red]{event.error_class}[/]" if event.error_class else ""
        route = f"route {event.route} " if event.route else ""
        return (f"{when} [{color}]{event.status}[/] {event.dialect:<16} "
                f"{event.model:<28} → {event.provider or '-':<12} {route}"
                f"{'stream ' if event.stream else ''}{ttfb}{event.duration_ms:.0f}ms "
                f"{tokens} [dim]{event.request_id}[/]{err}")
    assert isinstance(event, AttemptFinished)
    via = f" (route {event.route})" if event.route else ""
    return (f"{when}   attempt {event.attempt} {event.provider}{via} {event.outcome} "
            f"status {event.status} {event.error_class or ''} [dim]{event.request_id}[/]")


async def follow(url: str, *, provider: str | None = None, model: str | None = None,
                 status: str | None = None, attempts: bool = False, json_out: bool = False,
                 count: int | None = None, console: Console | None = None) -> None:
    console = console or Console()
    try:
        nc = await bus.connect(url, name="codeswitch-tail", max_reconnect_attempts=-1,
                               connect_timeout=2)
    except Exception:
        raise ConnectionError(f"cannot reach NATS at {url}: is the gateway running?") \
            from None
    done = asyncio.Event()
    seen = 0

    async def on_msg(msg: object) -> None:
        nonlocal seen
        data = msg.data  # type: ignore[attr-defined]
        try:
            event = decode_event(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if not matches(event, provider=provider, model=model, status=status):
            return
        if json_out:
            sys.stdout.write(data.decode() + "\n")
            sys.stdout.flush()
        else:
            console.print(render_line(event), highlight=False)
        seen += 1
        if count is not None and seen >= count:
            done.set()

    await nc.subscribe("llm.response.>", cb=on_msg)
    if attempts:
        await nc.subscribe("llm.attempt.>", cb=on_msg)
    if not json_out:
        console.print(f"[dim]following llm.response.> on {url} (Ctrl-C to stop)[/]")
    try:
        await done.wait()
    finally:
        await nc.drain()
