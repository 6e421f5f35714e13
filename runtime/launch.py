"""Run one or more parts in this process: ``python -m runtime.launch edge,router --port 18100``.

Every part the supervisor starts is this module, not the CLI: a part process imports the
modules of the parts it runs and ``runtime``, never typer, rich or the CLI's command modules
(a ``codeswitch`` CLI process weighs ~30 MB more). The parts are named here as module paths
and imported by name, so ``runtime`` has no import arrow into a part:

    edge     edge.main          the HTTP edge (uvicorn)
    router   workers.router     takes requests from the work queue, calls upstreams
    ledger   workers.ledger     the event log -> DuckDB projection, answers queries
    quota    workers.quota      spend per user and key -> KV cs_quota, QuotaUsed facts
    alerts   workers.alerts     alert rules, notifications
    sync     workers.sync       a joined device's registration with its hub

Each part module has ``async def run(nats_url, home, stop, **options)``. Several parts in one
process share one event loop (``--single-process`` runs all five). They stop in the order
above: the edge first (it lets the requests in flight finish, and they need the router), the
router next (its facts go out before the ledger stops), then the ledger and the alerts. A part
that fails ends the process with status 1: the supervisor restarts it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from runtime.process import PART_ENV

__all__ = ["PARTS", "label_for", "main", "run_parts", "title_for"]

# stop order = the order here
PARTS: dict[str, str] = {
    "edge": "edge.main",
    "router": "workers.router.service",
    "ledger": "workers.ledger.service",
    "quota": "workers.quota.service",
    "alerts": "workers.alerts.service",
    "sync": "workers.sync.service",  # only on a device joined to a hub (up --join)
}
# parts that run on a thread and event loop of their own when they share a process: the quota
# worker shares the `workers` process with the ledger and the alerts, but the edges wait on
# it. On the shared loop a ledger batch (projection, DuckDB hand-off) held every fact the
# quota worker had to fold behind it (bench/bench_quota.py: p50 0.74 s at 200 facts/s); on
# its own loop it waits for the GIL at most a switch interval (5 ms) at a time
OWN_THREAD = frozenset({"quota"})

log = logging.getLogger("codeswitch.launch")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runtime.launch",
                                     description="Run codeswitch parts in one process.")
    parser.add_argument("parts", help=f"comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--nats-url", default=None)
    parser.add_argument("--nats-creds", default=os.environ.get("CODESWITCH_NATS_CREDS"))
    parser.add_argument("--home", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18100)
    parser.add_argument("--grace", type=float, default=30.0)
    args = parser.parse_args(argv)
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PARTS]
    if unknown or not wanted:
        parser.error(f"unknown part(s) {', '.join(unknown) or '(none)'}: "
                     f"choose from {', '.join(PARTS)}")
    args.parts = [p for p in PARTS if p in wanted]
    return args


def label_for(parts: list[str]) -> str:
    """The supervisor's name for a process running ``parts``: ``edge``, ``router``,
    ``workers`` (the ledger, the quota worker and the alerts), ``gateway`` (all in one)."""
    if "edge" in parts and len(parts) > 1:
        return "gateway"
    if {"ledger", "alerts"} <= set(parts) <= {"ledger", "quota", "alerts", "sync"}:
        return "workers"
    return "+".join(parts)


def title_for(parts: list[str]) -> tuple[str, str]:
    """What ``ps`` shows: ``codeswitch edge``, ``codeswitch worker router`` (``... (router-2)``
    when the supervisor runs several), ``codeswitch worker ledger+quota+alerts``,
    ``codeswitch gateway edge+router+ledger+quota+alerts``; and the short name ``top`` shows
    (``cs-router-2``)."""
    joined = "+".join(parts)
    label = label_for(parts)
    command = "edge" if parts == ["edge"] else (
        f"gateway {joined}" if label == "gateway" else f"worker {joined}")
    part = os.environ.get(PART_ENV) or label
    return f"codeswitch {command}" + (f" ({part})" if part != label else ""), f"cs-{part}"


async def _on_own_thread(name: str, run: Any, stop: asyncio.Event) -> None:
    """``run(stop)`` on a thread with its own event loop, awaited from the calling loop;
    ``stop`` (of the calling loop) is relayed to the thread's loop."""
    caller = asyncio.get_running_loop()
    done: asyncio.Future[None] = caller.create_future()
    inner: dict[str, Any] = {}

    def finish(exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)

    async def main() -> None:
        inner["loop"], inner["stop"] = asyncio.get_running_loop(), asyncio.Event()
        if stop.is_set():
            inner["stop"].set()
        await run(inner["stop"])

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the calling loop
            caller.call_soon_threadsafe(finish, exc)
        else:
            caller.call_soon_threadsafe(finish, None)

    threading.Thread(target=target, name=f"part-{name}", daemon=True).start()

    async def relay() -> None:
        await stop.wait()
        while "loop" not in inner and not done.done():
            await asyncio.sleep(0.01)
        if "loop" in inner:
            inner["loop"].call_soon_threadsafe(inner["stop"].set)

    relayer = asyncio.create_task(relay())
    try:
        await done
    finally:
        relayer.cancel()


