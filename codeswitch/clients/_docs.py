"""One small interface over the three file formats we edit (JSON, TOML, .env)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

from codeswitch.clients._dotenv import DotenvDoc
from codeswitch.clients._jsonedit import JsonDoc
from codeswitch.clients._tomledit import TomlDoc

__all__ = ["ConfigDoc", "Format", "is_empty", "open_doc"]

Format = Literal["json", "jsonc", "toml", "dotenv"]


class ConfigDoc(Protocol):
    path: Path
    text: str

    def get(self, keys: list[str]) -> tuple[bool, Any]: ...
    def set(self, keys: list[str], value: Any) -> None: ...
    def delete(self, keys: list[str]) -> bool: ...
    def keys_at(self, keys: list[str]) -> list[str] | None: ...


def open_doc(fmt: Format, text: str | None, path: Path) -> ConfigDoc:
    """Parse ``text`` (None: a new file); MalformedConfigError if it does not parse."""
    if fmt == "json":
        return JsonDoc(text, path)
    if fmt == "jsonc":
        return JsonDoc(text, path, comments=True)
    if fmt == "toml":
        return TomlDoc(text, path)
    return DotenvDoc(text, path)


def is_empty(doc: ConfigDoc) -> bool:
    """True when nothing but layout is left (a file we created can then be removed)."""
    keys = doc.keys_at([])
    return not keys
