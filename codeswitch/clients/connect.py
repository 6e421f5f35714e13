"""Connect and disconnect the CLIs: plan the edits (pure apart from reading files), then
apply them with backups and atomic writes.

Ownership lives in ``<home>/connect-state.json``: for every key we set, whether it existed,
its previous value and the value we wrote; for every file, the hash of the original and of
what we wrote, and the backup of the original. ``disconnect`` puts back the original bytes
when the file is exactly as we left it; otherwise it restores our keys one by one and leaves
alone any key the user changed after us. Both are idempotent.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codeswitch.clients import claude, codex, gemini
from codeswitch.clients._docs import is_empty, open_doc
from codeswitch.clients._edits import KeyEdit
from codeswitch.clients._errors import ClientsError
from codeswitch.clients._files import (
    atomic_write,
    backup_file,
    load_state,
    read_text,
    real_target,
    sha256_text,
    unchanged,
    unified_diff,
)
from codeswitch.clients.paths import ClientPaths
from runtime.home import home_dir

__all__ = [
    "CLIENT_NAMES",
    "DEFAULT_BASE_URL",
    "DEFAULT_KEY",
    "FileChange",
    "Plan",
    "apply_plan",
    "connect",
    "connect_all",
    "detected",
    "disconnect",
    "edits_for",
    "load_clients_state",
    "plan_connect",
    "plan_disconnect",
]

DEFAULT_BASE_URL = "http://127.0.0.1:18100"
DEFAULT_KEY = "codeswitch-local"  # any value works when the gateway has no keys configured
STATE_FILE = "connect-state.json"

_EDITS: dict[str, Callable[[ClientPaths, str, str], list[KeyEdit]]] = {
    claude.NAME: claude.edits,
    codex.NAME: codex.edits,
    gemini.NAME: gemini.edits,
}
_PRESENT: dict[str, Callable[[ClientPaths], bool]] = {
    claude.NAME: claude.present,
    codex.NAME: codex.present,
    gemini.NAME: gemini.present,
}
CLIENT_NAMES: tuple[str, ...] = tuple(_EDITS)


@dataclass
class FileChange:
    path: Path
    old: str | None
    new: str | None
    remove_dirs: list[Path] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def diff(self) -> str:
        return unified_diff(self.path, self.old, self.new) if self.changed else ""


@dataclass
class Plan:
    client: str
    changes: list[FileChange]
    state: dict[str, Any] | None  # the client's new ownership record; None drops it
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(c.changed for c in self.changes)

    def diff(self) -> str:
        return "".join(c.diff() for c in self.changes)


def _missing_dirs(path: Path) -> list[str]:
    out: list[str] = []
    d = path.parent
    while not d.exists() and d != d.parent:
        out.append(str(d))
        d = d.parent
    return out


def _created_ancestor(doc: Any, keys: list[str]) -> list[str] | None:
    """The highest container on ``keys`` that does not exist yet (we will create it)."""
    for i in range(1, len(keys)):
        if not doc.get(keys[:i])[0]:
            return keys[:i]
    return None


def plan_connect(client: str, edits: list[KeyEdit], clients_state: dict[str, Any]) -> Plan:
    record = copy.deepcopy(clients_state.get(client) or {"files": {}})
    files: dict[str, Any] = record.setdefault("files", {})
    changes: list[FileChange] = []
    notes: list[str] = []
    grouped: dict[Path, list[KeyEdit]] = {}
    for edit in edits:
        grouped.setdefault(edit.path, []).append(edit)
    for path, group in grouped.items():
        text = read_text(real_target(path))
        doc = open_doc(group[0].fmt, text, path)
        fstate = files.get(str(path))
        # The fast restore (original bytes back) stays valid only while the file holds
        # nothing but the original plus our keys: someone else's edit in between disables it.
        clean = fstate is None or sha256_text(text) in (
            fstate.get("written_sha"), fstate.get("original_sha"))
        if fstate is None:
            fstate = {
                "fmt": group[0].fmt,
                "existed": text is not None,
                "original_sha": sha256_text(text),
                "original_backup": None,
                "created_dirs": _missing_dirs(real_target(path)),
                "keys": [],
            }
        entries = {tuple(e["keys"]): e for e in fstate["keys"]}
        for edit in group:
            keys = list(edit.keys)
            entry = entries.get(tuple(keys))
            if entry is None:
                had, previous = doc.get(keys)
                entry = {"keys": keys, "had": had, "previous": previous,
                         "created": _created_ancestor(doc, keys)}
                fstate["keys"].append(entry)
                entries[tuple(keys)] = entry
            entry["written"] = edit.value
            doc.set(keys, edit.value)
        fstate["written_sha"] = sha256_text(doc.text) if clean else None
        files[str(path)] = fstate
        changes.append(FileChange(path, text, doc.text))
        if client == claude.NAME and hasattr(doc, "data"):
            notes += claude.warnings(doc.data())
    return Plan(client, changes, record, notes)


def _restore_file(path: Path, fstate: dict[str, Any], notes: list[str]) -> FileChange | None:
    target = real_target(path)
    text = read_text(target)
    dirs = [Path(d) for d in fstate.get("created_dirs", [])]
    if text is None:
        notes.append(f"{path} no longer exists; nothing to restore there")
        return None
    current = sha256_text(text)
    if current == fstate.get("original_sha"):
        return FileChange(path, text, text)
    if current == fstate.get("written_sha"):  # untouched since we wrote it: exact bytes back
        if not fstate["existed"]:
            return FileChange(path, text, None, dirs)
        backup = fstate.get("original_backup")
        original = read_text(Path(backup)) if backup else None
        if original is not None and sha256_text(original) == fstate["original_sha"]:
            return FileChange(path, text, original)
    doc = open_doc(fstate["fmt"], text, path)
    for entry in reversed(fstate["keys"]):
        keys = entry["keys"]
        exists, value = doc.get(keys)
        if exists and value == entry["written"]:
            if entry["had"]:
                doc.set(keys, entry["previous"])
            else:
                doc.delete(keys)
                created = entry.get("created")
                if created and doc.get(created) == (True, {}):
                    doc.delete(created)
        elif (entry["had"] and exists and value == entry["previous"]) or (
            not entry["had"] and not exists
        ):
            continue
        else:
            notes.append(f"{path}: {'.'.join(keys)} was changed after connect; left as is")
    if not fstate["existed"] and is_empty(doc) and not doc.text.strip("{}\n\t "):
        return FileChange(path, text, None, dirs)
    return FileChange(path, text, doc.text)


def plan_disconnect(client: str, clients_state: dict[str, Any]) -> Plan:
    record = clients_state.get(client)
    if not record:
        return Plan(client, [], None, [f"{client}: not connected by codeswitch; nothing to do"])
    notes: list[str] = []
    changes = [
        change
        for key, fstate in record.get("files", {}).items()
        if (change := _restore_file(Path(key), fstate, notes)) is not None
    ]
    return Plan(client, changes, None, notes)


def apply_plan(plan: Plan, home: Path) -> None:
    """Back up, record ownership, then write. A failed write leaves the old file in place; a
    file another program rewrote since the plan read it is not touched (FileChangedError)."""
    for change in plan.changes:
        if change.changed:
            unchanged(change.path, change.old)
    state_path = home / STATE_FILE
    state = load_state(state_path)
    files = (plan.state or {}).get("files", {})
    for change in plan.changes:
        if not change.changed:
            continue
        saved = backup_file(real_target(change.path), home / "backups", plan.client)
        fstate = files.get(str(change.path))
        if fstate and fstate.get("original_backup") is None and saved is not None \
                and sha256_text(change.old) == fstate.get("original_sha"):
            fstate["original_backup"] = str(saved)
    clients = state.setdefault("clients", {})
    if plan.state is None:
        clients.pop(plan.client, None)
    else:
        clients[plan.client] = plan.state
    atomic_write(state_path, json.dumps(state, indent=2, sort_keys=True, default=str) + "\n",
                 mode=0o600)
    for change in plan.changes:
        if not change.changed:
            continue
        target = real_target(change.path)
        if change.new is None:
            target.unlink(missing_ok=True)
            for d in change.remove_dirs:
                with contextlib.suppress(OSError):
                    d.rmdir()  # only when empty
        else:
            atomic_write(target, change.new, expect=change.old)


def load_clients_state(home: Path) -> dict[str, Any]:
    clients = load_state(home / STATE_FILE).get("clients", {})
    return clients if isinstance(clients, dict) else {}


def edits_for(client: str, paths: ClientPaths, base_url: str, key: str | None) -> list[KeyEdit]:
    return _EDITS[client](paths, base_url, key or DEFAULT_KEY)


def connect(client: str, *, base_url: str, key: str | None, home: Path,
            paths: ClientPaths | None = None, dry_run: bool = False) -> Plan:
    paths = paths or ClientPaths.discover()
    edits = edits_for(client, paths, base_url, key)
    plan = plan_connect(client, edits, load_clients_state(home))
    if not dry_run:
        apply_plan(plan, home)
    return plan


def disconnect(client: str, *, home: Path, dry_run: bool = False) -> Plan:
    plan = plan_disconnect(client, load_clients_state(home))
    if not dry_run:
        apply_plan(plan, home)
    return plan


def detected(paths: ClientPaths | None = None) -> list[str]:
    """Clients whose config directory exists or whose binary is on PATH."""
    paths = paths or ClientPaths.discover()
    return [n for n in CLIENT_NAMES if _PRESENT[n](paths) or shutil.which(n)]


def connect_all(base_url: str, key: str | None, *, home: Path | None = None) -> list[str]:
    """Connect every detected client (for ``codeswitch up --connect``); one line per client.
    A client whose file cannot be edited is reported and skipped, the others still connect."""
    home = home_dir(home)
    paths = ClientPaths.discover()
    lines: list[str] = []
    for name in detected(paths):
        try:
            plan = connect(name, base_url=base_url, key=key, home=home, paths=paths)
        except ClientsError as exc:
            lines.append(f"{name}: not connected: {exc}")
            continue
        files = ", ".join(str(c.path) for c in plan.changes)
        verb = "connected" if plan.changed else "already connected"
        lines.append(f"{name}: {verb} ({files})")
        lines += plan.notes
    return lines