async def run_parts(parts: list[str], nats_url: str, home: Path,
                    options: dict[str, dict[str, Any]] | None = None) -> int:
    """Run ``parts`` until SIGINT/SIGTERM or until one of them ends; stop them in order.
    Returns the exit status: 0 after a signal, 1 when a part failed."""
    options = options or {}
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    stops = {name: asyncio.Event() for name in parts}
    modules = {name: importlib.import_module(PARTS[name]) for name in parts}

    def on_signal(signum: int, frame: Any) -> None:
        # signal.signal, not loop.add_signal_handler: uvicorn swaps handlers while it serves
        # and raises the signal again for the one that was there before (this one) once the
        # edge has let its requests finish. A second Ctrl-C forces the exit, as in uvicorn.
        if signalled.is_set() and signum == signal.SIGINT:
            os._exit(1)
        loop.call_soon_threadsafe(signalled.set)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    def start(name: str) -> Any:
        run = modules[name].run
        if name in OWN_THREAD and len(parts) > 1:
            return _on_own_thread(name, lambda stop: run(nats_url, home, stop,
                                                         **options.get(name, {})), stops[name])
        return run(nats_url, home, stops[name], **options.get(name, {}))

    tasks = {name: asyncio.create_task(start(name), name=name) for name in parts}
    # malloc_trim once the process is quiet after a burst (runtime/memory.py)
    from runtime import memory

    trimmer = memory.start()
    waiter = asyncio.create_task(signalled.wait())
    done, _ = await asyncio.wait([*tasks.values(), waiter], return_when=asyncio.FIRST_COMPLETED)
    status = 0
    for name, task in tasks.items():
        # a part returns when it was told to stop (the edge: uvicorn took the signal);
        # one that raised crashed
        exc = task.exception() if task in done and not task.cancelled() else None
        if exc is not None:
            status = 1
            if not isinstance(exc, SystemExit):
                log.error("part %s failed", name, exc_info=exc)
    # in order: each part's requests in flight finish before the parts they need stop
    for name in parts:
        stops[name].set()
        with contextlib.suppress(Exception, asyncio.CancelledError, SystemExit):
            await tasks[name]
    waiter.cancel()
    if trimmer is not None:
        trimmer.cancel()
    return status


def main(argv: list[str] | None = None) -> None:
    from runtime.process import private_umask, set_title, skip_nats_websocket

    private_umask()
    skip_nats_websocket()
    from runtime.memory import limit_arenas

    limit_arenas()  # before any thread: at most 2 malloc arenas (runtime/memory.py)
    args = _parse(argv)
    logging.basicConfig(level=os.environ.get("CODESWITCH_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_title(*title_for(args.parts))

    from runtime import secrets
    from runtime.home import home_dir, nats_url_for, use_nats_credentials

    home = home_dir(args.home)
    url = nats_url_for(home, args.nats_url)
    if args.nats_creds:
        use_nats_credentials(url, creds_file=args.nats_creds)
    secrets.use_home(home)  # the router decrypts provider keys with <home>/secret.key
    options: dict[str, dict[str, Any]] = {
        "edge": {"host": args.host, "port": args.port, "grace": args.grace}}
    try:  # every part: the workers read 3 facts per request (asyncio's loop: ~+20 % CPU there)
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    sys.exit(asyncio.run(run_parts(args.parts, url, home, options)))


if __name__ == "__main__":
    main()
