"""Users, keys and limits without servers: the records, budgets, the edge's directory (the
check every request goes through), the config file's [[users]] and [[keys]]."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest

from codeswitch.config import ConfigError, load_config
from codeswitch.users import UserError, limits_from, parse_expiry
from edge.auth import AccessDenied, AuthError, Directory, authenticate, hash_key
from schemas.config import GatewaySettings
from schemas.errors import error_body
from schemas.users import (
    Budget,
    Key,
    Limits,
    User,
    config_key_id,
    config_user_id,
    hash_secret,
    new_secret,
    parse_budget,
    secret_prefix,
)

_enc = msgspec.json.Encoder()


@pytest.mark.parametrize(("text", "budget"), [
    ("5usd/day", Budget(amount=5, unit="usd", period="day")),
    ("$5/day", Budget(amount=5, unit="usd", period="day")),
    ("0.5 USD / week", Budget(amount=0.5, unit="usd", period="week")),
    ("200000tokens/month", Budget(amount=200000, unit="tokens", period="month")),
    ("200k tokens/month", Budget(amount=200000, unit="tokens", period="month")),
    ("1M tok/total", Budget(amount=1e6, unit="tokens", period="total")),
    ("20usd/total", Budget(amount=20, unit="usd", period="total")),
])
def test_budgets(text: str, budget: Budget) -> None:
    assert parse_budget(text) == budget
    assert parse_budget(budget.label()) == budget


@pytest.mark.parametrize("text", ["5", "5usd", "5/day", "5eur/day", "0usd/day",
                                  "5usd/year", "1.5tokens/day", "$5tokens/day", "-1usd/day"])
def test_malformed_budgets(text: str) -> None:
    with pytest.raises(ValueError, match="budget"):
        parse_budget(text)


def test_limits() -> None:
    limits = limits_from(budget="5usd/day", soft="80%", rpm=60, tpm=None, concurrency=4)
    assert limits == Limits(budget=Budget(amount=5, unit="usd", period="day"), soft_pct=80,
                            rpm=60, concurrency=4)
    assert limits.label() == "5usd/day, soft 80%, rpm 60, concurrency 4"
    assert limits_from(limits, rpm=None, budget="none", soft=None) == Limits(concurrency=4)
    assert limits_from().empty()
    for bad in ({"rpm": 0}, {"budget": "5"}, {"soft": "x"}, {"soft": "80%"},
                {"budget": "1usd/day", "soft": "120%"}, {"concurrency": -1}):
        with pytest.raises(UserError):
            limits_from(**bad)


def test_secrets_and_ids() -> None:
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith("cs-") and len(a) == 46
    assert hash_secret(a) == hash_key(a)  # the edge hashes what the CLI hashed
    assert secret_prefix(a) == a[:7]
    assert config_user_id("alice") == config_user_id("alice") != config_user_id("bob")
    assert config_key_id("alice", "k") != config_key_id("bob", "k")
    with pytest.raises(ValueError):
        User(id="u", name="bad name")
    with pytest.raises(ValueError):
        Key(id="k", name="k", user="u", hash="nothex")


def test_expiry() -> None:
    now = 1_000_000.0
    assert parse_expiry("30d", now) == now + 30 * 86400
    assert parse_expiry("12h", now) == now + 12 * 3600
    assert parse_expiry("never", now) is None
    assert parse_expiry("2030-01-31") > now  # type: ignore[operator]
    with pytest.raises(UserError, match="expiry"):
        parse_expiry("soon", now)


# -- the edge's directory ---------------------------------------------------------------------

ALICE = User(id="u_alice", name="alice")
SECRET = "cs-" + "a" * 43


def _directory(**key: object) -> Directory:
    d = Directory()
    d.apply_user(ALICE.id, _enc.encode(ALICE))
    fields: dict[str, object] = {"id": "k_1", "name": "laptop", "user": ALICE.id,
                                 "hash": hash_secret(SECRET), "prefix": SECRET[:7], **key}
    d.apply_key("k_1", _enc.encode(Key(**fields)))  # type: ignore[arg-type]
    return d


def test_no_users_is_todays_behaviour() -> None:
    d = Directory()
    assert not d.active
    assert authenticate({"x-api-key": "anything"}, "", GatewaySettings(), d).user_id is None
    closed = GatewaySettings(key_hashes=[hash_key("gw")])
    with pytest.raises(AuthError):
        authenticate({"x-api-key": "nope"}, "", closed, d)
    assert authenticate({"x-api-key": "gw"}, "", closed, d).key_hash == hash_key("gw")


def test_a_user_key_is_required_once_users_exist() -> None:
    d = _directory()
    p = authenticate({"authorization": f"Bearer {SECRET}"}, "", GatewaySettings(), d)
    assert (p.user_id, p.key_id, p.key_hash) == ("u_alice", "k_1", hash_key(SECRET))
    p.check_model("anything")  # no allow-list
    for headers in ({}, {"x-api-key": "unknown"}):
        with pytest.raises(AuthError) as info:
            authenticate(headers, "", GatewaySettings(), d)
        assert info.value.status == 401
    # the gateway-wide keys no longer open the door
    closed = GatewaySettings(key_hashes=[hash_key("gw")])
    with pytest.raises(AuthError):
        authenticate({"x-api-key": "gw"}, "", closed, d)
    # a removed owner: its key is unknown
    d.apply_user(ALICE.id, None)
    assert not d.active


@pytest.mark.parametrize(("change", "code", "words"), [
    ({"revoked": 1_700_000_000.0}, "key_revoked", "was revoked at 2023-11-14"),
    ({"expires": 1_700_000_000.0}, "key_expired", "expired at 2023-11-14"),
    ({"enabled": False}, "key_disabled", "is disabled"),
])
def test_refused_keys_say_why(change: dict[str, object], code: str, words: str) -> None:
    d = _directory(**change)
    with pytest.raises(AccessDenied) as info:
        authenticate({"x-api-key": SECRET}, "", GatewaySettings(), d)
    exc = info.value
    assert (exc.status, exc.code, exc.user_id, exc.key_id) == (403, code, "u_alice", "k_1")
    assert words in exc.message and "'laptop' (cs-aaaa…) of user alice" in exc.message
    assert exc.http_headers() == [(b"x-should-retry", b"false")]


def test_disabled_user_and_models() -> None:
    d = _directory(models=["claude-*", "gpt-5*"])
    p = authenticate({"x-goog-api-key": SECRET}, "", GatewaySettings(), d)
    p.check_model("claude-opus-4-8")
    p.check_model("gpt-5-codex")
    with pytest.raises(AccessDenied) as info:
        p.check_model("gemini-2.5-pro")
    assert info.value.code == "model_not_allowed"
    assert "may not use model 'gemini-2.5-pro' (allowed: claude-*, gpt-5*)" in info.value.message
    d.apply_user(ALICE.id, _enc.encode(msgspec.structs.replace(ALICE, enabled=False)))
    with pytest.raises(AccessDenied) as info:
        authenticate({"x-goog-api-key": SECRET}, "", GatewaySettings(), d)
    assert info.value.code == "user_disabled" and "user alice is disabled" in info.value.message
    # expiry is checked against the time of the request
    d = _directory(expires=2_000_000_000.0)
    authenticate({"x-api-key": SECRET}, "", GatewaySettings(), d, now=1_999_999_999.0)
    with pytest.raises(AccessDenied):
        authenticate({"x-api-key": SECRET}, "", GatewaySettings(), d, now=2_000_000_000.0)


def test_a_record_that_does_not_decode_fails_closed() -> None:
    d = _directory()
    d.apply_key("k_1", b'{"id":"k_1","name":"laptop"}')  # no hash: dropped
    with pytest.raises(AuthError):
        authenticate({"x-api-key": SECRET}, "", GatewaySettings(), d)
    # a newer writer's extra field is ignored, not fatal
    d.apply_key("k_1", _enc.encode({**msgspec.to_builtins(Key(
        id="k_1", name="laptop", user=ALICE.id, hash=hash_secret(SECRET))), "future": 1}))
    assert authenticate({"x-api-key": SECRET}, "", GatewaySettings(), d).key_id == "k_1"


def test_a_new_secret_replaces_the_old_hash() -> None:
    d = _directory()
    other = "cs-" + "b" * 43
    d.apply_key("k_1", _enc.encode(Key(id="k_1", name="laptop", user=ALICE.id,
                                       hash=hash_secret(other))))
    with pytest.raises(AuthError):
        authenticate({"x-api-key": SECRET}, "", GatewaySettings(), d)
    assert authenticate({"x-api-key": other}, "", GatewaySettings(), d).key_id == "k_1"
    d.apply_key("k_1", None)
    assert d.by_hash == {}


def test_the_403_in_each_dialect() -> None:
    exc = AccessDenied("API key revoked", "key_revoked")
    assert msgspec.json.decode(exc.render("anthropic")) == {
        "type": "error", "error": {"type": "permission_error", "message": "API key revoked"}}
    assert msgspec.json.decode(exc.render("openai-chat")) == {"error": {
        "message": "API key revoked", "type": "permission_denied", "param": None,
        "code": "key_revoked"}}
    assert msgspec.json.decode(exc.render("gemini")) == {"error": {
        "code": 403, "message": "API key revoked", "status": "PERMISSION_DENIED"}}
    assert exc.render("openai-responses") == error_body("openai-responses", 403,
                                                        "API key revoked", code="key_revoked")


# -- the config file --------------------------------------------------------------------------

def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_config_users_and_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = new_secret()
    monkeypatch.setenv("ALICE_KEY", secret)
    digest = hash_secret("cs-" + "z" * 43)
    cfg = load_config(_config(tmp_path, f'''
[[users]]
name = "alice"
display_name = "Alice A."
role = "admin"
budget = "20usd/month"
soft = "80%"

[[users]]
name = "bob"
enabled = false

[[keys]]
name = "laptop"
user = "alice"
secret = "env:ALICE_KEY"
models = ["claude-*"]
expires = 2030-01-31

[[keys]]
name = "ci"
user = "bob"
hash = "sha256:{digest.upper()}"
rpm = 10
'''))
    alice, bob = cfg.users
    assert (alice.id, alice.role, alice.display_name, alice.source) == (
        config_user_id("alice"), "admin", "Alice A.", "config")
    assert alice.limits.label() == "20usd/month, soft 80%"
    assert not bob.enabled
    laptop, ci = cfg.keys
    assert (laptop.hash, laptop.prefix, laptop.models) == (hash_secret(secret), secret[:7],
                                                           ["claude-*"])
    assert laptop.expires is not None and laptop.expires > time.time()
    assert (ci.hash, ci.prefix, ci.limits.rpm) == (digest, "", 10)


@pytest.mark.parametrize(("text", "where"), [
    ('[[users]]\nname = "a b"\n', "users[0].name"),
    ('[[users]]\nname = "a"\nrole = "root"\n', "users[0].role"),
    ('[[users]]\nname = "a"\n[[users]]\nname = "a"\n', "users[1].name"),
    ('[[users]]\nname = "a"\nbudget = "lots"\n', "users[0].budget"),
    ('[[users]]\nname = "a"\ncolour = "red"\n', "users[0].colour"),
    ('[[keys]]\nname = "k"\nuser = "a"\n', "keys[0]"),
    ('[[keys]]\nname = "k"\nuser = "a"\nsecret = "cs-literal-secret-in-file"\n',
     "keys[0].secret"),
    ('[[keys]]\nname = "k"\nuser = "a"\nsecret = "env:CS_TEST_UNSET_VAR"\n', "keys[0].secret"),
    ('[[keys]]\nname = "k"\nuser = "a"\nsecret = "env:CS_TEST_SHORT"\n', "keys[0].secret"),
    ('[[keys]]\nname = "k"\nuser = "a"\nhash = "md5:abc"\n', "keys[0].hash"),
    ('[[keys]]\nname = "k"\nuser = "a"\nhash = "sha256:' + "0" * 64 + '"\nexpires = "30d"\n',
     "keys[0].expires"),
])
def test_config_errors_name_the_table_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              text: str, where: str) -> None:
    monkeypatch.setenv("CS_TEST_SHORT", "short")
    monkeypatch.delenv("CS_TEST_UNSET_VAR", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, text))
    assert f": {where}" in str(info.value), str(info.value)


def test_codex_gets_the_status_it_stops_at() -> None:
    """Codex retries 401 and 403 five times; a refused user key is a 400 for it (final, and
    its message shown: bench/real_clients/users.py). Other clients keep 401/403, and today's
    gateway-key 401 stays as it was."""
    from edge.auth import for_client

    codex = {"originator": "codex_cli_rs", "user-agent": "codex_cli_rs/0.171.0"}
    d = _directory(revoked=1.0)
    for headers, want in ((codex, 400), ({"user-agent": "claude-cli/2.1.197"}, 403)):
        with pytest.raises(AccessDenied) as info:
            authenticate({"x-api-key": SECRET}, "", GatewaySettings(), d)
        for_client(info.value, headers)
        assert info.value.status == want
    with pytest.raises(AuthError) as unknown:
        authenticate({"x-api-key": "nope"}, "", GatewaySettings(), d)
    assert unknown.value.http_headers() == [(b"x-should-retry", b"false")]
    for_client(unknown.value, codex)
    assert unknown.value.status == 400
    with pytest.raises(AuthError) as gateway_key:
        authenticate({"x-api-key": "nope"}, "", GatewaySettings(key_hashes=[hash_key("gw")]))
    for_client(gateway_key.value, codex)
    assert gateway_key.value.status == 401 and gateway_key.value.http_headers() == []


def test_a_secret_moved_to_another_key_stays_valid() -> None:
    """The config file moved a secret from key k_1 to k_2: k_2 is written, then k_1 revoked;
    in either order of arrival the live key answers, and the revoked one's removal does not
    take the live one with it."""
    d = _directory()
    moved = Key(id="k_2", name="moved", user=ALICE.id, hash=hash_secret(SECRET))
    d.apply_key("k_2", _enc.encode(moved))
    d.apply_key("k_1", _enc.encode(Key(id="k_1", name="laptop", user=ALICE.id,
                                       hash=hash_secret(SECRET), revoked=1.0)))
    assert authenticate({"x-api-key": SECRET}, "", GatewaySettings(), d).key_id == "k_2"
    d.apply_key("k_1", None)
    assert authenticate({"x-api-key": SECRET}, "", GatewaySettings(), d).key_id == "k_2"
    d.apply_key("k_2", None)
    assert d.by_hash == {} and d._ids == {}
