from __future__ import annotations

from nats.aio.client import Client as NATS

from runtime import bus, names


async def test_ensure_all_is_idempotent(nc: NATS) -> None:
    js = nc.jetstream()
    await bus.ensure_all(js)  # second time: no error, same streams
    streams = {s.config.name for s in await js.streams_info()}
    assert {names.REQUESTS_STREAM, names.EVENTS_STREAM} <= streams
    info = await js.stream_info(names.REQUESTS_STREAM)
    assert info.config.subjects == ["llm.request.>"]
    kv = await js.key_value(names.PROVIDERS_BUCKET)
    await kv.put("x", b"1")
    assert (await kv.get("x")).value == b"1"


async def test_follow_bucket_reports_a_write_that_lands_during_its_first_read(
        nc: NATS, monkeypatch: object) -> None:
    """A write between the bucket status and the initial read is in the read: the progress
    reported must include it, or `wait_applied` waits for a revision already applied."""
    import asyncio

    import pytest

    js = nc.jetstream()
    await bus.ensure_all(js)
    kv = await js.key_value(names.SETTINGS_BUCKET)
    await kv.put("a", b"1")
    real_read = bus.read_bucket

    async def racing_read(bucket: object) -> dict[str, tuple[bytes, int]]:
        await kv.put("b", b"2")  # someone writes right now
        return await real_read(bucket)  # type: ignore[arg-type]

    mp = pytest.MonkeyPatch()
    mp.setattr(bus, "read_bucket", racing_read)
    reported: list[int] = []
    applied: dict[str, int] = {}
    ready = asyncio.Event()
    task = asyncio.create_task(bus.follow_bucket(
        kv, lambda k, v, r: applied.__setitem__(k, r), ready, reported.append))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        await asyncio.sleep(0.2)  # the watcher delivers "b" again: skipped as already seen
        last = (await kv.status()).stream_info.state.last_seq
        assert applied["b"] == last and max(reported) == last
    finally:
        mp.undo()
        task.cancel()


async def test_the_body_log_bucket_is_made_on_first_use_and_keeps_the_newest(nc: NATS) -> None:
    """ensure_all must not reserve the body log's storage (a small operator account would
    refuse every start); once made, a full log drops its oldest entries, never new ones."""
    from nats.js.errors import BucketNotFoundError, NotFoundError

    js = nc.jetstream()
    await bus.ensure_all(js)
    try:
        await js.object_store(names.BODY_LOG_BUCKET)
        raise AssertionError("ensure_all created the body log bucket")
    except (BucketNotFoundError, NotFoundError):
        pass
    obs = await bus.body_log_store(js, max_bytes=256 * 1024)
    entry = b"x" * (40 * 1024)
    for i in range(20):  # 800 KB into 256 KB: every put succeeds
        await obs.put(f"req-{i}", entry)
    assert (await obs.get("req-19")).data == entry
    stored = {i.name for i in await obs.list()}
    assert "req-19" in stored and len(stored) < 20
    again = await bus.body_log_store(js)  # the existing bucket, as it is
    assert (await again.get("req-19")).data == entry
