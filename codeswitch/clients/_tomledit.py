"""Edit Codex's ``config.toml`` without disturbing the rest of it.

tomlkit keeps comments, but inserting a table into a file whose tables are interleaved moves
neighbouring comments and blank lines, and deleting leaves stray newlines. So the edits we
need (a top-level key, a whole ``[a.b]`` table) are done on the text: a key line is inserted
after the last top-level key, a table is appended at the end, and deleting either removes
exactly what inserting added. Every result is parsed again and compared with the intended
data; if the text edit does not give it (inline tables, dotted keys, odd layouts), the edit
falls back to tomlkit, which is always correct if not always pretty.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from codeswitch.clients._errors import ConfigShapeError, MalformedConfigError

__all__ = ["TomlDoc"]

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")
_HEADER = re.compile(r"^[ \t]*\[(\[)?(?P<key>[^\[\]]+)\]\]?[ \t]*(#.*)?$")
_KEY_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*(\.|$)')


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k, ensure_ascii=False)


def _split_key(raw: str) -> tuple[str, ...] | None:
    parts: list[str] = []
    pos = 0
    while pos < len(raw):
        match = _KEY_TOKEN.match(raw, pos)
        if not match:
            return None
        token = match.group(1)
        if token.startswith('"'):
            token = json.loads(token)
        elif token.startswith("'"):
            token = token[1:-1]
        parts.append(token)
        pos = match.end()
        if match.group(2) == "":
            break
    return tuple(parts)


def _render_value(value: Any) -> str:
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        table.update(value)
        return table.as_string()
    return str(tomlkit.item(value).as_string())


def _render_table(keys: list[str], value: dict[str, Any]) -> str:
    lines = ["[" + ".".join(_key(k) for k in keys) + "]\n"]
    lines += [f"{_key(k)} = {_render_value(v)}\n" for k, v in value.items()]
    return "".join(lines)


def _pruned(value: Any) -> Any:
    """Drop empty tables: ``[a.b]`` deleted from text leaves no ``a``, tomlkit keeps ``a = {}``."""
    if isinstance(value, dict):
        out = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v != {} or not isinstance(value[k], dict)}
    return value


def _blank(line: str) -> bool:
    return line.strip() == ""


def _content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


class TomlDoc:
    """A TOML document addressed by key paths."""

    def __init__(self, text: str | None, path: Path) -> None:
        self.path = path
        self.text = "" if text is None else text
        self._data = self._parse(self.text)

    def _parse(self, text: str) -> dict[str, Any]:
        try:
            data = tomlkit.parse(text).unwrap()
        except (TOMLKitError, ValueError) as exc:
            raise MalformedConfigError(self.path, f"invalid TOML: {exc}") from None
        return data

    # -- reading -----------------------------------------------------------------------
    def _walk(self, data: dict[str, Any], keys: list[str]) -> tuple[bool, Any]:
        node: Any = data
        for depth, key in enumerate(keys):
            if not isinstance(node, dict):
                raise ConfigShapeError(self.path, f"'{'.'.join(keys[:depth])}' is not a table")
            if key not in node:
                return False, None
            node = node[key]
        return True, node

    def get(self, keys: list[str]) -> tuple[bool, Any]:
        found, value = self._walk(self._data, keys)
        return found, copy.deepcopy(value)

    def data(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    def keys_at(self, keys: list[str]) -> list[str] | None:
        found, value = self._walk(self._data, keys)
        if not found:
            return None
        if not isinstance(value, dict):
            raise ConfigShapeError(self.path, f"'{'.'.join(keys)}' is not a table")
        return list(value)

    # -- editing -----------------------------------------------------------------------
    def set(self, keys: list[str], value: Any) -> None:
        expected = copy.deepcopy(self._data)
        node = expected
        for depth, key in enumerate(keys[:-1]):
            nxt = node.setdefault(key, {})
            if not isinstance(nxt, dict):
                raise ConfigShapeError(self.path, f"'{'.'.join(keys[: depth + 1])}' is not a table")
            node = nxt
        node[keys[-1]] = copy.deepcopy(value)
        self._commit(self._text_set(keys, value), expected, lambda: self._kit_set(keys, value))

    def delete(self, keys: list[str]) -> bool:
        found, _ = self._walk(self._data, keys)
        if not found:
            return False
        expected = copy.deepcopy(self._data)
        parent = expected
        for key in keys[:-1]:
            parent = parent[key]
        del parent[keys[-1]]
        self._commit(self._text_delete(keys), expected, lambda: self._kit_delete(keys))
        return True

    def _commit(self, candidate: str | None, expected: dict[str, Any], fallback: Any) -> None:
        for attempt in (candidate, None):
            try:
                text = attempt if attempt is not None else fallback()
            except (TOMLKitError, ValueError, KeyError, TypeError) as exc:
                raise ConfigShapeError(self.path, f"cannot edit this TOML layout ({exc})") from None
            try:
                data = tomlkit.parse(text).unwrap()
            except (TOMLKitError, ValueError):
                continue
            if _pruned(data) == _pruned(expected):
                self.text, self._data = text, data
                return
            if attempt is None:
                break
        raise ConfigShapeError(self.path, "could not apply the edit to this TOML layout")

    # text edits: return None when the layout is not the simple one they handle
    def _headers(self, lines: list[str]) -> list[tuple[int, tuple[str, ...] | None]]:
        out = []
        for i, line in enumerate(lines):
            match = _HEADER.match(line.rstrip("\r\n"))
            if match:
                out.append((i, _split_key(match.group("key"))))
        return out

    def _lines(self) -> list[str]:
        lines = self.text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        return lines

    def _top_key_line(self, lines: list[str], first_header: int, key: str) -> int | None:
        pattern = re.compile(rf"^[ \t]*(?:{re.escape(key)}|\"{re.escape(key)}\")[ \t]*=")
        for i in range(first_header):
            if pattern.match(lines[i]):
                return i
        return None

    def _block(self, lines: list[str], keys: tuple[str, ...]) -> tuple[int, int] | None:
        headers = self._headers(lines)
        start = next((i for i, k in headers if k == keys), None)
        if start is None:
            return None
        end = len(lines)
        for i, k in headers:
            if i > start and (k is None or k[: len(keys)] != keys):
                end = i
                break
        while end > start + 1 and not _content(lines[end - 1]):
            end -= 1
        return start, end

    def _text_set(self, keys: list[str], value: Any) -> str | None:
        lines = self._lines()
        headers = self._headers(lines)
        first_header = headers[0][0] if headers else len(lines)
        if len(keys) == 1 and not isinstance(value, dict):
            line = f"{_key(keys[0])} = {_render_value(value)}\n"
            idx = self._top_key_line(lines, first_header, keys[0])
            if idx is not None:
                try:
                    item = tomlkit.parse(lines[idx])[keys[0]]
                except (TOMLKitError, KeyError, ValueError):
                    return None
                trivia = getattr(item, "trivia", None)
                if trivia is not None and trivia.comment:
                    line = line[:-1] + trivia.comment_ws + trivia.comment + "\n"
                lines[idx] = line
                return "".join(lines)
            content = [i for i in range(first_header) if _content(lines[i])]
            if content:
                lines.insert(content[-1] + 1, line)
            elif first_header < len(lines):
                lines[first_header:first_header] = [line, "\n"]
            else:
                lines.append(line)
            return "".join(lines)
        if len(keys) >= 2 and isinstance(value, dict):
            block = _render_table(keys, value)
            span = self._block(lines, tuple(keys))
            if span is not None:
                lines[span[0] : span[1]] = [block]
                return "".join(lines)
            return "".join(lines) + ("\n" if lines else "") + block
        return None

    def _text_delete(self, keys: list[str]) -> str | None:
        lines = self._lines()
        headers = self._headers(lines)
        first_header = headers[0][0] if headers else len(lines)
        _, value = self._walk(self._data, keys)
        if len(keys) == 1 and not isinstance(value, dict):
            idx = self._top_key_line(lines, first_header, keys[0])
            if idx is None:
                return None
            del lines[idx]
            if (idx < len(lines) - 1 and _blank(lines[idx]) and _HEADER.match(lines[idx + 1])
                    and (idx == 0 or not _content(lines[idx - 1]))):
                del lines[idx]
            return "".join(lines)
        if len(keys) >= 2 and isinstance(value, dict):
            span = self._block(lines, tuple(keys))
            if span is None:
                return None
            start, end = span
            del lines[start:end]
            if start > 0 and _blank(lines[start - 1]) and (
                start == len(lines) or _blank(lines[start])
            ):
                del lines[start - 1]
            return "".join(lines)
        return None

    # tomlkit fallbacks
    def _kit_set(self, keys: list[str], value: Any) -> str:
        doc = tomlkit.parse(self.text)
        node: Any = doc
        for key in keys[:-1]:
            if key not in node:
                node[key] = tomlkit.table(is_super_table=True)
            node = node[key]
        if isinstance(value, dict) and isinstance(node, tomlkit.items.InlineTable):
            inline = tomlkit.inline_table()
            inline.update(value)
            node[keys[-1]] = inline
        elif isinstance(value, dict):
            table = tomlkit.table()
            for k, v in value.items():
                if isinstance(v, dict):
                    inline = tomlkit.inline_table()
                    inline.update(v)
                    table[k] = inline
                else:
                    table[k] = v
            node[keys[-1]] = table
        else:
            node[keys[-1]] = value
        return doc.as_string()

    def _kit_delete(self, keys: list[str]) -> str:
        doc = tomlkit.parse(self.text)
        node: Any = doc
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
        return doc.as_string()
