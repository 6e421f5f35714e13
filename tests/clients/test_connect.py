"""connect / disconnect on a temporary HOME with real-world files."""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path

import pytest

from codeswitch.clients import connect as conn
from codeswitch.clients._dotenv import DotenvDoc
from codeswitch.clients._jsonedit import JsonDoc
from tests.clients.conftest import snapshot


def _json(path: Path, comments: bool = False) -> dict:
    return JsonDoc(path.read_text(), path, comments=comments).data()


def test_connect_then_disconnect_restores_every_file_byte_for_byte(home: Path, data_dir: Path,
                                                                   run) -> None:
    before = snapshot(home)
    result = run("connect", "all", "--key", "sk-gw")
    assert result.exit_code == 0, result.output
    assert "claude: connected" in result.output and "gemini: connected" in result.output

    settings = _json(home / ".claude" / "settings.json")
    assert settings["env"] == {"DISABLE_TELEMETRY": "1",
                               "ANTHROPIC_BASE_URL": "http://127.0.0.1:18100",
                               "ANTHROPIC_AUTH_TOKEN": "sk-gw"}
    assert settings["hooks"]["PostToolUse"][0]["matcher"] == "Edit"
    codex = tomllib.loads((home / ".codex" / "config.toml").read_text())
    assert codex["model_provider"] == "codeswitch"
    assert codex["model_providers"]["codeswitch"] == {
        "name": "codeswitch gateway", "base_url": "http://127.0.0.1:18100/v1",
        "wire_api": "responses", "env_key": "CODESWITCH_API_KEY"}
    assert codex["model_providers"]["openrouter"]["env_key"] == "OPENROUTER_API_KEY"
    assert "# servers I added myself" in (home / ".codex" / "config.toml").read_text()
    assert DotenvDoc((home / ".codex" / ".env").read_text(), Path()).get(
        ["CODESWITCH_API_KEY"]) == (True, "sk-gw")
    env = DotenvDoc((home / ".gemini" / ".env").read_text(), Path())
    assert env.get(["GOOGLE_GEMINI_BASE_URL"]) == (True, "http://127.0.0.1:18100")
    assert env.get(["GEMINI_API_KEY"]) == (True, "sk-gw")
    assert env.get(["GEMINI_MODEL"]) == (True, "gemini-2.5-pro")
    gem = _json(home / ".gemini" / "settings.json", comments=True)
    assert gem["security"]["auth"]["selectedType"] == "gemini-api-key"
    assert "/* logged in with Google */" in (home / ".gemini" / "settings.json").read_text()

    result = run("disconnect", "all")
    assert result.exit_code == 0, result.output
    assert snapshot(home) == before  # including the .env Codex did not have before
    assert json.loads((data_dir / "connect-state.json").read_text())["clients"] == {}


def test_connect_and_disconnect_are_idempotent(home: Path, data_dir: Path, run) -> None:
    before = snapshot(home)
    assert run("connect", "claude").exit_code == 0
    once = snapshot(home)
    backups = sorted((data_dir / "backups").iterdir())
    second = run("connect", "claude")
    assert "claude: already connected" in second.output
    assert snapshot(home) == once
    assert sorted((data_dir / "backups").iterdir()) == backups  # no write, no new backup
    assert run("disconnect", "claude").exit_code == 0
    assert snapshot(home) == before
    again = run("disconnect", "claude")
    assert again.exit_code == 0 and "not connected by codeswitch" in again.output
    assert snapshot(home) == before


def test_dry_run_prints_a_diff_and_writes_nothing(home: Path, data_dir: Path, run) -> None:
    before = snapshot(home)
    result = run("connect", "all", "--dry-run", "--base-url", "http://127.0.0.1:9999")
    assert result.exit_code == 0
    assert '+    "ANTHROPIC_BASE_URL": "http://127.0.0.1:9999",' in result.output
    assert '+model_provider = "codeswitch"' in result.output
    assert "--- /dev/null" in result.output  # Codex's .env would be created
    assert snapshot(home) == before
    assert not data_dir.exists()
    run("connect", "codex")
    connected = snapshot(home)
    result = run("disconnect", "codex", "--dry-run")
    assert '-model_provider = "codeswitch"' in result.output
    assert snapshot(home) == connected


def test_backup_is_timestamped_and_permissions_are_kept(home: Path, data_dir: Path,
                                                        run) -> None:
    settings = home / ".claude" / "settings.json"
    os.chmod(settings, 0o640)
    original = settings.read_bytes()
    run("connect", "claude")
    assert stat.S_IMODE(settings.stat().st_mode) == 0o640
    (backup,) = (data_dir / "backups").iterdir()
    assert backup.name.endswith(".claude.settings.json") and backup.name[:8].isdigit()
    assert backup.read_bytes() == original
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("relpath", "content", "needle"),
    [
        (".claude/settings.json", '{\n  "env": {"A": "1"},\n}\n', "settings.json: cannot parse"),
        (".claude/settings.json", '{"env": ["not", "an", "object"]}', "'env' is not an object"),
        (".codex/config.toml", 'model = "x"\n[broken\n', "config.toml: cannot parse"),
        (".gemini/settings.json", "{ // ok\n  \"security\": {\n", "settings.json: cannot parse"),
    ],
)
def test_malformed_file_is_refused_and_nothing_is_written(home: Path, data_dir: Path, run,
                                                          relpath: str, content: str,
                                                          needle: str) -> None:
    (home / relpath).write_text(content)
    before = snapshot(home)
    result = run("connect", "all")
    assert result.exit_code == 1
    assert needle in result.output and "left untouched" in result.output
    assert "Traceback" not in result.output
    assert snapshot(home) == before  # not even the well-formed files of the other clients
    assert not (data_dir / "connect-state.json").exists()


