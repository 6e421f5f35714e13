"""Write the MCP list into the clients' files, with backups and ownership in
``<home>/mcp-state.json``. Every file is planned first: if one is malformed, nothing is
written anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from codeswitch.clients import claude, codex
from codeswitch.clients._files import (
    atomic_write,
    backup_file,
    load_state,
    read_text,
    real_target,
    unchanged,
    unified_diff,
)
from codeswitch.clients.mcp import CLAUDE, CODEX, McpServer, SyncResult, read_servers, sync_text
from codeswitch.clients.paths import ClientPaths

__all__ = ["STATE_FILE", "apply_sync", "file_servers", "plan_sync", "sync_diff"]

STATE_FILE = "mcp-state.json"


def _targets(paths: ClientPaths) -> list[tuple[Any, Path, bool]]:
    return [
        (CLAUDE, paths.claude_json, claude.present(paths)),
        (CODEX, paths.codex_config, codex.present(paths)),
    ]


def _file_state(home: Path) -> dict[str, Any]:
    files = load_state(home / STATE_FILE).get("files", {})
    return files if isinstance(files, dict) else {}


def plan_sync(servers: list[McpServer], home: Path, paths: ClientPaths) -> list[SyncResult]:
    state = _file_state(home)
    results = []
    for target, path, present in _targets(paths):
        text = read_text(real_target(path))
        record = state.get(str(path), {})
        if not present and text is None and not record:
            continue  # this client is not installed: do not create its files
        results.append(sync_text(target, text, path, servers, record.get("owned", {}),
                                 record.get("created_section", False)))
    return results


def sync_diff(results: list[SyncResult]) -> str:
    return "".join(unified_diff(r.path, r.old, r.new) for r in results if r.changed)


def apply_sync(results: list[SyncResult], home: Path) -> None:
    for r in results:  # nothing written if a client rewrote its file since plan_sync read it
        if r.changed:
            unchanged(r.path, r.old)
    state = load_state(home / STATE_FILE)
    files = state.setdefault("files", {})
    for r in results:
        if r.changed:
            backup_file(real_target(r.path), home / "backups", f"mcp-{r.client}")
        if r.owned:
            files[str(r.path)] = {"client": r.client, "owned": r.owned,
                                  "created_section": r.created_section}
        else:
            files.pop(str(r.path), None)
    atomic_write(home / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n",
                 mode=0o600)
    for r in results:
        if not r.changed:
            continue
        target = real_target(r.path)
        if r.new is None:
            target.unlink(missing_ok=True)
        else:
            atomic_write(target, r.new, expect=r.old)


def file_servers(home: Path, paths: ClientPaths) -> dict[str, dict[str, tuple[Any, bool]]]:
    """``{client: {name: (entry, ours)}}`` for every server found in the clients' files."""
    state = _file_state(home)
    out: dict[str, dict[str, tuple[Any, bool]]] = {}
    for target, path, _ in _targets(paths):
        text = read_text(real_target(path))
        if text is None:
            continue
        owned = state.get(str(path), {}).get("owned", {})
        out[target.client] = {
            name: (entry, name in owned and owned[name] == entry)
            for name, entry in read_servers(target, text, path).items()
        }
    return out
