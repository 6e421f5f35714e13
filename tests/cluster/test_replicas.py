"""Streams and buckets with replicas on a real three-node cluster: `codeswitch nats init
--replicas 3` over a comma-separated server list, and no part lowering them on start."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import nats

from runtime import bus, names
from tests.cluster.cluster import NatsCluster

CLI = [sys.executable, "-m", "codeswitch"]


async def _replicas(urls: str) -> dict[str, int]:
    nc = await bus.connect(urls, name="test", once=True)
    try:
        js = nc.jetstream()
        streams = [names.REQUESTS_STREAM, names.EVENTS_STREAM,
                   *(f"KV_{b}" for b in names.KV_BUCKETS), f"OBJ_{names.BODIES_BUCKET}"]
        return {s: (await js.stream_info(s)).config.num_replicas or 1 for s in streams}
    finally:
        await nc.close()


def test_init_with_replicas_over_a_server_list(tmp_path: Path) -> None:
    with NatsCluster(tmp_path, 3) as cluster:
        r = subprocess.run([*CLI, "nats", "init", "--replicas", "3", "--nats-url", cluster.urls,
                            "--home", str(tmp_path / "home")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "CS_EVENTS" in r.stdout and "(replicas 3)" in r.stdout
        got = asyncio.run(_replicas(cluster.urls))
        assert set(got.values()) == {3}, got

        # a part starting with the default (1 replica) keeps them at 3
        async def part_start() -> None:
            nc = await bus.connect(cluster.urls, name="part", once=True)
            try:
                await bus.ensure_all(nc.jetstream(), bus.StreamLimits(replicas=1))
            finally:
                await nc.close()

        asyncio.run(part_start())
        assert set(asyncio.run(_replicas(cluster.urls)).values()) == {3}

        # with one server gone the list still connects (to another), and once the streams
        # that had their leader there have elected another, they answer
        cluster.kill(0)
        deadline = time.monotonic() + 30
        while True:
            try:
                got = asyncio.run(_replicas(cluster.urls))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
        assert set(got.values()) == {3}, got


def test_more_replicas_than_servers_is_a_clear_error(tmp_path: Path) -> None:
    with NatsCluster(tmp_path, 3) as cluster:
        r = subprocess.run([*CLI, "nats", "init", "--replicas", "5", "--nats-url", cluster.urls,
                            "--home", str(tmp_path / "home")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "replicas" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_replicas_from_the_environment_are_checked() -> None:
    import os

    import pytest

    old = os.environ.get("CODESWITCH_REPLICAS")
    try:
        os.environ["CODESWITCH_REPLICAS"] = "three"
        with pytest.raises(ValueError, match="whole number"):
            bus.StreamLimits()
        os.environ["CODESWITCH_REPLICAS"] = "3"
        assert bus.StreamLimits().replicas == 3
        assert {c.num_replicas for c in bus.stream_configs()} == {3}
    finally:
        if old is None:
            os.environ.pop("CODESWITCH_REPLICAS", None)
        else:
            os.environ["CODESWITCH_REPLICAS"] = old


def test_servers_splits_a_list() -> None:
    assert bus.servers("nats://a:1") == "nats://a:1"
    assert bus.servers("nats://a:1, nats://b:2,") == ["nats://a:1", "nats://b:2"]
    assert nats  # nats-py takes the list as its server pool
