"""[gateway] timezone in the config file: kept as given, an unknown zone is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeswitch.config import ConfigError, load_config


def test_timezone(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[gateway]\ntimezone = "Europe/Berlin"\n')
    assert load_config(path).settings.timezone == "Europe/Berlin"
    path.write_text("[gateway]\nport = 1\n")
    assert load_config(path).settings.timezone == ""  # the machine's zone
    path.write_text('[gateway]\ntimezone = "Mars/Olympus"\n')
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        load_config(path)
