"""Skills served from a local HTTP server: listing, installing, updating, removing, and
hostile archives that must be refused with nothing written."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from codeswitch.clients import archive, skills
from codeswitch.clients._frontmatter import parse_front_matter, validate_skill_md
from codeswitch.clients.archive import Limits
from tests.clients.conftest import snapshot

PDF_MD = """---
name: pdf
description: >
  Extract text and tables from PDF files,
  fill forms and merge documents.
license: Apache-2.0
---
# PDF
Use scripts/extract.py.
"""
REVIEW_MD = '---\nname: code-review\ndescription: "Review a diff: bugs, style, tests"\n---\n'
BAD_MD = "---\nname: Bad_Name\ndescription: x\n---\n"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _zip(files: dict[str, bytes | str], *, symlinks: dict[str, str] | None = None,
         modes: dict[str, int] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = ((modes or {}).get(name, 0o644) | stat.S_IFREG) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o777 | stat.S_IFLNK) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def _targz(files: dict[str, bytes | str], *, symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            tf.addfile(info, io.BytesIO(raw))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def _good_repo(top: str) -> dict[str, bytes | str]:
    return {
        f"{top}/README.md": "# skills",
        f"{top}/skills/pdf/SKILL.md": PDF_MD,
        f"{top}/skills/pdf/scripts/extract.sh": "#!/bin/sh\necho pdf\n",
        f"{top}/skills/pdf/examples/nested/SKILL.md": "---\nname: nested\n---\n",
        f"{top}/skills/code-review/SKILL.md": REVIEW_MD,
        f"{top}/skills/broken/SKILL.md": BAD_MD,
    }


@pytest.fixture
def builtins(served: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The two built-in repositories, pointed at the local server (zip and tar.gz)."""
    root, base = served
    (root / "anthropics.zip").write_bytes(
        _zip(_good_repo("skills-main"), modes={"skills-main/skills/pdf/scripts/extract.sh": 0o755}))
    (root / "superpowers.tar.gz").write_bytes(_targz({
        "superpowers-main/skills/brainstorming/SKILL.md":
            "---\nname: brainstorming\ndescription: Turn ideas into designs\n---\n",
    }))
    monkeypatch.setattr(skills, "BUILTIN_REPOS", {
        "anthropics": skills.Repo("anthropics", f"{base}/anthropics.zip", "skills", True),
        "superpowers": skills.Repo("superpowers", f"{base}/superpowers.tar.gz", "skills", True),
    })
    return root


def test_front_matter_parsing_and_validation() -> None:
    assert validate_skill_md(PDF_MD) == (
        "pdf", "Extract text and tables from PDF files, fill forms and merge documents.")
    assert validate_skill_md(REVIEW_MD) == ("code-review", "Review a diff: bugs, style, tests")
    assert parse_front_matter(PDF_MD)["license"] == "Apache-2.0"
    for text, message in [
        ("# no front matter", "no front matter"),
        ("---\nname: x\n", "not closed"),
        ("---\ndescription: d\n---\n", "no 'name'"),
        (BAD_MD, "kebab-case"),
        ("---\nname: ok\n---\n", "no 'description'"),
        ("---\nname: ok\ndescription: " + "x" * 1100 + "\n---\n", "over 1024"),
    ]:
        with pytest.raises(skills.SkillValidationError, match=message):
            validate_skill_md(text)


def test_list_install_update_remove(home: Path, data_dir: Path, builtins: Path, run) -> None:
    listing = run("skills", "list")
    assert listing.exit_code == 0, listing.output
    for text in ("pdf", "Extract text and tables", "code-review", "brainstorming",
                 "Turn ideas", "invalid"):
        assert text in listing.output
    assert "nested" not in listing.output  # a SKILL.md inside a skill belongs to that skill

    result = run("skills", "install", "pdf")
    assert result.exit_code == 0, result.output
    dest = home / ".claude" / "skills" / "pdf"
    assert (dest / "SKILL.md").read_text() == PDF_MD
    assert (dest / "scripts" / "extract.sh").stat().st_mode & 0o111  # executable kept
    assert (dest / "examples" / "nested" / "SKILL.md").exists()
    assert [p.name for p in dest.parent.iterdir()] == ["pdf"]  # no temp dirs left
    assert "yes" in run("skills", "list", "--repo", "anthropics").output

    assert run("skills", "install", "pdf").exit_code == 1  # already installed: use update
    new_md = PDF_MD.replace("merge documents", "split documents")
    files = _good_repo("skills-main")
    files["skills-main/skills/pdf/SKILL.md"] = new_md
    (builtins / "anthropics.zip").write_bytes(_zip(files))
    assert run("skills", "update").exit_code == 0
    assert (dest / "SKILL.md").read_text() == new_md
    assert not (dest / "scripts" / "extract.sh").stat().st_mode & 0o111

    assert run("skills", "install", "brainstorming").exit_code == 0  # from the tar.gz
    assert run("skills", "remove", "pdf").exit_code == 0
    assert not dest.exists()
    assert run("skills", "remove", "pdf").exit_code == 1
    assert run("skills", "install", "nope").exit_code == 1


