"""Literal provider keys never in NATS KV in clear text (issue 10): encrypted with the data
directory's secret.key, decrypted by the router at call time; older literal entries are
re-encrypted, and their plain-text history purged, on the next `codeswitch up`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import time
from pathlib import Path

import httpx
import msgspec
import nats
import pytest
from cryptography.fernet import Fernet
from nats.aio.client import Client as NATS

from codeswitch import admin
from runtime import bus, secrets
from runtime.natsd import EmbeddedNats
from runtime.process import free_port
from runtime.secrets import (
    SecretKeyError,
    decrypt_secret,
    encrypt_secret,
    is_encrypted,
    load_key,
    resolve_secret,
)
from schemas.config import ProviderConfig, UnifiedUpstream
from tests.fakes.upstream import FakeUpstream
from tests.test_up import CLI

LITERAL = "sk-literal-CONFIG-SECRET-wxyz"
OLD = "sk-old-STORED-SECRET-9876"


def _provider(key: str, name: str = "p") -> ProviderConfig:
    return ProviderConfig(name=name, dialect="anthropic", base_url="https://x", api_key=key,
                          source="config")


def _store_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.rglob("*") if p.is_file())


def test_encrypt_decrypt_and_what_stays_as_it_is() -> None:
    key = Fernet.generate_key()
    sealed = encrypt_secret(LITERAL, key)
    assert is_encrypted(sealed) and sealed.startswith("enc:v1:") and LITERAL not in sealed
    assert encrypt_secret(LITERAL, key) != sealed  # randomised: equal keys do not show
    assert decrypt_secret(sealed, key) == LITERAL
    for unchanged in ("", "env:ANTHROPIC_API_KEY", sealed):
        assert encrypt_secret(unchanged, key) == unchanged
    assert decrypt_secret("env:X", key) == "env:X"
    with pytest.raises(SecretKeyError) as caught:
        decrypt_secret(sealed, Fernet.generate_key())
    assert LITERAL not in str(caught.value) and sealed not in str(caught.value)
    assert _provider(sealed).masked().api_key == "enc:…"
    assert _provider(LITERAL).masked().api_key == "…wxyz"


def test_the_key_file_is_made_once_and_private(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(secrets.KEY_ENV, raising=False)
    assert load_key(tmp_path) is None
    key = load_key(tmp_path, create=True)
    path = tmp_path / "secret.key"
    assert key is not None and path.read_bytes().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(tmp_path, create=True) == key
    other = Fernet.generate_key()
    monkeypatch.setenv(secrets.KEY_ENV, other.decode())  # a router on another machine
    assert load_key(tmp_path) == other
    monkeypatch.setenv(secrets.KEY_ENV, "not-a-key")
    with pytest.raises(SecretKeyError):
        load_key(tmp_path)


def test_the_router_resolves_encrypted_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(secrets.KEY_ENV, raising=False)
    key = load_key(tmp_path, create=True)
    assert key is not None
    sealed = encrypt_secret(LITERAL, key)
    monkeypatch.setattr(secrets, "_home", tmp_path)  # as run_worker(--home) sets it
    assert resolve_secret(sealed) == LITERAL
    monkeypatch.setenv("SOME_KEY", "from-env")
    assert resolve_secret("env:SOME_KEY") == "from-env" and resolve_secret("plain") == "plain"
    # elsewhere, without the key: empty (the upstream refuses), logged without the secret
    monkeypatch.setattr(secrets, "_home", tmp_path / "elsewhere")
    with caplog.at_level(logging.ERROR):
        assert resolve_secret(encrypt_secret("sk-other-hidden", key)) == ""
    assert "no secret key" in caplog.text and "hidden" not in caplog.text


async def test_config_writes_encrypted_and_old_literals_are_purged(
        nats_server: EmbeddedNats, nc: NATS) -> None:
    key = Fernet.generate_key()
    # what an older version wrote: literals, with history
    old = msgspec.structs.replace(_provider(OLD, "old"), source="cli")
    await admin.put_provider(nc, old)
    await admin.put_provider(nc, msgspec.structs.replace(old, api_key=OLD + "-v2"))
    await admin.put_setting(nc, "unified", UnifiedUpstream(token=OLD + "-token"))
    changes = await admin.seal_stored_secrets(nc, key)
    assert changes == ["provider old: literal key encrypted at rest",
                       "unified upstream: literal token encrypted at rest"]
    stored = await admin.get_provider(nc, "old")
    assert stored is not None and decrypt_secret(stored.api_key, key) == OLD + "-v2"
    unified = await admin.get_setting(nc, "unified")
    assert decrypt_secret(unified.token, key) == OLD + "-token"
    assert await admin.seal_stored_secrets(nc, key) == []  # nothing left to do
    # the file config: encrypted on write, compared decrypted (an unchanged file writes nothing)
    wanted = [_provider(LITERAL)]
    assert await admin.apply_file_config(nc, wanted, None, secret_key=key) == ["provider p added"]
    assert await admin.apply_file_config(nc, wanted, None, secret_key=key) == []
    assert await admin.apply_file_config(nc, [_provider(LITERAL + "2")], None,
                                         secret_key=key) == ["provider p updated"]
    await nc.flush()
    on_disk = _store_bytes(nats_server.store_dir)
    assert b"SECRET" not in on_disk and b"STORED" not in on_disk


# -- a real gateway -------------------------------------------------------------------------
def _seed_old_store(home: Path) -> None:
    """The data directory as an older version left it: an open NATS, a literal key in KV."""
    async def seed(url: str) -> None:
        nc = await bus.connect(url, name="seed")
        try:
            await bus.wait_ready(nc)
            await bus.ensure_all(nc.jetstream())
            await admin.put_provider(nc, msgspec.structs.replace(
                _provider(OLD, "old"), base_url="http://127.0.0.1:9", models=["none-*"],
                source="cli"))
        finally:
            await nc.drain()

    with EmbeddedNats(home / "nats") as server:
        asyncio.run(seed(server.url))


def test_literal_keys_reach_the_upstream_but_never_the_store(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_old_store(home)
    assert OLD.encode() in _store_bytes(home / "nats")
    port = free_port()
    with FakeUpstream("anthropic") as fake:
        config = tmp_path / "codeswitch.toml"
        config.write_text(f'[[providers]]\nname = "fake"\ndialect = "anthropic"\n'
                          f'base_url = "{fake.base_url}"\napi_key = "{LITERAL}"\n'
                          'models = ["claude-*"]\n')
        env = {k: v for k, v in os.environ.items() if k != secrets.KEY_ENV}
        proc = subprocess.Popen([*CLI, "up", "--home", str(home), "--config", str(config),
                                 "--port", str(port), "--grace", "5"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        cli_env = {**env, "CODESWITCH_HOME": str(home)}
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, "not ready"
                try:
                    if httpx.get(url + "/readiness", timeout=1).status_code == 200 and \
                            (home / "run.json").exists():
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            r = httpx.post(url + "/v1/messages", timeout=30, json={
                "model": "claude-opus-4-8", "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200
            assert fake.requests[-1].headers["x-api-key"] == LITERAL
            added = subprocess.run([*CLI, "provider", "add", "second", "--dialect", "openai-chat",
                                    "--base-url", "http://127.0.0.1:9/v1", "--api-key",
                                    "sk-cli-SECRET-1234", "--model", "gpt-*"],
                                   capture_output=True, text=True, timeout=60, env=cli_env)
            assert added.returncode == 0, added.stderr
            listed = json.loads(subprocess.run(
                [*CLI, "provider", "list", "--json"], capture_output=True, text=True,
                timeout=60, env=cli_env).stdout)
            keys = {p["name"]: p["api_key"] for p in listed}
            assert keys == {"fake": "…wxyz", "old": "…9876", "second": "…1234"}
            # the nats CLI's way in: NATS_URL with the credentials, for `eval`
            shown = subprocess.run([*CLI, "nats", "env"], capture_output=True, text=True,
                                   timeout=60, env=cli_env)
            assert shown.returncode == 0 and shown.stdout.startswith("export NATS_URL=")
            nats_url = shown.stdout.split("=", 1)[1].strip().strip("'")

            async def with_url() -> bool:
                client = await nats.connect(nats_url, allow_reconnect=False,
                                            max_reconnect_attempts=1)
                ok = client.is_connected
                await client.close()
                return ok

            assert asyncio.run(with_url())
            stored = _store_bytes(home / "nats")
            for secret in (LITERAL, OLD, "sk-cli-SECRET-1234"):
                assert secret.encode() not in stored, secret
            assert b"enc:v1:" in stored
            logs = _store_bytes(home / "logs")
            assert LITERAL.encode() not in logs and OLD.encode() not in logs
        finally:
            proc.terminate()
            output = proc.communicate(timeout=60)[0].decode()
    assert "provider old: literal key encrypted at rest" in output
    for secret in (LITERAL, OLD, "sk-cli-SECRET-1234"):
        assert secret not in output


def test_which_nats_credentials_a_connection_uses(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime import home as rt

    monkeypatch.delenv(rt.CREDS_ENV, raising=False)
    monkeypatch.delenv(rt.AUTH_ENV, raising=False)
    monkeypatch.setattr(rt, "_registered", {})
    auth = tmp_path / "credentials.json"
    auth.write_text(json.dumps({"user": "codeswitch", "password": "pw-0123456789abcdef"}))
    url = "nats://127.0.0.1:18122"
    assert rt.nats_auth_options(url) == {}  # tests' open servers: nothing added
    monkeypatch.setenv(rt.AUTH_ENV, str(auth))  # what the supervisor gives its parts
    assert rt.nats_auth_options(url) == {"user": "codeswitch",
                                              "password": "pw-0123456789abcdef"}
    monkeypatch.setenv(rt.CREDS_ENV, "/etc/nats/app.creds")  # an operator's NATS
    assert rt.nats_auth_options(url) == {"user_credentials": "/etc/nats/app.creds"}
    assert rt.nats_auth_options("nats://app:pw@h:4222") == {}  # the URL says it all
    monkeypatch.delenv(rt.CREDS_ENV)
    monkeypatch.delenv(rt.AUTH_ENV)
    # the CLI: the run file of the running gateway names the file for its URL
    home = tmp_path / "home"
    home.mkdir()
    (home / "run.json").write_text(json.dumps({"nats_url": url, "nats_credentials": str(auth)}))
    assert rt.nats_url_for(home) == url
    assert rt.nats_auth_options(url)["user"] == "codeswitch"
    assert rt.nats_auth_options("nats://other:4222") == {}  # never sent elsewhere
    exported = rt.nats_env_lines(url)
    assert exported == ["export NATS_URL=nats://codeswitch:pw-0123456789abcdef@127.0.0.1:18122"]
    auth.write_text("{not json")
    with pytest.raises(ConnectionError) as caught:
        rt.nats_auth_options(url)
    assert "pw-" not in str(caught.value)
    assert rt.masked_url("nats://a:pw@h:1,nats://b:pw2@i:2") == \
        "nats://a:***@h:1,nats://b:***@i:2"
