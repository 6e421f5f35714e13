"""Start at login: ``codeswitch service install|uninstall|status``.

Linux: a systemd user unit, ``$XDG_CONFIG_HOME/systemd/user/codeswitch.service`` (default
``~/.config``), enabled and started with ``systemctl --user``; its output goes to the journal
(``journalctl --user -u codeswitch``). macOS: a launchd agent,
``~/Library/LaunchAgents/dev.codeswitch.gateway.plist``, loaded with ``launchctl``; its output
goes to ``<home>/logs/service.log`` (launchd has no journal for an agent's stdout).

The unit runs ``codeswitch up`` with the data directory, port and config file given at install
time (the same interpreter), restarts it when it fails, and stops it with SIGINT (``up``'s
orderly stop). A user service does not see the login shell's variables: the provider keys
that ``env:NAME`` references go into ``<home>/service.env`` (``NAME=value`` lines, read by
systemd's ``EnvironmentFile``). ``auto_start`` in the original Code Switch's ``app.json`` is
honoured once, on the first ``codeswitch up`` that sees it: the unit is installed and enabled
(not started: that ``up`` is the gateway), and ``<home>/service-auto-start`` remembers it was
done, so an ``uninstall`` stays uninstalled.

``systemd_unit`` and ``launchd_plist`` are pure.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from xml.sax.saxutils import escape

__all__ = ["LAUNCHD_LABEL", "UNIT_NAME", "ServiceError", "auto_start_once", "install",
           "launchd_plist", "service_file", "status", "systemd_unit", "uninstall"]

UNIT_NAME = "codeswitch.service"
LAUNCHD_LABEL = "dev.codeswitch.gateway"
_AUTO_MARK = "service-auto-start"


class ServiceError(Exception):
    """The service cannot be (un)installed here: the message says why and what to do."""


def _command(home: Path, port: int | None, config: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "codeswitch", "up", "--home", str(home)]
    if port:
        cmd += ["--port", str(port)]
    if config is not None:
        cmd += ["--config", str(config)]
    return cmd


def systemd_unit(home: Path, port: int | None = None, config: Path | None = None) -> str:
    return "\n".join([
        "[Unit]",
        "Description=codeswitch LLM gateway (codeswitch up)",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={shlex.join(_command(home, port, config))}",
        f"Environment=CODESWITCH_HOME={home}",
        # a user service does not see the shell's variables: provider keys (env:NAME) go here
        f"EnvironmentFile=-{home / 'service.env'}",
        "KillSignal=SIGINT",
        "TimeoutStopSec=60",
        "Restart=on-failure",
        "RestartSec=5",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])


def launchd_plist(home: Path, port: int | None = None, config: Path | None = None) -> str:
    args = "".join(f"\n    <string>{escape(a)}</string>" for a in _command(home, port, config))
    log = escape(str(home / "logs" / "service.log"))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key><string>{LAUNCHD_LABEL}</string>
  <key>ProgramArguments</key>
  <array>{args}
  </array>
  <key>EnvironmentVariables</key>
  <dict><key>CODESWITCH_HOME</key><string>{escape(str(home))}</string></dict>
  <key>RunAtLoad</key><true/>
  <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>
  <key>StandardOutPath</key><string>{log}</string>
  <key>StandardErrorPath</key><string>{log}</string>
</dict>
</plist>
"""


def _macos() -> bool:
    return sys.platform == "darwin"


def service_file() -> Path:
    if _macos():
        return Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "systemd" / "user" / UNIT_NAME


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        raise ServiceError(f"`{argv[0]}` is not available here: the unit file is written, "
                           f"but enable it yourself (or run `codeswitch up` at login another "
                           "way)")
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def _check(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise ServiceError(f"`{' '.join(done.args)}` failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()}")


def install(home: Path, port: int | None = None, config: Path | None = None, *,
            start: bool = True) -> list[str]:
    """Write the unit, enable it (and start it unless ``start`` is false). The lines to show."""
    path = service_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = launchd_plist(home, port, config) if _macos() else systemd_unit(home, port, config)
    path.write_text(text)
    lines = [f"wrote {path}"]
    if _macos():
        (home / "logs").mkdir(parents=True, exist_ok=True, mode=0o700)
        if start:
            _check(_run("launchctl", "load", "-w", str(path)))
            lines.append(f"loaded: starts at login; logs in {home / 'logs' / 'service.log'}")
        else:
            lines.append("starts at the next login")
        return lines
    _check(_run("systemctl", "--user", "daemon-reload"))
    _check(_run("systemctl", "--user", "enable", *(["--now"] if start else []), UNIT_NAME))
    lines.append(f"enabled{' and started' if start else ''}: starts at login; logs: "
                 "journalctl --user -u codeswitch")
    return lines


def uninstall() -> list[str]:
    path = service_file()
    if not path.exists():
        return [f"not installed ({path} does not exist)"]
    if _macos():
        _run("launchctl", "unload", "-w", str(path))
    else:
        _run("systemctl", "--user", "disable", "--now", UNIT_NAME)
    path.unlink()
    if not _macos():
        _run("systemctl", "--user", "daemon-reload")
    return [f"removed {path}; the gateway no longer starts at login"]


def status() -> tuple[bool, str]:
    """(installed, what the service manager says)."""
    path = service_file()
    if not path.exists():
        return False, f"not installed ({path} does not exist): `codeswitch service install`"
    try:
        done = (_run("launchctl", "list", LAUNCHD_LABEL) if _macos()
                else _run("systemctl", "--user", "status", "--no-pager", UNIT_NAME))
    except ServiceError as exc:
        return True, f"{path} installed; {exc}"
    return True, f"{path}\n{(done.stdout or done.stderr).strip()}"


def auto_start_once(home: Path, port: int | None, config: Path | None) -> str | None:
    """``app.json``'s ``auto_start``, honoured on the first ``up`` that sees it; the banner's
    line, or None."""
    mark = home / _AUTO_MARK
    try:
        wanted = json.loads((home / "app.json").read_text()).get("auto_start") is True
    except (OSError, ValueError, AttributeError):
        return None
    if not wanted or mark.exists():
        return None
    mark.write_text("installed by the first `codeswitch up` (app.json auto_start)\n")
    if service_file().exists():
        return None
    try:
        install(home, port, config, start=False)
    except (ServiceError, OSError) as exc:
        return f"app.json auto_start: not installed ({exc})"
    return ("app.json auto_start: starts at login from now on (`codeswitch service "
            "uninstall` to stop that)")
