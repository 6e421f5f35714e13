from __future__ import annotations

from nats.aio.client import Client as NATS

from codeswitch import bus


async def test_ensure_all_is_idempotent(nc: NATS) -> None:
    js = nc.jetstream()
    await bus.ensure_all(js)  # second time: no error, same streams
    names = {s.config.name for s in await js.streams_info()}
    assert {bus.REQUESTS_STREAM, bus.EVENTS_STREAM} <= names
    info = await js.stream_info(bus.REQUESTS_STREAM)
    assert info.config.subjects == ["llm.request.>"]
    kv = await js.key_value(bus.PROVIDERS_BUCKET)
    await kv.put("x", b"1")
    assert (await kv.get("x")).value == b"1"