def test_invalid_front_matter_is_refused(home: Path, builtins: Path, run) -> None:
    before = snapshot(home)
    result = run("skills", "install", "broken")
    assert result.exit_code == 1
    assert "SKILL.md name 'Bad_Name' must be kebab-case" in result.output
    assert snapshot(home) == before


def test_existing_folder_not_ours_needs_force(home: Path, builtins: Path, run) -> None:
    mine = home / ".claude" / "skills" / "pdf"
    mine.mkdir(parents=True)
    (mine / "SKILL.md").write_text("my own pdf skill")
    result = run("skills", "install", "pdf")
    assert result.exit_code == 1 and "--force" in result.output
    assert (mine / "SKILL.md").read_text() == "my own pdf skill"
    assert run("skills", "install", "pdf", "--force").exit_code == 0
    assert (mine / "SKILL.md").read_text() == PDF_MD


def test_repos_add_list_remove_and_local_directory(home: Path, tmp_path: Path, builtins: Path,
                                                   run) -> None:
    local = tmp_path / "my-skills"
    (local / "tidy").mkdir(parents=True)
    (local / "tidy" / "SKILL.md").write_text("---\nname: tidy\ndescription: Tidy code\n---\n")
    (local / "tidy" / "inner-link").symlink_to("SKILL.md")  # inside the skill: fine
    assert run("skills", "repos", "add", "mine", str(local)).exit_code == 0
    repos = run("skills", "repos", "list").output
    assert "anthropics" in repos and "superpowers" in repos and "mine" in repos
    assert "Tidy code" in run("skills", "list", "--repo", "mine").output
    assert run("skills", "install", "tidy", "--repo", "mine").exit_code == 0
    installed = home / ".claude" / "skills" / "tidy"
    assert (installed / "inner-link").is_symlink()
    assert (installed / "inner-link").read_text().startswith("---")
    assert run("skills", "repos", "remove", "anthropics").exit_code == 1  # built in
    assert run("skills", "repos", "remove", "mine").exit_code == 0
    assert "mine" not in run("skills", "repos", "list").output


def test_source_resolution() -> None:
    assert skills.resolve_source("obra/superpowers") == \
        "https://github.com/obra/superpowers/archive/HEAD.zip"
    assert skills.resolve_source("https://github.com/anthropics/skills", "main") == \
        "https://codeload.github.com/anthropics/skills/zip/refs/heads/main"
    url = "https://codeload.github.com/a/b/tar.gz/refs/heads/dev"
    assert skills.resolve_source(url) == url
    with pytest.raises(skills.SkillError):
        skills.resolve_source("not a source")


OUTSIDE = "/tmp/codeswitch-test-absolute-should-not-exist.txt"

