"""Edit a ``.env`` file line by line (Gemini CLI's ``~/.gemini/.env``, Codex's
``$CODEX_HOME/.env``): only the ``KEY=value`` line we own changes; comments, order and every
other line stay as they are. Replacing a value keeps the line's ``export`` prefix, spacing
and quote style, so restoring the previous value gives back the original line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from codeswitch.clients._errors import ConfigShapeError

__all__ = ["DotenvDoc"]

_LINE = re.compile(
    r"^(?P<prefix>[ \t]*(?:export[ \t]+)?(?P<key>[A-Za-z_][A-Za-z0-9_.]*)[ \t]*=[ \t]*)"
    r"(?P<rest>.*?)(?P<eol>\r?\n)?$",
    re.DOTALL,
)
_SAFE = re.compile(r"^[A-Za-z0-9_./:@+,=%-]*$")


def _decode(rest: str) -> tuple[str, str, str]:
    """(value, quote char or '', trailing text after the value) of a line's right side."""
    rest = rest.rstrip("\r")
    if rest[:1] in ("'", '"'):
        quote = rest[0]
        i = 1
        while i < len(rest):
            if rest[i] == "\\" and quote == '"':
                i += 2
                continue
            if rest[i] == quote:
                break
            i += 1
        raw, tail = rest[1:i], rest[i + 1 :]
        if quote == '"':
            raw = raw.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        return raw, quote, tail
    value, sep, comment = rest.partition(" #")
    tail = (sep + comment) if sep else ""
    stripped = value.rstrip()
    return stripped, "", value[len(stripped):] + tail


def _encode(value: str, quote: str) -> str:
    if quote == "'" and "'" not in value and "\n" not in value:
        return f"'{value}'"
    if quote == "" and _SAFE.match(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class DotenvDoc:
    """A ``.env`` file addressed by ``[KEY]`` paths; values are strings."""

    def __init__(self, text: str | None, path: Path) -> None:
        self.path = path
        self.text = "" if text is None else text

    def _lines(self) -> list[str]:
        return self.text.splitlines(keepends=True)

    def _find(self, key: str) -> tuple[int, re.Match[str]] | None:
        found = None
        for i, line in enumerate(self._lines()):
            match = _LINE.match(line)
            if match and match.group("key") == key:
                found = (i, match)  # the last assignment wins, as in dotenv
        return found

    @staticmethod
    def _key(keys: list[str]) -> str:
        if len(keys) != 1:
            raise ValueError(f".env paths have one part, got {keys}")
        return keys[0]

    def get(self, keys: list[str]) -> tuple[bool, Any]:
        found = self._find(self._key(keys))
        if found is None:
            return False, None
        return True, _decode(found[1].group("rest"))[0]

    def set(self, keys: list[str], value: Any) -> None:
        key = self._key(keys)
        if not isinstance(value, str):
            raise ConfigShapeError(self.path, f"{key}: .env values are strings")
        lines = self._lines()
        found = self._find(key)
        if found is None:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines.append(f"{key}={_encode(value, '')}\n")
        else:
            i, match = found
            _, quote, tail = _decode(match.group("rest"))
            eol = match.group("eol") or ""
            lines[i] = match.group("prefix") + _encode(value, quote) + tail + eol
        self.text = "".join(lines)

    def delete(self, keys: list[str]) -> bool:
        key = self._key(keys)
        removed = False
        while (found := self._find(key)) is not None:
            lines = self._lines()
            del lines[found[0]]
            self.text = "".join(lines)
            removed = True
        return removed

    def keys_at(self, keys: list[str]) -> list[str] | None:
        names = [m.group("key") for line in self._lines() if (m := _LINE.match(line))]
        return list(dict.fromkeys(names))
