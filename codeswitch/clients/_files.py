"""File plumbing shared by connect, MCP sync and skills: atomic writes, timestamped backups,
unified diffs and the small JSON state files kept in the data directory.

An atomic write goes to a temporary file in the same directory, is fsynced, gets the old
file's permission bits, and replaces the target with ``os.replace`` (then the directory is
fsynced). A crash at any point leaves either the old file or the new one, never a mix.
A target that is a symlink (dotfiles managers) is written through: the link stays a link.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import stat
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from codeswitch.clients._errors import FileChangedError

__all__ = [
    "atomic_write",
    "unchanged",
    "backup_file",
    "load_state",
    "read_text",
    "real_target",
    "save_state",
    "sha256_text",
    "unified_diff",
]

NEW_FILE_MODE = 0o600  # new client files hold a key: private by default


def real_target(path: Path) -> Path:
    """The file a write to ``path`` should replace: the end of a symlink chain."""
    try:
        if path.is_symlink():
            return path.resolve()
    except OSError:
        pass
    return path


def read_text(path: Path) -> str | None:
    """The file's text, or None when it does not exist. Newlines are kept as they are."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def sha256_text(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_ANY: Any = object()


def unchanged(path: Path, expect: str | None) -> None:
    """Raise FileChangedError unless ``path`` still holds ``expect`` (None: absent)."""
    if read_text(real_target(path)) != expect:
        raise FileChangedError(path)


def atomic_write(path: Path, data: str | bytes, *, mode: int | None = None,
                 expect: str | None = _ANY) -> None:
    """Replace ``path`` with ``data`` atomically, keeping its permission bits. With ``expect``
    (the text the new content was computed from, None for "absent"), the file is checked again
    just before the rename: if another program wrote it meanwhile, FileChangedError and
    nothing replaced."""
    target = real_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        try:
            mode = stat.S_IMODE(target.stat().st_mode)
        except FileNotFoundError:
            mode = NEW_FILE_MODE
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if expect is not _ANY:
            unchanged(target, expect)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def backup_file(path: Path, backups_dir: Path, label: str) -> Path | None:
    """Copy ``path`` to ``<backups_dir>/<UTC timestamp>.<label>.<name>``; None if absent."""
    text = read_text(path)
    if text is None:
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    dest = backups_dir / f"{stamp}.{label}.{path.name.lstrip('.') or 'file'}"
    atomic_write(dest, text, mode=0o600)
    return dest


def unified_diff(path: Path, old: str | None, new: str | None) -> str:
    """A unified diff from ``old`` to ``new``; /dev/null stands for a missing file."""
    a = [] if old is None else old.splitlines(keepends=True)
    b = [] if new is None else new.splitlines(keepends=True)
    lines = list(
        difflib.unified_diff(
            a, b,
            fromfile=str(path) if old is not None else "/dev/null",
            tofile=str(path) if new is not None else "/dev/null",
        )
    )
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in lines)


def load_state(path: Path) -> dict[str, Any]:
    """A small JSON document from the data directory ({} when absent or unreadable)."""
    text = read_text(path)
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def save_state(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=0o600)
