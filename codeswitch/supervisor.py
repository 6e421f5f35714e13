"""Running the parts. ``codeswitch up`` is a supervisor in the style of uvicorn's
multiprocess supervisor: it starts the embedded nats-server (unless --nats-url), applies the
stream/KV definitions and the config file, then runs each part as its own process (edge,
router, ledger, alerts), and on SIGINT/SIGTERM stops them in order: edge first (no new
requests; in-flight ones finish), then routers (in-flight upstream calls finish within the
grace period), then the projection workers, then nats-server last.

Every part, nats-server included, is supervised: a part that exits is started again after a
backoff (0.1 s, doubling up to 10 s; back to 0.1 s once the part had run ``stable_after``
seconds), and never given up on. Each exit and each restart is a log line and a
``PartChanged`` fact (``gateway.part.<part>.<state>``); five restarts inside a minute is a
crash loop, reported loudly (a log line at ERROR and a ``crash_loop`` fact), and so is the
recovery from it. ``<home>/parts.json`` (0600) describes every part after each change and at
least every ``health.HEARTBEAT_S`` seconds; ``runtime.health.parts_health`` reads it for
``/health``.

nats-server comes back on the same port, with the same store and credentials; the parts
reconnect on their own (``bus.connect`` reconnects forever).

The loop sleeps in ``select`` on a socket written by the signal wake-up fd: SIGCHLD (a part
died), SIGINT and SIGTERM wake it at once. Signal handlers only record the signal; the main
loop does the work.

The supervisor lives as long as the gateway and imports the standard library only (and
``runtime``'s stdlib modules): no nats-py, msgspec or asyncio. What needs NATS runs elsewhere:
the streams, buckets and config are applied by a short-lived ``python -m codeswitch.prepare``
started while the parts' interpreters start; its facts go to the write-ahead outbox
(``runtime/outbox.py``), which the parts publish (so a NATS outage never blocks the loop, and
a fact survives the supervisor's own death).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.health import HEARTBEAT_S, SUPERVISED_ENV, parts_file
from runtime.home import (
    AUTH_ENV,
    CREDS_ENV,
    read_run_file,
    run_file,
    url_has_auth,
    use_nats_credentials,
)
from runtime.natsd import EmbeddedNats, load_or_create_auth
from runtime.outbox import spool_event
from runtime.process import PART_ENV, free_port, pdeathsig_preexec, pid_alive, write_private
from schemas.ids import new_id
from schemas.subjects import part_subject

__all__ = ["Part", "RestartPolicy", "Supervisor", "SupervisorError"]

log = logging.getLogger("codeswitch.supervisor")

EMBEDDED_NATS_PORT = 18122
WORKERS_NICE = 10
NATS_PART = "nats-server"
# "restarts" in facts and parts.json: restarts in the last 10 minutes
RESTARTS_WINDOW_S = 600.0


class SupervisorError(RuntimeError):
    """`codeswitch up` cannot run: the message says why."""


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as sock:
        # as uvicorn binds: TIME_WAIT sockets of a gateway that just stopped do not count, a
        # listening socket still does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SupervisorError(
                f"{host}:{port} is already in use ({exc.strerror}): is another codeswitch "
                "running? Stop it, or pick another port with --port") from None


def _port_bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nats-server binds
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def describe_exit(code: int | None) -> str:
    """"killed by SIGKILL" / "exited with code 1"."""
    if code is None:
        return "could not be started"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class RestartPolicy:
    """When to start a dead part again, and what counts as a crash loop (pure). Plain classes
    here, not dataclasses: this process imports as little as it can (1.5 MB less)."""

    __slots__ = ("backoff_cap", "backoff_start", "loop_restarts", "loop_window", "stable_after")

    def __init__(self, backoff_start: float = 0.1, backoff_cap: float = 10.0,
                 stable_after: float = 10.0, loop_restarts: int = 5,
                 loop_window: float = 60.0) -> None:
        self.backoff_start = backoff_start
        self.backoff_cap = backoff_cap
        # a part that ran this long: the next backoff starts over; a crash loop is over
        self.stable_after = stable_after
        self.loop_restarts = loop_restarts
        self.loop_window = loop_window

    @classmethod
    def from_env(cls) -> RestartPolicy:
        raw = os.environ.get("CODESWITCH_RESTART_STABLE_S")
        try:
            return cls(stable_after=float(raw)) if raw else cls()
        except ValueError:
            return cls()

    def next_backoff(self, previous: float, ran_for: float) -> float:
        if previous <= 0 or ran_for >= self.stable_after:
            return self.backoff_start
        return min(previous * 2, self.backoff_cap)

    def crash_looping(self, restart_times: list[float], now: float) -> bool:
        recent = sum(1 for t in restart_times if now - t < self.loop_window)
        return recent >= self.loop_restarts


class Part:
    def __init__(self, name: str, argv: list[str], order: int, nice: int = 0,
                 launcher: Callable[[], subprocess.Popen[bytes]] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.order = order  # stop order: lower stops first
        # CPU priority below the request path (nice): the workers, which answer no client
        self.nice = nice
        # starts the process instead of argv (nats-server: EmbeddedNats.launch)
        self.launcher = launcher
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # monotonic
        self.started_wall = 0.0
        self.restart_times: list[float] = []  # monotonic, last 10 minutes
        self.restarts_total = 0
        self.backoff = 0.0  # the wait before the pending (or last) restart
        self.next_start: float | None = None  # monotonic, while dead
        self.last_exit: int | None = None
        self.last_exit_at: float | None = None
        self.crash_loop = False

    def start(self, env: dict[str, str]) -> None:
        if self.launcher is not None:
            self.proc = self.launcher()
        else:
            self.proc = subprocess.Popen(
                self.argv, env={**env, PART_ENV: self.name}, start_new_session=True,
                preexec_fn=pdeathsig_preexec(nice=self.nice), stdin=subprocess.DEVNULL,
            )
        self.started_at = time.monotonic()
        self.started_wall = time.time()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def recent_restarts(self, now: float, window: float = RESTARTS_WINDOW_S) -> int:
        return sum(1 for t in self.restart_times if now - t < window)

    def status(self, now: float) -> dict[str, Any]:
        return {"pid": self.pid, "alive": self.alive, "restarts": self.restarts_total,
                "restarts_10m": self.recent_restarts(now), "last_exit": self.last_exit,
                "last_exit_at": self.last_exit_at, "crash_loop": self.crash_loop,
                "started_at": self.started_wall,
                "next_start_in": (round(max(0.0, self.next_start - now), 3)
                                  if self.next_start is not None else None)}


class OutboxFacts:
    """The supervisor's facts (``PartChanged``, as their JSON fields), each written to
    ``<home>/outbox`` for the parts to publish (``runtime/outbox.py``). Never blocks on NATS;
    a fact that cannot be written is a log line."""

    def __init__(self, home: Path) -> None:
        self.dir = home / "outbox"

    def emit(self, subject: str, event: dict[str, Any]) -> None:
        try:
            spool_event(self.dir, "supervisor", subject, event)
        except (OSError, ValueError) as exc:
            log.error("supervisor fact %s not written to %s: %s", subject, self.dir, exc)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _nats_servers_on(conf: Path) -> list[int]:
    """nats-server processes started with this config (a previous gateway's, on our store)."""
    found = []
    want = str(conf).encode()
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            argv = _cmdline(int(entry)).split(b"\0")
            if argv[0].endswith(b"nats-server") and want in argv:
                found.append(int(entry))
    return found


class Supervisor:
    def __init__(self, *, home: Path, host: str, port: int, nats_url: str | None,
                 routers: int = 1, single_process: bool = False, grace: float = 30.0,
                 on_ready: Callable[[dict[str, Any]], None] | None = None,
                 apply: dict[str, Any] | None = None,
                 nats_creds: str | None = None, policy: RestartPolicy | None = None,
                 join: str | None = None,
                 extra_parts: list[tuple[str, list[str]]] | None = None) -> None:
        self.home = home
        self.join = join  # a hub's leaf URL: this device syncs through it (runtime/sync.py)
        self.host = host
        self.port = port
        self.external_nats = nats_url
        self.nats_creds = nats_creds
        self.routers = routers
        self.single_process = single_process
        self.grace = grace
        self.on_ready = on_ready
        # the config to apply (codeswitch/prepare.py: {"config", "port", "demo_port"}); None:
        # the streams and buckets only
        self.apply = apply
        self.policy = policy or RestartPolicy.from_env()
        # more supervised processes (name, argv): the demo provider of `up --demo`
        self.extra_parts = extra_parts or []
        self.nats: EmbeddedNats | None = None
        self.parts: list[Part] = []
        self.facts: OutboxFacts | None = None
        self.info: dict[str, Any] = {}
        self._signals: list[int] = []
        self._stopping = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._hostname = socket.gethostname()
        self._nats_wait = True  # a (re)start of nats-server waits until it listens
        self._join_pending = False  # joined, but the hub has not answered here yet
        self._next_join_try = 0.0

    def handle_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    @property
    def nats_credentials_file(self) -> Path:
        return self.home / "nats" / "credentials.json"

    # -- start -------------------------------------------------------------------------------
    def _clean_stale(self) -> None:
        """A supervisor killed with SIGKILL leaves its run file, and its children finishing
        (they got SIGTERM from the kernel). Refuse when that supervisor still runs; otherwise
        wait a little for its processes, stop a nats-server still on our store, and go on."""
        info = read_run_file(self.home)
        leftovers: list[int] = []
        if info is not None:
            pid = info.get("pid")
            if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid) \
                    and b"codeswitch" in _cmdline(pid):
                raise SupervisorError(
                    f"another `codeswitch up` (pid {pid}) runs with the data directory "
                    f"{self.home}: stop it first, or use another --home")
            log.warning("the gateway that wrote %s (pid %s) did not stop cleanly; cleaning up",
                        run_file(self.home), pid)
            parts = info.get("parts")
            if isinstance(parts, dict):
                leftovers = [p for p in parts.values() if isinstance(p, int)]
        stale_nats = _nats_servers_on(self.home / "nats" / "nats-server.conf")
        ours = [p for p in leftovers if pid_alive(p) and b"codeswitch" in _cmdline(p)]
        waiting = sorted(set(ours) | set(stale_nats))
        if waiting:
            log.warning("waiting for %d process(es) of the previous gateway to exit: %s",
                        len(waiting), ", ".join(map(str, waiting)))
        embedded = info is not None and bool(info.get("embedded_nats"))
        deadline = time.monotonic() + (2.0 if embedded else 5.0)
        while waiting and time.monotonic() < deadline:
            time.sleep(0.05)
            waiting = [p for p in waiting if pid_alive(p)]
        # Still there: a nats-server on our store (two must never share one), and parts of a
        # gateway whose embedded NATS is gone (nothing left to finish: their replies went
        # through it; the ledger would hold the DuckDB file). With an external NATS, parts
        # finishing their requests are left alone.
        doomed = [p for p in waiting if p in stale_nats or embedded]
        for pid in doomed:
            log.warning("stopping process %d of the previous gateway", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 5
        while any(pid_alive(p) for p in doomed) and time.monotonic() < end:
            time.sleep(0.02)
        for path in (run_file(self.home), parts_file(self.home)):
            with contextlib.suppress(OSError):
                path.unlink()

    def _start_nats(self) -> str:
        if self.external_nats:
            if self.nats_creds:
                use_nats_credentials(self.external_nats, creds_file=self.nats_creds)
            return self.external_nats
        port = EMBEDDED_NATS_PORT
        if not _port_bindable("127.0.0.1", port):
            port = free_port()
        (self.home / "logs").mkdir(parents=True, exist_ok=True, mode=0o700)
        auth = load_or_create_auth(self.nats_credentials_file)
        # linger: killed with SIGKILL, this supervisor leaves nats-server serving its parts
        # for --grace seconds while they finish their requests (then it exits)
        domain = None
        if self.join:
            from runtime.process import device_name
            from runtime.sync import device_domain

            domain = device_domain(device_name())
        self.nats = EmbeddedNats(self.home / "nats", port=port, auth=auth, linger=self.grace,
                                 log_file=self.home / "logs" / "nats.log", domain=domain,
                                 join=self.join)
        use_nats_credentials(self.nats.url, auth_file=self.nats_credentials_file)
        part = Part(NATS_PART, [], order=9, launcher=self._launch_nats)
        self._nats_wait = False  # the first start: waited for by _nats_listening
        self._start_part(part, {})
        self._nats_wait = True
        if not part.alive:
            raise SupervisorError(f"nats-server did not start; see {self.nats.log_file}")
        self.parts.append(part)
        return self.nats.url

    def _launch_nats(self) -> subprocess.Popen[bytes]:
        assert self.nats is not None
        proc = self.nats.launch()
        if self._nats_wait:  # a restart: the parts reconnect once it listens
            try:
                self.nats.wait_listening(10)
            except RuntimeError as exc:
                log.error("%s", exc)
        return proc

    def _nats_listening(self) -> None:
        """The first start of the embedded nats-server, waited for after the parts and the
        prepare process were started (their interpreters load meanwhile; they connect with
        retries): 0.1-0.3 s less to readiness."""
        if self.nats is None:
            return
        try:
            self.nats.wait_listening(10)
        except RuntimeError as exc:
            raise SupervisorError(f"nats-server did not start ({exc})") from None

    def _child_env(self, url: str) -> dict[str, str]:
        env = {**os.environ, "CODESWITCH_HOME": str(self.home), SUPERVISED_ENV: str(self.home)}
        for name in (AUTH_ENV, CREDS_ENV, "CODESWITCH_NATS_URL"):
            env.pop(name, None)
        if self.nats is not None:
            env[AUTH_ENV] = str(self.nats_credentials_file)  # a path: never the password
        elif self.nats_creds:
            env[CREDS_ENV] = self.nats_creds
        if url_has_auth(url):
            env["CODESWITCH_NATS_URL"] = url  # the parts take it from here, not from argv
        env.pop("CODESWITCH_JOIN", None)  # the hub's password stays in nats-server.conf
        if self.join and self.nats is not None:
            env["CODESWITCH_JOINED"] = "1"  # presence also beats on the hub
        return env

    def _plan_parts(self, url: str) -> list[Part]:
        """The processes to start: each is ``python -m runtime.launch <parts>`` (no CLI in
        them). Default: the edge, the router(s), and the ledger with the alerts (``workers``):
        a router can die without the edge, and the edge answers for it. ``--single-process``: all
        four in one process (``gateway``)."""
        exe = [sys.executable, "-m", "runtime.launch"]
        home = ["--home", str(self.home)]
        # a URL with a password goes to the parts through the environment (argv shows in ps)
        nats = [] if url_has_auth(url) else ["--nats-url", url]
        edge = ["--host", self.host, "--port", str(self.port), "--grace", str(self.grace)]
        sync = ",sync" if self.join and self.nats is not None else ""
        if self.single_process:
            return [Part("gateway", [*exe, f"edge,router,ledger,quota,alerts{sync}", *edge,
                                     *nats, *home], order=0)]
        parts = [Part("edge", [*exe, "edge", *edge, *nats, *home], order=0)]
        for i in range(self.routers):
            parts.append(Part(f"router-{i + 1}" if self.routers > 1 else "router",
                              [*exe, "router", *nats, *home], order=1))
        # the ledger and the alerts share one process: both read the event log at their own
        # pace and answer no client; apart they cost one more interpreter (~30 MB)
        # nice 10: under CPU contention the edge and the routers (the clients' requests, and
        # at start the readiness they wait for) go first; the ledger catches up when they idle
        parts.append(Part("workers", [*exe, f"ledger,quota,alerts{sync}", *nats, *home], order=2,
                          nice=WORKERS_NICE))
        return parts

    def run(self) -> int:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.home, 0o700)  # NATS store, DuckDB, logs, keys: this user's only
        self._clean_stale()  # before the port check: its edge may still hold the port
        _check_port_free(self.host, self.port)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle_signal)
        try:
            url = self._start_nats()
            env = self._child_env(url)
            if self.join:  # the hub is asked before the parts start: NATS must be there
                self._nats_listening()
            joined = self._join(url, env) if self.join and self.nats else []
            self._join_pending = bool(self.join and self.nats) and not any(
                c.startswith(("joined the hub", "syncing through")) for c in joined)
            self._next_join_try = time.monotonic() + 5
            planned = self._plan_parts(url) + [Part(name, argv, order=2)
                                               for name, argv in self.extra_parts]
            # the parts' interpreters start and import (the longest part of a start) while
            # the streams and the config are applied (codeswitch/prepare.py, in a process of
            # its own: what it imports is gone with it); the edge's /readiness says
            # "starting" until parts.json is written, after that
            preparing = self._start_prepare(
                url, env, {"what": "prepare", "apply": self.apply})
            for part in planned:
                self._start_part(part, env)
            self.parts = planned + self.parts
            self._nats_listening()
            self.facts = OutboxFacts(self.home)
            changes = joined + self._finish_prepare(preparing)
            for part in reversed(self.parts):  # nats-server first
                self._fact(part, "started")
            self._write_parts()
            if not self._wait_listening(timeout=30):
                raise SupervisorError(f"the edge did not start listening on {self.host}:"
                                      f"{self.port}; see the messages above")
            self.info = {"nats_url": url, "edge_url": f"http://{self.host}:{self.port}",
                         "pid": os.getpid(), "home": str(self.home), "changes": changes,
                         "embedded_nats": self.nats is not None,
                         "nats_credentials": (str(self.nats_credentials_file)
                                              if self.nats is not None else None),
                         "nats_creds": self.nats_creds if self.nats is None else None,
                         "parts_file": str(parts_file(self.home)),
                         "parts": self._pids()}
            write_private(run_file(self.home), json.dumps(self.info, indent=2))
            if self.on_ready and not self._signals:
                self.on_ready(self.info)
            self._loop(env)
            return 0
        finally:
            self._stop_all()

    def _join(self, url: str, env: dict[str, str], wait: float = 5.0) -> list[str]:
        """Before the parts start: this device's shared KV buckets become mirrors of the hub's
        (the first time; the parts then read and write them as they are). A hub that does not
        answer within ``wait`` seconds is no reason not to start (codeswitch/prepare.py)."""
        from runtime.home import masked_url

        return self._finish_prepare(self._start_prepare(
            url, env, {"what": "join", "where": masked_url(self.join or ""), "wait": wait}))

    def _start_prepare(self, url: str, env: dict[str, str], spec: dict[str, Any]
                       ) -> subprocess.Popen[bytes]:
        """``python -m codeswitch.prepare`` with ``spec`` on its stdin; its answer is read by
        ``_finish_prepare``. Its own session (a Ctrl-C at the terminal lets it finish what it
        writes) and the parent-death signal, as the parts."""
        spec = {**spec, "home": str(self.home),
                "nats_url": None if url_has_auth(url) else url}  # else in env, not argv
        proc = subprocess.Popen(
            [sys.executable, "-m", "codeswitch.prepare"], env=env, start_new_session=True,
            preexec_fn=pdeathsig_preexec(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(spec).encode())
        proc.stdin.close()
        return proc

    def _finish_prepare(self, proc: subprocess.Popen[bytes]) -> list[str]:
        """Wait for a ``_start_prepare`` process: the changes it made, or SupervisorError with
        its message."""
        assert proc.stdout is not None
        out = proc.stdout.read()
        code = proc.wait()
        answer: Any = None
        for line in reversed(out.decode(errors="replace").splitlines()):
            with contextlib.suppress(ValueError):
                answer = json.loads(line)
                break
        if not isinstance(answer, dict):
            raise SupervisorError(f"preparing NATS (python -m codeswitch.prepare) "
                                  f"{describe_exit(code)}; see the messages above")
        if code != 0 or "error" in answer:
            raise SupervisorError(str(answer.get("error") or describe_exit(code)))
        return [str(c) for c in answer.get("changes", [])]

    def _retry_join(self) -> None:
        """The first join found no hub: once the sync part sees it answer, share the settings
        buckets (``_join``) and restart the parts that read them (each reads a bucket once
        and then follows it: a bucket replaced under them would not be read again)."""
        from runtime.sync import read_state

        self._next_join_try = time.monotonic() + 5
        if not read_state(self.home).get("connected") or self.nats is None:
            return
        try:
            changes = self._join(self.nats.url, self._child_env(self.nats.url), wait=0)
        except SupervisorError as exc:  # NATS away a moment: the next try in 5 s
            log.warning("sharing the settings with the hub: %s", exc)
            return
        if not any(c.startswith(("joined the hub", "syncing through")) for c in changes):
            return
        self._join_pending = False
        for change in changes:
            log.warning("%s", change)
        log.warning("the hub answered: restarting the parts on the shared settings")
        for part in self.parts:
            if part.name != NATS_PART and part.alive and part.proc is not None:
                part.proc.terminate()

    def _wait_listening(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        edge = next(p for p in self.parts if p.name in ("edge", "gateway"))
        while time.monotonic() < deadline and not self._signals:
            if not edge.alive:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    time.sleep(0.1)
                    return edge.alive  # our edge, not something else on the port
            except OSError:
                time.sleep(0.05)
        return False

    # -- supervision -------------------------------------------------------------------------
    def _loop(self, env: dict[str, str]) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        old_chld = signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        last_write = time.monotonic()
        try:
            while not self._signals:
                changed = self.tick(env)
                now = time.monotonic()
                if self._join_pending and now >= self._next_join_try:
                    self._retry_join()
                if changed or now - last_write >= HEARTBEAT_S:
                    self._write_parts()
                    if changed:
                        self.info["parts"] = self._pids()
                        write_private(run_file(self.home), json.dumps(self.info, indent=2))
                    last_write = now
                if self._signals:
                    break
                select.select([self._wake_r], [], [], self._sleep_for(now, last_write))
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    while self._wake_r.recv(4096):
                        pass
        finally:
            signal.set_wakeup_fd(old_wakeup)
            signal.signal(signal.SIGCHLD, old_chld)
            self._wake_r.close()
            self._wake_w.close()

    def _sleep_for(self, now: float, last_write: float) -> float:
        wait = HEARTBEAT_S - (now - last_write)
        for part in self.parts:
            if part.next_start is not None:
                wait = min(wait, part.next_start - now)
            elif part.crash_loop:
                wait = min(wait, part.started_at + self.policy.stable_after - now)
        return max(0.0, min(wait, HEARTBEAT_S))

    def tick(self, env: dict[str, str]) -> bool:
        """One pass: notice exits, restart the parts whose backoff is over, notice recoveries.
        True when something changed."""
        changed = False
        now = time.monotonic()
        for part in self.parts:
            if self._stopping or self._signals:
                break
            if part.alive:
                if part.crash_loop and now - part.started_at >= self.policy.stable_after:
                    part.crash_loop = False
                    log.warning("part %s recovered: running for %.0f s (pid %s) after a crash "
                                "loop", part.name, now - part.started_at, part.pid)
                    self._fact(part, "recovered",
                               message=f"running for {now - part.started_at:.0f} s")
                    changed = True
                continue
            if part.next_start is None:
                self._on_exit(part, now)
                changed = True
            if part.next_start is not None and now >= part.next_start:
                self._restart(part, env, now)
                changed = True
        return changed

    def _on_exit(self, part: Part, now: float) -> None:
        code = part.proc.returncode if part.proc is not None else None
        ran = now - part.started_at
        part.backoff = self.policy.next_backoff(part.backoff, ran)
        part.next_start = now + part.backoff
        part.last_exit = code
        part.last_exit_at = time.time()
        how = describe_exit(code)
        log.warning("part %s (pid %s) %s after %.1f s; restart #%d in %.2f s (%d restarts in "
                    "the last 10 min)", part.name, part.pid, how, ran, part.restarts_total + 1,
                    part.backoff, part.recent_restarts(now))
        self._fact(part, "exited", exit_code=code, message=f"{how} after {ran:.1f} s")

    def _restart(self, part: Part, env: dict[str, str], now: float) -> None:
        part.restart_times = [t for t in part.restart_times if now - t < RESTARTS_WINDOW_S]
        part.restart_times.append(now)
        part.restarts_total += 1
        part.next_start = None
        self._start_part(part, env)
        if part.proc is None:
            return
        log.warning("part %s restarted (pid %s): restart #%d, %d in the last minute; next "
                    "backoff %.2f s if it exits soon", part.name, part.pid, part.restarts_total,
                    part.recent_restarts(now, self.policy.loop_window),
                    self.policy.next_backoff(part.backoff, 0.0))
        self._fact(part, "restarted")
        if not part.crash_loop and self.policy.crash_looping(part.restart_times, now):
            part.crash_loop = True
            log.error("CRASH LOOP: part %s was restarted %d times in the last %.0f s; it "
                      "keeps being restarted, with backoff up to %.0f s. Look at its "
                      "messages above%s", part.name,
                      part.recent_restarts(now, self.policy.loop_window),
                      self.policy.loop_window, self.policy.backoff_cap,
                      f" and {self.nats.log_file}" if part.name == NATS_PART and self.nats
                      else "")
            self._fact(part, "crash_loop", message=f"{part.recent_restarts(now, 60)} "
                                                   f"restarts in {self.policy.loop_window:.0f} s")

    def _start_part(self, part: Part, env: dict[str, str]) -> None:
        try:
            part.start(env)
        except Exception as exc:  # e.g. nats-server missing: counts as an exit
            log.error("part %s could not be started: %s", part.name, exc)
            part.proc = None
            part.started_at = time.monotonic()

    def _fact(self, part: Part, state: str, *, exit_code: int | None = None,
              message: str = "") -> None:
        if self.facts is None:
            return
        now = time.monotonic()
        # a schemas.events.PartChanged, as its JSON (tests/test_supervision.py decodes it)
        event = {"type": "PartChanged", "id": new_id(), "ts": time.time(), "part": part.name,
                 "state": state, "pid": part.pid, "exit_code": exit_code,
                 "restarts": part.recent_restarts(now),
                 "backoff_s": round(part.backoff, 3) if state == "exited" else 0.0,
                 "message": message, "host": self._hostname}
        self.facts.emit(part_subject(part.name, state), event)

    def _pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.parts if p.pid is not None}

    def _write_parts(self) -> None:
        now = time.monotonic()
        data = {"pid": os.getpid(), "updated": time.time(), "home": str(self.home),
                "parts": {p.name: p.status(now) for p in self.parts}}
        with contextlib.suppress(OSError):
            write_private(parts_file(self.home), json.dumps(data, indent=1))

    # -- stop --------------------------------------------------------------------------------
    def _stop_all(self) -> None:
        self._stopping = True
        workers = [p for p in self.parts if p.name != NATS_PART]
        for order in sorted({p.order for p in workers}):
            group = [p for p in workers if p.order == order and p.alive]
            for part in group:
                assert part.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    part.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.grace + 5
            for part in group:
                assert part.proc is not None
                try:
                    part.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    part.proc.kill()
                    part.proc.wait()
        if self.nats is not None:
            self.nats.stop()
        for path in (run_file(self.home), parts_file(self.home)):
            with contextlib.suppress(OSError):
                path.unlink()
