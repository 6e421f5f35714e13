"""The MCP server list in NATS KV (bucket ``cs_mcp``, declared in codeswitch/bus.py).

The CLI reaches the running gateway's NATS; when nobody answers it fails with
McpStoreUnavailableError and a hint instead of retrying forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import nats.errors
from nats.js import api as js_api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from codeswitch.clients._errors import McpError, McpStoreUnavailableError
from codeswitch.clients.mcp import McpServer
from runtime import bus, names

__all__ = ["McpStore", "open_store"]

_decoder = msgspec.json.Decoder(McpServer)
_encoder = msgspec.json.Encoder()
UNAVAILABLE_HINT = "gateway not running: start it with `codeswitch up` or pass --nats-url"


class McpStore:
    def __init__(self, kv: KeyValue, nc: Any = None) -> None:
        self._kv = kv
        self.nc = nc  # the connection, for the command's admin facts

    async def list(self) -> list[McpServer]:
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return []
        servers = []
        for key in sorted(keys):
            server = await self.get(key)
            if server is not None:
                servers.append(server)
        return servers

    async def get(self, name: str) -> McpServer | None:
        try:
            entry = await self._kv.get(name)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            return _decoder.decode(entry.value)
        except msgspec.DecodeError as exc:
            raise McpError(f"MCP entry {name!r} in KV is not valid: {exc}") from None

    async def put(self, server: McpServer) -> None:
        await self._kv.put(server.check().name, _encoder.encode(server))

    async def delete(self, name: str) -> bool:
        if await self.get(name) is None:
            return False
        await self._kv.delete(name)
        return True


async def _bucket(js: nats.js.JetStreamContext) -> KeyValue:
    try:
        return await js.key_value(names.MCP_BUCKET)
    except BucketNotFoundError:
        opts = names.KV_BUCKETS[names.MCP_BUCKET]
        return await js.create_key_value(js_api.KeyValueConfig(
            bucket=names.MCP_BUCKET, history=opts["history"], description=opts["description"],
            storage=js_api.StorageType.FILE,
        ))


@asynccontextmanager
async def open_store(url: str, *, timeout: float = 2.0) -> AsyncIterator[McpStore]:
    """Connect once (no reconnect loop) and yield the store."""
    try:
        # the CLI's one connection setting (bus.connect once=True), as every command's
        nc = await asyncio.wait_for(
            bus.connect(url, name="codeswitch-mcp", once=True, connect_timeout=timeout),
            timeout * 3,
        )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise McpStoreUnavailableError(f"{UNAVAILABLE_HINT} (no NATS at {url}: {exc})") from None
    try:
        try:
            kv = await asyncio.wait_for(_bucket(nc.jetstream()), timeout * 2)
        except (TimeoutError, nats.errors.Error) as exc:
            raise McpStoreUnavailableError(
                f"{UNAVAILABLE_HINT} (NATS at {url} has no usable JetStream: {exc})") from None
        yield McpStore(kv, nc)
    finally:
        await nc.close()
