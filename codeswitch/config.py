"""The TOML config file: ``[gateway]`` settings, ``[[providers]]``, ``[[users]]``, ``[[keys]]``
and ``[[routes]]`` tables.

Errors name the file, the line and the key. Loaded values are applied to NATS KV (the single
place every process reads config from); providers that came from the file carry
``source = "config"`` so that a provider removed from the file is removed from KV on the next
start, while providers added with the CLI are left alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from runtime.secrets import resolve_secret
from schemas.config import (
    GatewaySettings,
    ProviderConfig,
    RoutingSettings,
    UnifiedUpstream,
)
from schemas.routes import RouteError, RouteRule, check_rules
from schemas.users import (
    MIN_SECRET_CHARS,
    NAME_RE,
    User,
    config_user_id,
    hash_secret,
    secret_prefix,
)

if TYPE_CHECKING:
    from codeswitch.users import KeySpec

__all__ = ["ConfigError", "FileConfig", "LegacySettings", "load_config", "merge_legacy",
           "read_legacy_app_json"]


class ConfigError(Exception):
    def __init__(self, path: Path, message: str, line: int | None = None,
                 key: str | None = None) -> None:
        where = f"{path}" + (f":{line}" if line else "")
        text = f"{where}: " + (f"{key}: " if key else "") + message
        super().__init__(text)
        self.path, self.line, self.key = path, line, key


@dataclass
class FileConfig:
    path: Path | None = None
    host: str | None = None
    port: int | None = None
    settings: GatewaySettings = field(default_factory=GatewaySettings)
    providers: list[ProviderConfig] = field(default_factory=list)
    routing: RoutingSettings | None = None
    unified: UnifiedUpstream | None = None
    users: list[User] = field(default_factory=list)
    keys: list[KeySpec] = field(default_factory=list)
    routes: list[RouteRule] = field(default_factory=list)  # [[routes]], in the file's order
    raw: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    def route_error(self, exc: RouteError) -> ConfigError:
        """A route rule's problem as a config error with the file's line (a rule added with
        the CLI, after the file's, is named as such)."""
        assert self.path is not None
        if exc.index is not None and exc.index >= len(self.routes):
            return ConfigError(self.path, f"{exc} (a rule added with `codeswitch route add`; "
                               "`codeswitch route remove` it or fix the file)")
        key = (exc.key or "").split(".")[0] or None
        return ConfigError(self.path, f"rule {exc.rule!r}: {exc.message}",
                           _line_of(self.text, exc.index, key, "routes"),
                           f"routes[{exc.index}]" + (f".{exc.key}" if exc.key else "")
                           if exc.index is not None else "routes")


_GATEWAY_KEYS = {"host", "port", "api_keys", "max_body_mb", "pickup_timeout", "body_log",
                 "timezone"}


def _line_of(text: str, table_index: int | None, key: str | None,
             table: str = "providers") -> int | None:
    """Best-effort line number of ``key`` inside the n-th ``[[table]]`` (or ``[gateway]``)."""
    lines = text.splitlines()
    start = 0
    if table_index is not None:
        header = re.compile(rf"^\s*\[\[\s*{table}\s*\]\]")
        seen = -1
        for i, line in enumerate(lines):
            if header.match(line):
                seen += 1
                if seen == table_index:
                    start = i
                    break
        else:
            return None
    elif table != "providers":
        for i, line in enumerate(lines):
            if re.match(rf"^\s*\[\s*{table}\s*\]", line):
                start = i
                break
    if key is None:
        return start + 1
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for i in range(start, len(lines)):
        if i > start and re.match(r"^\s*\[", lines[i]):
            break
        if pattern.match(lines[i]):
            return i + 1
    return start + 1


def _field_of(exc: Exception) -> str | None:
    m = re.search(r"at `\$\.([A-Za-z_]+)", str(exc))
    if m:
        return m.group(1)
    m = re.search(r"field `([A-Za-z_]+)`", str(exc))
    if m:
        return m.group(1)
    # messages raised by ProviderConfig.__post_init__
    for needle, key in (("provider name", "name"), ("base_url", "base_url"),
                        ("weight", "weight")):
        if needle in str(exc):
            return key
    return None


def load_config(path: str | Path) -> FileConfig:
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(path, f"invalid TOML: {exc}", int(m.group(1)) if m else None) \
            from None
    cfg = FileConfig(path=path, raw=raw, text=text)
    unknown = set(raw) - {"gateway", "providers", "routing", "unified", "ledger", "alerts",
                          "clients", "users", "keys", "routes"}
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(path, "unknown top-level key", _line_of(text, None, key, ""), key)

    gw = raw.get("gateway", {})
    if not isinstance(gw, dict):
        raise ConfigError(path, "must be a table", _line_of(text, None, "gateway", ""),
                          "gateway")
    for key in gw:
        if key not in _GATEWAY_KEYS:
            raise ConfigError(path, f"unknown key (known: {', '.join(sorted(_GATEWAY_KEYS))})",
                              _line_of(text, None, key, "gateway"), f"gateway.{key}")
    try:
        cfg.host = gw.get("host")
        cfg.port = int(gw["port"]) if "port" in gw else None
        keys = [resolve_secret(str(k)) for k in gw.get("api_keys", [])]
        cfg.settings = GatewaySettings(
            key_hashes=[hashlib.sha256(k.encode()).hexdigest() for k in keys if k],
            max_body_bytes=int(float(gw.get("max_body_mb", 32)) * 1024 * 1024),
            pickup_timeout=float(gw.get("pickup_timeout", 5.0)),
            body_log=bool(gw.get("body_log", False)),
            timezone=_timezone(gw.get("timezone", "")),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(path, str(exc), _line_of(text, None, None, "gateway"),
                          "gateway") from None

    for section, struct in (("routing", RoutingSettings), ("unified", UnifiedUpstream)):
        if section not in raw:
            continue
        try:
            setattr(cfg, section, msgspec.convert(raw[section], struct))
        except msgspec.ValidationError as exc:
            where = _field_of(exc) or next((k for k in raw[section] if k in str(exc)), None)
            raise ConfigError(path, str(exc), _line_of(text, None, where, section),
                              section + (f".{where}" if where else "")) from None

    providers = raw.get("providers", [])
    if not isinstance(providers, list):
        raise ConfigError(path, "must be an array of tables: [[providers]]",
                          _line_of(text, None, "providers", ""), "providers")
    names: set[str] = set()
    for i, table in enumerate(providers):
        table = {**table, "source": "config"}
        try:
            # msgspec reports __post_init__'s ValueErrors as ValidationErrors too
            provider = msgspec.convert(table, ProviderConfig)
        except msgspec.ValidationError as exc:
            where = _field_of(exc)
            raise ConfigError(path, str(exc), _line_of(text, i, where), f"providers[{i}]"
                              + (f".{where}" if where else "")) from None
        if provider.name in names:
            raise ConfigError(path, f"duplicate provider name {provider.name!r}",
                              _line_of(text, i, "name"), f"providers[{i}].name")
        names.add(provider.name)
        cfg.providers.append(provider)
    _load_users(cfg, raw, path, text)
    _load_routes(cfg, raw, path, text)
    return cfg


def _load_routes(cfg: FileConfig, raw: dict[str, Any], path: Path, text: str) -> None:
    """``[[routes]]``: each a RouteRule; checked here for everything but the providers that
    only KV knows (``codeswitch up`` checks those before it applies the file)."""
    entries = raw.get("routes", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(path, "must be an array of tables: [[routes]]",
                          _line_of(text, None, "routes", ""), "routes")
    for i, entry in enumerate(entries):
        try:
            cfg.routes.append(msgspec.convert({**entry, "source": "config"}, RouteRule))
        except msgspec.ValidationError as exc:
            m = re.search(r"at `\$\.([A-Za-z_]+)(?:\.([A-Za-z_]+))?", str(exc))
            field_ = re.search(r"field `([A-Za-z_]+)`", str(exc))
            key = m.group(1) if m else field_.group(1) if field_ else None
            sub = m.group(2) if m and m.group(2) else None
            if key and key not in ("name", "to", "match", "model", "fallback"):
                sub, key = key, "match"  # an unknown key inside match
            raise ConfigError(path, str(exc), _line_of(text, i, key, "routes"),
                              f"routes[{i}]" + (f".{key}" if key else "")
                              + (f".{sub}" if sub else "")) from None
    try:
        check_rules(cfg.routes, None)
    except RouteError as exc:
        raise cfg.route_error(exc) from None


def _timezone(value: Any) -> str:
    """[gateway] timezone: an IANA zone name zoneinfo knows ("" = the machine's zone)."""
    if not isinstance(value, str):
        raise ValueError("timezone must be a string such as \"Europe/Berlin\"")
    if value:
        from schemas.quota import resolve_zone

        resolve_zone(value)  # ValueError for an unknown name
    return value


_LIMIT_KEYS = {"budget", "soft", "rpm", "tpm", "concurrency"}
_USER_KEYS = {"name", "display_name", "role", "enabled"} | _LIMIT_KEYS
_KEY_KEYS = {"name", "user", "secret", "hash", "models", "expires", "enabled"} | _LIMIT_KEYS


def _expiry(value: Any) -> float | None:
    """A TOML date or date-time, or an ISO string (local time unless it has an offset). Not a
    duration: the file is applied on every start, and "30d" would move each time."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time()).timestamp()
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value.strip()).timestamp()
        except ValueError:
            pass
    raise ValueError("expires must be a date or date-time (2026-01-31, 2026-01-31T18:00:00)")


def _load_users(cfg: FileConfig, raw: dict[str, Any], path: Path, text: str) -> None:
    """``[[users]]`` and ``[[keys]]`` (limits are budget, soft, rpm, tpm, concurrency)."""
    from codeswitch.users import KeySpec, UserError, limits_from

    def fail(table: str, i: int, key: str | None, message: str) -> ConfigError:
        return ConfigError(path, message, _line_of(text, i, key, table),
                           f"{table}[{i}]" + (f".{key}" if key else ""))

    def limits(table: str, i: int, entry: dict[str, Any]) -> Any:
        given = {k: entry[k] for k in _LIMIT_KEYS if k in entry}
        try:
            return limits_from(**given)
        except UserError as exc:
            raise fail(table, i, next(iter(given), None), str(exc)) from None

    for table, known in (("users", _USER_KEYS), ("keys", _KEY_KEYS)):
        entries = raw.get(table, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConfigError(path, f"must be an array of tables: [[{table}]]",
                              _line_of(text, None, table, ""), table)
        for i, entry in enumerate(entries):
            extra = sorted(set(entry) - known)
            if extra:
                raise fail(table, i, extra[0], f"unknown key (known: {', '.join(sorted(known))})")
            if not isinstance(entry.get("name"), str):
                raise fail(table, i, "name", "a name (a string) is required")
    seen: set[str] = set()
    for i, entry in enumerate(raw.get("users", [])):
        name = entry["name"]
        if name in seen:
            raise fail("users", i, "name", f"duplicate user name {name!r}")
        seen.add(name)
        try:
            user = msgspec.convert({
                "id": config_user_id(name), "name": name,
                "display_name": entry.get("display_name", ""),
                "role": entry.get("role", "user"), "enabled": entry.get("enabled", True),
                "source": "config"}, User)
        except msgspec.ValidationError as exc:
            where = _field_of(exc) or ("name" if "name" in str(exc) else None)
            raise fail("users", i, where, str(exc)) from None
        cfg.users.append(msgspec.structs.replace(user, limits=limits("users", i, entry)))
    seen_keys: set[tuple[str, str]] = set()
    hashes: set[str] = set()
    for i, entry in enumerate(raw.get("keys", [])):
        name, owner = entry["name"], entry.get("user")
        if not isinstance(owner, str):
            raise fail("keys", i, "user", "the owner's user name (a string) is required")
        if (owner, name) in seen_keys:
            raise fail("keys", i, "name", f"duplicate key {name!r} for user {owner!r}")
        seen_keys.add((owner, name))
        secret, digest = entry.get("secret"), entry.get("hash")
        if (secret is None) == (digest is None):
            raise fail("keys", i, None, 'give either secret = "env:NAME" or hash = '
                       '"sha256:<64 hex digits>"')
        prefix = ""
        if secret is not None:
            if not isinstance(secret, str) or not secret.startswith("env:"):
                raise fail("keys", i, "secret", 'must be "env:NAME" (a literal secret does not '
                           'belong in a file: give its hash = "sha256:…" instead)')
            value = os.environ.get(secret[4:], "")
            if not value:
                raise fail("keys", i, "secret", f"environment variable {secret[4:]} is not set")
            if len(value) < MIN_SECRET_CHARS:
                raise fail("keys", i, "secret", f"the key in {secret[4:]} is shorter than "
                           f"{MIN_SECRET_CHARS} characters (generate one with `codeswitch key "
                           "create`, or `python -c 'import secrets; print(\"cs-\" + "
                           "secrets.token_urlsafe(32))'`)")
            digest_hex, prefix = hash_secret(value), secret_prefix(value)
        else:
            m = re.fullmatch(r"sha256:([0-9a-fA-F]{64})", str(digest).strip())
            if not m:
                raise fail("keys", i, "hash", 'must be "sha256:" and 64 hex digits (sha256 of '
                           "the key, e.g. `printf %s \"$KEY\" | sha256sum`)")
            digest_hex = m.group(1).lower()
        if digest_hex in hashes:
            raise fail("keys", i, "secret" if secret else "hash",
                       "the same key is given twice")
        hashes.add(digest_hex)
        models = entry.get("models", [])
        if isinstance(models, str):
            models = [models]
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise fail("keys", i, "models", "must be a list of model globs")
        try:
            expires = _expiry(entry["expires"]) if "expires" in entry else None
        except ValueError as exc:
            raise fail("keys", i, "expires", str(exc)) from None
        if not isinstance(entry.get("enabled", True), bool):
            raise fail("keys", i, "enabled", "must be true or false")
        if not NAME_RE.match(name):
            raise fail("keys", i, "name", f"key name {name!r} must be 1-64 letters, digits, "
                       "'_', '.', '@' or '-'")
        cfg.keys.append(KeySpec(name=name, user=owner, hash=digest_hex, prefix=prefix,
                                models=models, expires=expires,
                                enabled=entry.get("enabled", True),
                                limits=limits("keys", i, entry)))


@dataclass
class LegacySettings:
    """What the original Code Switch's ``app.json`` says that we understand."""

    notes: list[str] = field(default_factory=list)  # for the banner
    unified: UnifiedUpstream | None = None
    body_log: bool | None = None


def read_legacy_app_json(app_json: Path) -> LegacySettings:
    """The original Code Switch kept its settings in ``~/.code-switch/app.json`` (our data
    directory too): ``new_api_enabled``/``new_api_url``/``new_api_token`` and
    ``enable_body_log``. An unreadable file is reported and ignored (it is the other program's
    file: never written)."""
    out = LegacySettings()
    try:
        doc = json.loads(app_json.read_text())
    except FileNotFoundError:
        return out
    except (OSError, ValueError) as exc:
        out.notes.append(f"{app_json} ignored: {exc}")
        return out
    if not isinstance(doc, dict):
        out.notes.append(f"{app_json} ignored: not a JSON object")
        return out
    if any(k in doc for k in ("new_api_enabled", "new_api_url")):
        try:
            out.unified = UnifiedUpstream(
                enabled=bool(doc.get("new_api_enabled", False)),
                url=str(doc.get("new_api_url") or "http://localhost:3000"),
                token=str(doc.get("new_api_token") or ""))
        except (TypeError, ValueError) as exc:
            out.notes.append(f"{app_json}: new_api_* ignored: {exc}")
    if "enable_body_log" in doc:
        out.body_log = bool(doc["enable_body_log"])
    return out


def merge_legacy(cfg: FileConfig, legacy: LegacySettings, source: Path) -> list[str]:
    """Take the legacy settings where the TOML config does not set them; say what was taken."""
    taken = list(legacy.notes)
    if legacy.unified is not None and cfg.unified is None:
        cfg.unified = legacy.unified
        taken.append(f"unified upstream {'on' if legacy.unified.enabled else 'off'} "
                     f"({legacy.unified.url}) from {source}")
    gateway = cfg.raw.get("gateway")
    if legacy.body_log is not None and not (isinstance(gateway, dict) and "body_log" in gateway):
        cfg.settings = msgspec.structs.replace(cfg.settings, body_log=legacy.body_log)
        taken.append(f"body_log {'on' if legacy.body_log else 'off'} from {source}")
    return taken
