"""The config file: every example we ship loads; errors name the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeswitch.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_example_loads() -> None:
    cfg = load_config(ROOT / "codeswitch.example.toml")
    assert [p.name for p in cfg.providers] == ["anthropic", "openai", "gemini", "backup"]
    backup = cfg.providers[-1]
    assert backup.priority == 2 and backup.upstream_model("claude-opus-4-8") == \
        "anthropic/claude-sonnet-4.5"
    assert all(p.source == "config" for p in cfg.providers)
    assert cfg.port == 18100


@pytest.mark.parametrize(("text", "line", "key"), [
    ('[[providers]]\nname = "a"\ndialect = "klingon"\nbase_url = "http://x"\n', 3,
     "providers[0].dialect"),
    ('[[providers]]\nname = "a"\ndialect = "gemini"\nbase_url = "ftp://x"\n', 4,
     "providers[0].base_url"),
    ('[[providers]]\nname = "a b"\ndialect = "gemini"\nbase_url = "http://x"\n', 2,
     "providers[0].name"),
    ('[[providers]]\nname = "a"\ndialect = "gemini"\nbase_url = "http://x"\n\n'
     '[[providers]]\nname = "b"\ndialect = "gemini"\nbase_url = "http://x"\ncolour = 1\n', 10,
     "providers[1].colour"),
    ('[[providers]]\nname = "a"\ndialect = "gemini"\nbase_url = "http://x"\n\n'
     '[[providers]]\nname = "a"\ndialect = "gemini"\nbase_url = "http://x"\n', 7,
     "providers[1].name"),
    ('[gateway]\nport = 1\nbogus = 2\n', 3, "gateway.bogus"),
    ('[gateway\nport = 1\n', 1, None),
])
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, line: int,
                                       key: str | None) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == line
    assert info.value.key == key
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_env_secrets_and_gateway_keys_are_hashed(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_KEY", "let-me-in")
    path = tmp_path / "c.toml"
    path.write_text('[gateway]\napi_keys = ["env:GW_KEY", "literal"]\nmax_body_mb = 2\n')
    cfg = load_config(path)
    assert len(cfg.settings.key_hashes) == 2
    assert "let-me-in" not in repr(cfg.settings)
    assert cfg.settings.max_body_bytes == 2 * 1024 * 1024


# The original Code Switch's ~/.code-switch/app.json (its BackendAppSettings, snake_case)
APP_JSON = ('{"show_heatmap": true, "show_home_title": true, "auto_start": false, '
            '"enable_body_log": true, "new_api_enabled": true, '
            '"new_api_url": "http://localhost:3000", "new_api_token": "sk-newapi-SECRET"}')


def test_legacy_app_json_is_taken_where_the_toml_is_silent(tmp_path: Path) -> None:
    from codeswitch.config import FileConfig, merge_legacy, read_legacy_app_json

    app = tmp_path / "app.json"
    app.write_text(APP_JSON)
    legacy = read_legacy_app_json(app)
    cfg = FileConfig()
    notes = merge_legacy(cfg, legacy, app)
    assert cfg.unified is not None and cfg.unified.enabled
    assert (cfg.unified.url, cfg.unified.token) == ("http://localhost:3000", "sk-newapi-SECRET")
    assert cfg.settings.body_log is True
    assert len(notes) == 2 and not any("SECRET" in n for n in notes)
    toml = tmp_path / "c.toml"
    toml.write_text('[gateway]\nbody_log = false\n\n[unified]\nenabled = false\n'
                    'url = "http://gw.internal:3000"\n')
    cfg = load_config(toml)
    assert merge_legacy(cfg, legacy, app) == []  # the TOML says both: it wins
    assert cfg.unified is not None and not cfg.unified.enabled and not cfg.settings.body_log


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"new_api_url": "ftp://x"}'])
def test_unreadable_legacy_app_json_is_reported_and_ignored(tmp_path: Path, text: str) -> None:
    from codeswitch.config import FileConfig, merge_legacy, read_legacy_app_json

    app = tmp_path / "app.json"
    app.write_text(text)
    cfg = FileConfig()
    notes = merge_legacy(cfg, read_legacy_app_json(app), app)
    assert cfg.unified is None and len(notes) == 1 and "ignored" in notes[0]
    assert app.read_text() == text  # the other program's file is never written
    assert read_legacy_app_json(tmp_path / "absent.json").notes == []
