"""The config file's [[users]] and [[keys]] applied to KV as `codeswitch up` does: added,
unchanged (nothing written, no fact), changed, removed; checked before anything is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from codeswitch import users as u
from codeswitch.admin import apply_file_config
from codeswitch.audit import AdminLog
from codeswitch.config import load_config
from runtime import names
from schemas.subjects import admin_subject


def _load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(path)


async def _apply(nc: NATS, cfg: Any, home: Path) -> tuple[list[str], list[tuple[str, str]]]:
    audit = AdminLog(nc, home=home)
    changes = await apply_file_config(nc, cfg.providers, None, users=cfg.users, keys=cfg.keys,
                                      audit=audit)
    return changes, [(f.action, f.target) for f in audit.recorded]


async def _revision(nc: NATS) -> int:
    total = 0
    for bucket in (names.USERS_BUCKET, names.KEYS_BUCKET):
        kv = await nc.jetstream().key_value(bucket)
        total += (await kv.status()).stream_info.state.last_seq
    return total


FILE = '''
[[users]]
name = "alice"
role = "admin"

[[users]]
name = "bob"
rpm = 5

[[keys]]
name = "laptop"
user = "alice"
secret = "env:CS_TEST_ALICE_KEY"
models = ["claude-*"]

[[keys]]
name = "ci"
user = "carol"
hash = "sha256:{digest}"
'''


async def test_config_users_and_keys_sync(nc: NATS, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CS_TEST_ALICE_KEY", "cs-" + "a" * 43)
    digest = "ab" * 32
    # carol exists only in KV (made with the CLI): a file key may belong to her
    await u.add_user(nc, AdminLog(nc, home=tmp_path), "carol")
    cfg = _load(tmp_path, FILE.format(digest=digest))
    changes, facts = await _apply(nc, cfg, tmp_path)
    assert changes == ["user alice added", "user bob added", "key alice/laptop added",
                       "key carol/ci added"]
    assert facts == [("user.created", "user:alice"), ("user.created", "user:bob"),
                     ("key.created", "key:alice/laptop"), ("key.created", "key:carol/ci")]
    d = await u.load(nc)
    alice = d.user("alice")
    assert (alice.role, alice.source, alice.id) == ("admin", "config",
                                                    cfg.users[0].id)
    assert d.user("bob").limits.rpm == 5
    laptop = d.key("alice/laptop")
    assert (laptop.models, laptop.prefix, laptop.source) == (["claude-*"], "cs-aaaa", "config")
    assert d.key("carol/ci").hash == digest

    # the same file again: nothing written, no fact
    before = await _revision(nc)
    assert await _apply(nc, cfg, tmp_path) == ([], [])
    assert await _revision(nc) == before

    # changed: bob disabled and promoted, his limit gone, laptop's models, ci gone, alice gone
    changed = _load(tmp_path, '''
[[users]]
name = "bob"
enabled = false
role = "admin"

[[keys]]
name = "laptop"
user = "bob"
secret = "env:CS_TEST_ALICE_KEY"
''')
    changes, facts = await _apply(nc, changed, tmp_path)
    assert facts == [
        ("user.disabled", "user:bob"), ("user.promoted", "user:bob"),
        ("limit.changed", "user:bob"),
        ("key.revoked", "key:alice/laptop"), ("user.removed", "user:alice"),
        ("key.created", "key:bob/laptop"), ("key.revoked", "key:carol/ci")]
    d = await u.load(nc)
    assert {x.name for x in d.users.values()} == {"bob", "carol"}
    assert d.key("bob/laptop").revoked is None
    assert d.key("carol/ci").revoked is not None
    assert "user alice removed (no longer in the config file)" in changes

    # the file takes over a CLI user of its name, keeping its id
    dave = await u.add_user(nc, AdminLog(nc, home=tmp_path), "dave")
    _, facts = await _apply(nc, _load(tmp_path, '[[users]]\nname = "dave"\n'), tmp_path)
    assert ("user.updated", "user:dave") in facts
    d = await u.load(nc)
    assert d.user("dave").id == dave.id and d.user("dave").source == "config"


async def test_a_key_of_an_unknown_user_writes_nothing(nc: NATS, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CS_TEST_ALICE_KEY", "cs-" + "a" * 43)
    cfg = _load(tmp_path, FILE.format(digest="cd" * 32))  # carol exists nowhere
    before = await _revision(nc)
    with pytest.raises(u.UserError, match="no user named 'carol'"):
        await _apply(nc, cfg, tmp_path)
    assert await _revision(nc) == before


async def test_admin_facts_of_a_config_are_on_the_log(nc: NATS, tmp_path: Path) -> None:
    cfg = _load(tmp_path, '[[users]]\nname = "erin"\n')
    await _apply(nc, cfg, tmp_path)
    js = nc.jetstream()
    msg = await js.get_last_msg(names.EVENTS_STREAM, admin_subject("user", "created"))
    assert b'"actor":"local:' in (msg.data or b"") and b'"via":"config file"' in (msg.data or b"")