HOSTILE = {
    "zip-traversal": ("zip", lambda: _zip({"r/skills/evil/SKILL.md": REVIEW_MD,
                                           "r/skills/evil/../../../../escaped.txt": "x"}),
                      "path traversal"),
    "tar-traversal": ("tar.gz", lambda: _targz({"r/skills/evil/SKILL.md": REVIEW_MD,
                                                "../escaped.txt": "x"}), "path traversal"),
    "zip-absolute": ("zip", lambda: _zip({"r/skills/evil/SKILL.md": REVIEW_MD, OUTSIDE: "x"}),
                     "absolute path"),
    "tar-absolute": ("tar.gz", lambda: _targz({"r/skills/evil/SKILL.md": REVIEW_MD,
                                               OUTSIDE: "x"}), "absolute path"),
    "tar-symlink-out": ("tar.gz", lambda: _targz(
        {"r/skills/evil/SKILL.md": REVIEW_MD},
        symlinks={"r/skills/evil/passwd": "../../../../../etc/passwd"}), "points outside"),
    "zip-symlink-out": ("zip", lambda: _zip(
        {"r/skills/evil/SKILL.md": REVIEW_MD},
        symlinks={"r/skills/evil/home": "/home"}), "points outside"),
    "zip-through-symlink": ("zip", lambda: _zip(
        {"r/skills/evil/SKILL.md": REVIEW_MD, "r/skills/evil/d/x": "x"},
        symlinks={"r/skills/evil/d": "."}), "under symlink"),
    "zip-bomb": ("zip", lambda: _zip({"r/skills/evil/SKILL.md": REVIEW_MD,
                                      "r/skills/evil/zeros.bin": b"\0" * (20 * 1024 * 1024)}),
                 "zip bomb"),
    "not-an-archive": ("zip", lambda: b"<html>rate limited</html>", "not a zip, tar"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_nothing_is_written(
    case: str, home: Path, data_dir: Path, tmp_path: Path, served: tuple[Path, str], run
) -> None:
    root, base = served
    ext, build, message = HOSTILE[case]
    (root / f"evil.{ext}").write_bytes(build())
    assert run("skills", "repos", "add", "evil", f"{base}/evil.{ext}", "--subdir",
               "skills").exit_code == 0
    before_home, before_data = snapshot(home), snapshot(data_dir)
    before_tmp = sorted(p.name for p in tmp_path.iterdir())
    result = run("skills", "install", "code-review", "--repo", "evil")
    assert result.exit_code == 1
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert snapshot(home) == before_home  # no ~/.claude/skills, nothing anywhere
    assert snapshot(data_dir) == before_data  # not even the archive in the cache
    assert sorted(p.name for p in tmp_path.iterdir()) == before_tmp
    assert not Path(OUTSIDE).exists()
    listing = run("skills", "list", "--repo", "evil")
    assert listing.exit_code == 1 and message in listing.output


def test_symlink_to_another_skill_is_refused_at_install(home: Path, served: tuple[Path, str],
                                                        run) -> None:
    root, base = served
    (root / "r.tar.gz").write_bytes(_targz(
        {"r/skills/a/SKILL.md": "---\nname: a\ndescription: A\n---\n",
         "r/skills/b/SKILL.md": "---\nname: b\ndescription: B\n---\n"},
        symlinks={"r/skills/a/peek": "../b/SKILL.md"}))  # inside the archive, outside skill a
    run("skills", "repos", "add", "r", f"{base}/r.tar.gz", "--subdir", "skills")
    result = run("skills", "install", "a", "--repo", "r")
    assert result.exit_code == 1 and "points outside the skill" in result.output
    assert not (home / ".claude" / "skills").exists()
    assert run("skills", "install", "b", "--repo", "r").exit_code == 0


def test_gzip_bomb_and_oversized_download_hit_the_limits(
    home: Path, data_dir: Path, served: tuple[Path, str], run, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, base = served
    small = Limits(max_download=64 * 1024, max_total=2 * 1024 * 1024, max_file=1024 * 1024)
    monkeypatch.setattr(archive, "DEFAULT_LIMITS", small)
    (root / "bomb.tar.gz").write_bytes(_targz({"r/skills/x/SKILL.md": REVIEW_MD,
                                               "r/skills/x/z.bin": b"\0" * (16 * 1024 * 1024)}))
    (root / "big.zip").write_bytes(_zip({"r/skills/x/SKILL.md": REVIEW_MD,
                                         "r/skills/x/noise.bin": os.urandom(200 * 1024)}))
    assert len((root / "bomb.tar.gz").read_bytes()) < 64 * 1024  # small on the wire
    run("skills", "repos", "add", "bomb", f"{base}/bomb.tar.gz", "--subdir", "skills")
    run("skills", "repos", "add", "big", f"{base}/big.zip", "--subdir", "skills")
    before = snapshot(home), snapshot(data_dir)
    bomb = run("skills", "install", "code-review", "--repo", "bomb")
    assert bomb.exit_code == 1 and "gzip bomb" in bomb.output
    big = run("skills", "install", "code-review", "--repo", "big")
    assert big.exit_code == 1 and "download limit" in big.output
    assert (snapshot(home), snapshot(data_dir)) == before


def test_local_directory_with_escaping_symlink_is_refused(home: Path, tmp_path: Path,
                                                          run) -> None:
    local = tmp_path / "dir-repo"
    (local / "leaky").mkdir(parents=True)
    (local / "leaky" / "SKILL.md").write_text("---\nname: leaky\ndescription: L\n---\n")
    (local / "leaky" / "ssh").symlink_to(home)
    run("skills", "repos", "add", "dir", str(local))
    result = run("skills", "install", "leaky", "--repo", "dir")
    assert result.exit_code == 1 and "points outside" in result.output
    assert not (home / ".claude" / "skills").exists()
