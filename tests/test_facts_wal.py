"""Write-ahead facts: what a process emitted (and the calls it had in flight) survives its
death and is published by the next process that looks at the directory."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from nats.aio.client import Client as NATS

from runtime import names
from runtime.facts import FactPublisher, WriteAhead, read_segments
from runtime.natsd import EmbeddedNats
from schemas.events import RequestCompleted, decode_event, encode_event


def _rc(rid: str, eid: str, **kw: object) -> RequestCompleted:
    return RequestCompleted(id=eid, ts=1.0, request_id=rid, dialect="anthropic", **kw)  # type: ignore[arg-type]


def test_segments_parse_facts_and_unresolved_intents(tmp_path: Path) -> None:
    wal = WriteAhead(tmp_path, "router")
    wal.fact("llm.response.a.p", "e1", encode_event(_rc("r1", "e1")), None)
    wal.intent("r2", [("llm.response.a.p", "i2", encode_event(_rc("r2", "i2")))])
    wal.intent("r3", [("llm.response.a.p", "i3", encode_event(_rc("r3", "i3")))])
    # a second attempt of r3 replaces its intent; r2 is resolved by its fact
    wal.intent("r3", [("llm.response.a.p", "i3b", encode_event(_rc("r3", "i3b")))])
    wal.fact("llm.response.a.p", "e2", encode_event(_rc("r2", "e2")), "r2")
    facts, orphaned = read_segments(wal.segments_of("router"))
    assert [f[1] for f in facts] == ["e1", "e2"]
    assert [f[1] for f in orphaned] == ["i3b"]


def test_settled_segments_are_removed(tmp_path: Path, monkeypatch: object) -> None:
    import runtime.facts as facts

    monkeypatch.setattr(facts, "SEGMENT_BYTES", 200)  # type: ignore[attr-defined]
    wal = WriteAhead(tmp_path, "edge")
    segs = [wal.fact("s", f"e{i}", b"x" * 100, None) for i in range(6)]
    assert len(set(segs)) > 1 and len(wal.segments_of("edge")) == len(set(segs))
    for seg in segs:
        wal.settled(seg)
    assert len(wal.segments_of("edge")) == 1  # only the current one is left
    wal.close(clean=True)
    assert list(tmp_path.iterdir()) == []


def test_a_second_process_with_the_same_name_gets_its_own_files(tmp_path: Path) -> None:
    one = WriteAhead(tmp_path, "router")
    two = WriteAhead(tmp_path, "router")
    assert one.name == "router" and two.name == "router-1"
    assert not one.orphans() and not two.orphans()  # both alive: nobody adopts


async def test_killed_process_facts_are_published_by_the_next(
        nc: NATS, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    """A child emits 50 facts and an intent, then is killed with SIGKILL before publishing
    anything (NATS is given as an unreachable URL); a new publisher adopts its files."""
    outbox = tmp_path / "outbox"
    code = textwrap.dedent(f"""
        import asyncio, os, signal
        from unittest import mock
        from runtime.facts import FactPublisher
        from schemas.events import RequestCompleted
        async def main():
            nc = mock.MagicMock()
            pub = FactPublisher(nc, wal={str(outbox)!r}, name="router")
            for i in range(50):
                pub.emit("llm.response.anthropic.p", RequestCompleted(
                    id=f"ev{{i:04d}}", ts=1.0, request_id=f"r{{i}}", dialect="anthropic"))
            pub.intent("r-inflight", [("llm.response.anthropic.p", RequestCompleted(
                id="lost-1", ts=1.0, request_id="r-inflight", dialect="anthropic",
                source="recovered", usage_estimated=True))])
            os.kill(os.getpid(), signal.SIGKILL)
        asyncio.run(main())
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1],
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == -9
    assert any(outbox.glob("router*.wal"))

    pub = FactPublisher(nc, wal=outbox, name="router")
    pub.start()
    js = nc.jetstream()
    for _ in range(200):
        if (await js.stream_info(names.EVENTS_STREAM)).state.messages >= 51:
            break
        await asyncio.sleep(0.05)
    await pub.aclose()
    info = await js.stream_info(names.EVENTS_STREAM)
    assert info.state.messages == 51
    ids = set()
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        ids.add(decode_event((await js.get_msg(names.EVENTS_STREAM, seq)).data or b"").id)
    assert ids == {f"ev{i:04d}" for i in range(50)} | {"lost-1"}
    assert pub.recovered == 51
    assert not list(outbox.glob("*.wal")) and not list(outbox.glob("*.lock"))


async def test_spooled_facts_are_published_by_a_running_publisher(
        nc: NATS, nats_server: EmbeddedNats, tmp_path: Path,
        monkeypatch: object) -> None:
    """The supervisor's facts (runtime/outbox.py, no NATS client in that process): written to
    the outbox as a dead process's files, published by a part's publisher at its next look,
    which also takes a spool written while it runs; a half-written spool (no lock yet) waits."""
    import runtime.facts as facts
    from runtime.outbox import spool, spool_event
    from schemas.events import PartChanged
    from schemas.ids import new_id

    monkeypatch.setattr(facts, "ADOPT_EVERY_S", 0.2)  # type: ignore[attr-defined]
    outbox = tmp_path / "outbox"
    first = {"type": "PartChanged", "id": new_id(), "ts": 2.0, "part": "router",
             "state": "exited", "pid": 41, "exit_code": -9, "restarts": 1,
             "backoff_s": 0.1, "message": "killed by SIGKILL after 1.0 s", "host": "h"}
    spool_event(outbox, "supervisor", "gateway.part.router.exited", first)
    pub = FactPublisher(nc, wal=outbox, name="edge")
    pub.start()
    js = nc.jetstream()

    async def events() -> list[object]:
        info = await js.stream_info(names.EVENTS_STREAM)
        if not info.state.messages:
            return []
        return [decode_event((await js.get_msg(names.EVENTS_STREAM, seq)).data or b"")
                for seq in range(info.state.first_seq, info.state.last_seq + 1)]

    for _ in range(100):
        if await events():
            break
        await asyncio.sleep(0.05)
    got = await events()
    assert got == [PartChanged(id=first["id"], ts=2.0, part="router", state="exited", pid=41,
                               exit_code=-9, restarts=1, backoff_s=0.1,
                               message="killed by SIGKILL after 1.0 s", host="h")]
    # while the publisher runs: a spool whose lock is not written yet is not taken
    (outbox / "supervisor~1.1.wal").write_bytes(b"F gateway.part.x.started e-half - {}\n")
    second = {**first, "id": new_id(), "state": "restarted", "exit_code": None}
    spool(outbox, "supervisor", [("gateway.part.router.restarted", second["id"],
                                  json.dumps(second).encode())])
    for _ in range(100):
        if len(await events()) >= 2:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    got = await events()
    assert [e.state for e in got] == ["exited", "restarted"]  # type: ignore[attr-defined]
    assert (outbox / "supervisor~1.1.wal").exists()
    await pub.aclose()
    assert not [p for p in outbox.iterdir() if p.name.startswith("supervisor~") and
                p.name != "supervisor~1.1.wal"]