def test_crash_during_write_leaves_the_old_file(home: Path, data_dir: Path, run,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    settings = home / ".claude" / "settings.json"
    original = settings.read_bytes()
    real_replace = os.replace

    def crashing_replace(src, dst):  # type: ignore[no-untyped-def]
        if Path(dst) == settings:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    result = run("connect", "claude")
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert settings.read_bytes() == original
    assert [p.name for p in settings.parent.iterdir()] == ["settings.json"]  # no temp left
    monkeypatch.setattr(os, "replace", real_replace)
    # the ownership record written before the crash does not confuse a later disconnect
    result = run("disconnect", "claude")
    assert result.exit_code == 0
    assert settings.read_bytes() == original


def test_disconnect_keeps_later_edits_and_user_changed_keys(home: Path, run) -> None:
    settings = home / ".claude" / "settings.json"
    run("connect", "claude")
    doc = JsonDoc(settings.read_text(), settings)
    doc.set(["model"], "sonnet")  # an unrelated edit by the user after connect
    doc.set(["env", "ANTHROPIC_AUTH_TOKEN"], "user-changed-this")
    settings.write_text(doc.text)
    result = run("disconnect", "claude")
    assert "ANTHROPIC_AUTH_TOKEN was changed after connect; left as is" in result.output
    data = _json(settings)
    assert data["model"] == "sonnet"
    assert data["env"] == {"DISABLE_TELEMETRY": "1", "ANTHROPIC_AUTH_TOKEN": "user-changed-this"}
    expected = JsonDoc(Path(settings).read_text(), settings)
    expected.delete(["env", "ANTHROPIC_AUTH_TOKEN"])
    expected.set(["model"], "opus")
    from tests.clients.conftest import CLAUDE_SETTINGS
    assert expected.text == CLAUDE_SETTINGS  # everything else is byte-identical


def test_previous_values_are_restored_exactly(home: Path, run) -> None:
    env = home / ".gemini" / ".env"
    original = env.read_text()
    said = run("connect", "gemini", "--key", "gw").output
    assert 'export GEMINI_API_KEY="gw"' in env.read_text()
    # Gemini CLI skips ~/.gemini/.env in folders it does not trust: the user is told how
    assert "trusts" in said and "GEMINI_CLI_TRUST_WORKSPACE=true" in said
    # an unrelated edit forces the key-by-key path instead of restoring the backup
    env.write_text(env.read_text() + "EXTRA=1\n")
    run("disconnect", "gemini")
    assert env.read_text() == original + "EXTRA=1\n"
    gem = _json(home / ".gemini" / "settings.json", comments=True)
    assert gem["security"]["auth"]["selectedType"] == "oauth-personal"


def test_new_files_and_directories_are_removed_on_disconnect(tmp_path: Path, run,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    user = tmp_path / "empty-home"
    user.mkdir()
    monkeypatch.setenv("HOME", str(user))
    monkeypatch.setenv("CODESWITCH_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "codex-home"))
    for var in ("CLAUDE_CONFIG_DIR", "GEMINI_CLI_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert "no coding CLI detected" in run("connect").output
    assert run("connect", "gemini").exit_code == 0
    assert run("connect", "codex").exit_code == 0
    assert (user / ".gemini" / "settings.json").exists()
    assert (tmp_path / "codex-home" / "config.toml").exists()  # CODEX_HOME is honoured
    assert not (user / ".codex").exists()
    assert stat.S_IMODE((user / ".gemini" / ".env").stat().st_mode) == 0o600
    run("disconnect", "all")
    assert list(user.iterdir()) == []
    assert not (tmp_path / "codex-home").exists()


def test_symlinked_settings_stay_a_symlink(home: Path, tmp_path: Path, run) -> None:
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    settings = home / ".claude" / "settings.json"
    real = dotfiles / "claude-settings.json"
    real.write_bytes(settings.read_bytes())
    settings.unlink()
    settings.symlink_to(real)
    original = real.read_bytes()
    run("connect", "claude")
    assert settings.is_symlink()
    assert "ANTHROPIC_BASE_URL" in real.read_text()
    run("disconnect", "claude")
    assert settings.is_symlink() and real.read_bytes() == original


def test_connect_all_for_up(home: Path, data_dir: Path) -> None:
    lines = conn.connect_all("http://127.0.0.1:18100", "k", home=data_dir)
    assert lines[:3] == [
        f"claude: connected ({home / '.claude' / 'settings.json'})",
        f"codex: connected ({home / '.codex' / 'config.toml'}, {home / '.codex' / '.env'})",
        f"gemini: connected ({home / '.gemini' / '.env'}, {home / '.gemini' / 'settings.json'})",
    ]
    assert conn.connect_all("http://127.0.0.1:18100", "k", home=data_dir)[0].startswith(
        "claude: already connected")


def test_claude_config_dir_is_honoured(home: Path, tmp_path: Path, run,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "xdg-claude"
    cfg.mkdir()
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(cfg))
    run("connect", "claude")
    assert "ANTHROPIC_BASE_URL" in (cfg / "settings.json").read_text()
    assert "ANTHROPIC_BASE_URL" not in (home / ".claude" / "settings.json").read_text()
