"""Edit a JSON (or JSON-with-comments) document in place, as text.

Rewriting a whole ``json.dumps`` would reorder nothing but still lose the file's own layout
(compact arrays, comments in Gemini's settings.json, odd spacing). Instead the document is
parsed into a tree of spans, and an edit splices only the bytes of the member it touches:
everything else stays byte for byte. An insertion follows the indentation of its neighbours;
deleting a member we inserted gives back the original text exactly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codeswitch.clients._errors import ConfigShapeError, MalformedConfigError

__all__ = ["JsonDoc"]

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_LITERALS = {"true": True, "false": False, "null": None}


@dataclass
class _Node:
    kind: str  # "object" | "array" | "scalar"
    start: int
    end: int = 0
    value: Any = None
    members: list[_Member] = field(default_factory=list)
    items: list[_Node] = field(default_factory=list)

    def _ended(self, end: int) -> _Node:
        self.end = end
        return self


@dataclass
class _Member:
    key: str
    key_start: int
    value: _Node


class _SyntaxError(Exception):
    def __init__(self, msg: str, text: str, pos: int) -> None:
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        super().__init__(f"{msg} at line {line} column {col}")


class _Parser:
    def __init__(self, text: str, comments: bool) -> None:
        self.text = text
        self.comments = comments
        self.pos = 0

    def error(self, msg: str) -> _SyntaxError:
        return _SyntaxError(msg, self.text, self.pos)

    def ws(self) -> None:
        text, n = self.text, len(self.text)
        while self.pos < n:
            ch = text[self.pos]
            if ch in " \t\r\n":
                self.pos += 1
            elif self.comments and text.startswith("//", self.pos):
                nl = text.find("\n", self.pos)
                self.pos = n if nl < 0 else nl + 1
            elif self.comments and text.startswith("/*", self.pos):
                close = text.find("*/", self.pos + 2)
                if close < 0:
                    raise self.error("unterminated comment")
                self.pos = close + 2
            else:
                return

    def parse(self) -> _Node:
        if self.text.startswith("\ufeff"):
            self.pos = 1
        self.ws()
        node = self.value()
        self.ws()
        if self.pos != len(self.text):
            raise self.error("extra data after the document")
        return node

    def value(self) -> _Node:
        if self.pos >= len(self.text):
            raise self.error("unexpected end of file")
        ch = self.text[self.pos]
        if ch == "{":
            return self.obj()
        if ch == "[":
            return self.arr()
        start = self.pos
        if ch == '"':
            return _Node("scalar", start, self.pos, self.string())._ended(self.pos)
        match = _NUMBER.match(self.text, self.pos)
        if match and match.end() > start:
            self.pos = match.end()
            return _Node("scalar", start, self.pos, json.loads(match.group()))
        for word, val in _LITERALS.items():
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return _Node("scalar", start, self.pos, val)
        raise self.error(f"unexpected character {ch!r}")

    def string(self) -> str:
        text, start = self.text, self.pos
        i = start + 1
        while True:
            if i >= len(text):
                raise self.error("unterminated string")
            ch = text[i]
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                break
            if ord(ch) < 0x20:
                self.pos = i
                raise self.error("control character in string")
            i += 1
        try:
            value = json.loads(text[start : i + 1])
        except ValueError as exc:
            raise self.error("invalid escape in string") from exc
        self.pos = i + 1
        return str(value)

    def obj(self) -> _Node:
        node = _Node("object", self.pos)
        self.pos += 1
        self.ws()
        if self.text.startswith("}", self.pos):
            self.pos += 1
            return node._ended(self.pos)
        while True:
            self.ws()
            if not self.text.startswith('"', self.pos):
                raise self.error("expected a quoted key")
            key_start = self.pos
            key = self.string()
            self.ws()
            if not self.text.startswith(":", self.pos):
                raise self.error("expected ':'")
            self.pos += 1
            self.ws()
            node.members.append(_Member(key, key_start, self.value()))
            self.ws()
            if self.text.startswith(",", self.pos):
                self.pos += 1
                continue
            if self.text.startswith("}", self.pos):
                self.pos += 1
                return node._ended(self.pos)
            raise self.error("expected ',' or '}'")

    def arr(self) -> _Node:
        node = _Node("array", self.pos)
        self.pos += 1
        self.ws()
        if self.text.startswith("]", self.pos):
            self.pos += 1
            return node._ended(self.pos)
        while True:
            self.ws()
            node.items.append(self.value())
            self.ws()
            if self.text.startswith(",", self.pos):
                self.pos += 1
                continue
            if self.text.startswith("]", self.pos):
                self.pos += 1
                return node._ended(self.pos)
            raise self.error("expected ',' or ']'")


def _to_python(node: _Node) -> Any:
    if node.kind == "object":
        return {m.key: _to_python(m.value) for m in node.members}
    if node.kind == "array":
        return [_to_python(item) for item in node.items]
    return node.value


class JsonDoc:
    """A JSON object document that can be read and edited key by key."""

    def __init__(self, text: str | None, path: Path, *, comments: bool = False) -> None:
        self.path = path
        self.comments = comments
        self.text = "{}\n" if text is None else text
        self._root = self._parse(self.text)
        if self._root.kind != "object":
            raise ConfigShapeError(path, "the top level is not a JSON object")

    def _parse(self, text: str) -> _Node:
        try:
            return _Parser(text, self.comments).parse()
        except _SyntaxError as exc:
            raise MalformedConfigError(self.path, f"invalid JSON: {exc}") from None

    def _reparse(self, text: str) -> None:
        self.text = text
        self._root = self._parse(text)

    # -- reading -----------------------------------------------------------------------
    def _walk(self, keys: list[str]) -> tuple[_Node, int, _Member | None]:
        """(deepest object reached, depth reached, member at the full path or None)."""
        node = self._root
        member: _Member | None = None
        for depth, key in enumerate(keys):
            if node.kind != "object":
                where = ".".join(keys[:depth])
                raise ConfigShapeError(self.path, f"'{where}' is not an object")
            found = [m for m in node.members if m.key == key]
            if not found:
                return node, depth, None
            member = found[-1]  # JSON.parse keeps the last duplicate
            node = member.value
        return node, len(keys), member

    def get(self, keys: list[str]) -> tuple[bool, Any]:
        node, depth, _ = self._walk(keys)
        if depth < len(keys):
            return False, None
        return True, _to_python(node)

    def data(self) -> dict[str, Any]:
        value = _to_python(self._root)
        assert isinstance(value, dict)
        return value

    # -- layout ------------------------------------------------------------------------
    def _line_indent(self, pos: int) -> str:
        start = self.text.rfind("\n", 0, pos) + 1
        match = re.match(r"[ \t]*", self.text[start:pos])
        return match.group() if match else ""

    def _unit(self) -> str:
        root = self._root
        if root.members:
            first = root.members[0]
            if "\n" in self.text[root.start + 1 : first.key_start]:
                unit = self._line_indent(first.key_start)[len(self._line_indent(root.start)):]
                if unit:
                    return unit
        return "  "

    def _render(self, value: Any, base: str) -> str:
        return json.dumps(value, indent=self._unit(), ensure_ascii=False).replace("\n", "\n" + base)

    # -- editing -----------------------------------------------------------------------
    def set(self, keys: list[str], value: Any) -> None:
        """Set ``keys`` to ``value``, creating missing parent objects."""
        node, depth, member = self._walk(keys)
        text = self.text
        if member is not None and depth == len(keys):
            rendered = self._render(value, self._line_indent(member.key_start))
            self._reparse(text[: node.start] + rendered + text[node.end :])
            return
        if node.kind != "object":
            raise ConfigShapeError(self.path, f"'{'.'.join(keys[:depth])}' is not an object")
        nested: Any = value
        for key in reversed(keys[depth + 1 :]):
            nested = {key: nested}
        own = self._line_indent(node.start)
        if node.members:
            first, last = node.members[0], node.members[-1]
            if "\n" in text[node.start + 1 : first.key_start]:
                child = self._line_indent(first.key_start)
                sep = ",\n" + child
            else:
                child, sep = own + self._unit(), ", "
            piece = sep + json.dumps(keys[depth], ensure_ascii=False) + ": "
            piece += self._render(nested, child)
            self._reparse(text[: last.value.end] + piece + text[last.value.end :])
        else:
            child = own + self._unit()
            piece = json.dumps(keys[depth], ensure_ascii=False) + ": " + self._render(nested, child)
            inner = "\n" + child + piece + "\n" + own
            self._reparse(text[: node.start + 1] + inner + text[node.end - 1 :])

    def delete(self, keys: list[str]) -> bool:
        """Remove the member at ``keys`` (every duplicate of it). False if it was absent."""
        removed = False
        while True:
            parent, depth, _ = self._walk(keys[:-1])
            if depth < len(keys) - 1 or parent.kind != "object":
                return removed
            members = parent.members
            idx = next((i for i in range(len(members) - 1, -1, -1)
                        if members[i].key == keys[-1]), None)
            if idx is None:
                return removed
            text, m = self.text, members[idx]
            if len(members) == 1:
                new = text[: parent.start + 1] + text[parent.end - 1 :]
            elif idx > 0:
                new = text[: members[idx - 1].value.end] + text[m.value.end :]
            else:
                new = text[: m.key_start] + text[members[1].key_start :]
            self._reparse(new)
            removed = True

    def keys_at(self, keys: list[str]) -> list[str] | None:
        """Member names of the object at ``keys``; None if absent, error if not an object."""
        node, depth, _ = self._walk(keys)
        if depth < len(keys):
            return None
        if node.kind != "object":
            raise ConfigShapeError(self.path, f"'{'.'.join(keys)}' is not an object")
        return list(dict.fromkeys(m.key for m in node.members))
