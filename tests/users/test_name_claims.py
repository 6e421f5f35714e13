"""User names and key names are locked (KV cs_names, codeswitch/name_claims.py): concurrent
`user add` of one name, each on its own NATS connection, make exactly one user; the same for
a user's key names; a revoked key's or a removed user's name is free again; a claim left by a
command that died before its record is taken over once stale, never while young."""

from __future__ import annotations

import asyncio
import time

import pytest

from codeswitch import users as u
from codeswitch.audit import AdminLog
from codeswitch.name_claims import NameTaken, claim, user_entry
from runtime import bus, names
from runtime.natsd import EmbeddedNats
from schemas.users import User

N = 8


async def _race(url: str, make: object) -> list[object]:
    conns = [await bus.connect(url, name=f"admin{i}") for i in range(N)]
    try:
        return await asyncio.gather(*(make(nc, AdminLog(nc)) for nc in conns),  # type: ignore[operator]
                                    return_exceptions=True)
    finally:
        for nc in conns:
            await nc.close()


def test_concurrent_user_add_and_key_create_of_one_name(nats_server: EmbeddedNats) -> None:
    url = nats_server.url

    async def main() -> None:
        nc = await bus.connect(url, name="setup")
        await bus.ensure_all(nc.jetstream())
        for round_ in range(3):
            name = f"zoe{round_}"
            results = await _race(url, lambda c, a, name=name: u.add_user(c, a, name))
            made = [r for r in results if isinstance(r, User)]
            refused = [r for r in results if isinstance(r, u.UserError)]
            assert len(made) == 1 and len(refused) == N - 1, results
            assert all(f"a user named {name!r} exists" in str(r) for r in refused)
            d = await u.load(nc)
            assert [x.id for x in d.users.values() if x.name == name] == [made[0].id]
            keys = await _race(url, lambda c, a, name=name: u.create_key(
                c, a, name, name="laptop"))
            ok = [r for r in keys if isinstance(r, tuple)]
            assert len(ok) == 1, keys
            assert all("has a key named 'laptop' already" in str(r) for r in keys
                       if not isinstance(r, tuple))
            d = await u.load(nc)
            assert len(d.keys_of(made[0].id)) == 1
        await nc.close()

    asyncio.run(main())


def test_names_free_again_and_stale_claims(nats_server: EmbeddedNats) -> None:
    url = nats_server.url

    async def main() -> None:
        nc = await bus.connect(url, name="t")
        await bus.ensure_all(nc.jetstream())
        log = AdminLog(nc)
        await u.add_user(nc, log, "yan")
        key, _ = await u.create_key(nc, log, "yan", name="a")
        with pytest.raises(u.UserError, match="has a key named 'a' already"):
            await u.create_key(nc, log, "yan", name="a")
        await u.revoke_key(nc, log, key.id)
        again, _ = await u.create_key(nc, log, "yan", name="a")  # revoked: name free
        await u.update_key(nc, log, again.id, name="b")  # renamed: "a" free, "b" taken
        await u.create_key(nc, log, "yan", name="a")
        with pytest.raises(u.UserError, match="has a key named 'b' already"):
            await u.create_key(nc, log, "yan", name="b")
        await u.remove_user(nc, log, "yan")
        await u.add_user(nc, log, "yan")  # removed: name free
        # a claim whose record never came (the command died in between)
        kv = await nc.jetstream().key_value(names.NAMES_BUCKET)
        await kv.put(user_entry("ghost"), b'{"id":"u_gone","ts":%f}' % time.time())
        with pytest.raises(u.UserError, match="a user named 'ghost' exists"):
            await u.add_user(nc, log, "ghost")  # young: someone may be writing it now

        async def gone(_: str) -> bool:
            return False

        with pytest.raises(NameTaken):
            await claim(nc, user_entry("ghost"), "u_other", gone)
        await kv.put(user_entry("ghost"), b'{"id":"u_gone","ts":%f}' % (time.time() - 60))
        ghost = await u.add_user(nc, log, "ghost")  # stale: taken over
        assert ((await kv.get(user_entry("ghost"))).value or b"").decode().startswith(
            f'{{"id":"{ghost.id}"')
        await nc.close()

    asyncio.run(main())
