"""The text editors behind connect and MCP sync (pure, no fixtures)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import codeswitch.clients
from codeswitch.clients._dotenv import DotenvDoc
from codeswitch.clients._errors import ConfigShapeError, MalformedConfigError
from codeswitch.clients._jsonedit import JsonDoc
from codeswitch.clients._tomledit import TomlDoc

P = Path("f")


@pytest.mark.parametrize("src", [
    "{}", "{\n}\n", '{"a": 1}', '{\n\t"a": [1, 2],\n\t"env": {\n\t\t"X": "y"\n\t}\n}\n',
    '{\n    "a": {"compact": true},\n    "env": {}\n}',
])
def test_json_insert_then_delete_is_identity(src: str) -> None:
    doc = JsonDoc(src, P)
    created = not doc.get(["env"])[0]
    doc.set(["env", "ANTHROPIC_BASE_URL"], "http://127.0.0.1:18100")
    assert doc.get(["env", "ANTHROPIC_BASE_URL"]) == (True, "http://127.0.0.1:18100")
    doc.delete(["env", "ANTHROPIC_BASE_URL"])
    if created:
        doc.delete(["env"])
    assert doc.text == (src if src not in ("{\n}\n",) else "{}\n")


def test_json_follows_the_file_indentation() -> None:
    doc = JsonDoc('{\n\t"env": {\n\t\t"A": "1"\n\t}\n}\n', P)
    doc.set(["env", "B"], "2")
    doc.set(["new"], {"k": [1]})
    assert doc.text == ('{\n\t"env": {\n\t\t"A": "1",\n\t\t"B": "2"\n\t},\n'
                        '\t"new": {\n\t\t"k": [\n\t\t\t1\n\t\t]\n\t}\n}\n')


def test_json_errors_are_clear() -> None:
    with pytest.raises(MalformedConfigError, match="line 2 column 3"):
        JsonDoc('{\n  ,}', P)
    with pytest.raises(MalformedConfigError):
        JsonDoc('{"a": 1} // comment', P)  # Claude's files are strict JSON
    assert JsonDoc('{"a": 1} // comment', P, comments=True).get(["a"]) == (True, 1)
    with pytest.raises(ConfigShapeError, match="top level"):
        JsonDoc("[]", P)
    with pytest.raises(ConfigShapeError, match="'env' is not an object"):
        JsonDoc('{"env": 3}', P).set(["env", "A"], "1")


@pytest.mark.parametrize("src", [
    "", "# only a comment\n", 'model = "o3"\n', '[tui]\nx = 1\n',
    'a = 1\n\n# c\n[t]\nb = 2\n\n[u.v]\nc = 3\n',
    'model_providers = { other = { name = "x" } }\n',
])
def test_toml_insert_then_delete_is_identity(src: str) -> None:
    doc = TomlDoc(src, P)
    doc.set(["model_provider"], "codeswitch")
    doc.set(["model_providers", "codeswitch"], {"base_url": "http://h/v1", "env": {"K": "v"}})
    assert doc.get(["model_providers", "codeswitch", "env"]) == (True, {"K": "v"})
    doc.delete(["model_providers", "codeswitch"])
    doc.delete(["model_provider"])
    assert doc.text == src


def test_toml_replacing_a_key_keeps_its_comment() -> None:
    doc = TomlDoc('model_provider = "openai"  # default\n[t]\n', P)
    doc.set(["model_provider"], "codeswitch")
    assert doc.text == 'model_provider = "codeswitch"  # default\n[t]\n'
    doc.set(["model_provider"], "openai")
    assert doc.text == 'model_provider = "openai"  # default\n[t]\n'


def test_dotenv_keeps_line_style() -> None:
    doc = DotenvDoc("# c\nexport K='old' # note\nOTHER=1\n", P)
    doc.set(["K"], "new")
    assert doc.text == "# c\nexport K='new' # note\nOTHER=1\n"
    doc.set(["URL"], "http://127.0.0.1:18100")
    doc.set(["SPACED"], "a b")
    assert doc.text.endswith('URL=http://127.0.0.1:18100\nSPACED="a b"\n')
    assert doc.get(["SPACED"]) == (True, "a b")
    doc.delete(["URL"])
    doc.delete(["SPACED"])
    doc.set(["K"], "old")
    assert doc.text == "# c\nexport K='old' # note\nOTHER=1\n"


def test_every_module_exports_what_it_declares() -> None:
    for info in pkgutil.iter_modules(codeswitch.clients.__path__):
        module = importlib.import_module(f"codeswitch.clients.{info.name}")
        for name in getattr(module, "__all__", []):
            assert hasattr(module, name), f"{info.name}.{name}"
    for name in codeswitch.clients.__all__:
        assert hasattr(codeswitch.clients, name)
