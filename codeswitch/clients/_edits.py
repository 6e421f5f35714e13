"""The unit of ownership: one key in one file that codeswitch sets and later restores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codeswitch.clients._docs import Format

__all__ = ["KeyEdit"]


@dataclass(frozen=True)
class KeyEdit:
    path: Path
    fmt: Format
    keys: tuple[str, ...]
    value: Any
