"""Claude Skills: repositories of SKILL.md folders, installed into ``~/.claude/skills/NAME/``
(``$CLAUDE_CONFIG_DIR/skills``; code.claude.com/docs/en/skills, "Personal skills").

Two public repositories are built in: anthropics/skills (Anthropic's examples, under
``skills/``) and obra/superpowers (a widely used workflow collection, also under ``skills/``).
Users add any Git hosting archive URL (e.g. a GitHub codeload zip or tar.gz), a GitHub
``owner/repo``, a local archive or a local directory. Every archive is untrusted: it is
downloaded to a temporary file, validated as a whole (codeswitch/clients/archive.py), and
only then cached; a skill is extracted into a temporary directory next to its destination,
its SKILL.md front matter is checked, and the directory is renamed into place.
State: ``<home>/skills.json`` (added repositories, installed skills), archives in
``<home>/cache/skills/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from codeswitch.clients import archive
from codeswitch.clients._errors import SkillError, SkillValidationError, UnsafeArchiveError
from codeswitch.clients._files import atomic_write, load_state
from codeswitch.clients._frontmatter import validate_skill_md
from codeswitch.clients.archive import (
    Limits,
    Source,
    entries_under,
    extract,
    open_source,
    remove_tree,
)

__all__ = ["BUILTIN_REPOS", "Repo", "SkillInfo", "SkillsManager", "resolve_source"]

REPO_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Repo:
    name: str
    source: str  # URL of an archive, or a local path
    subdir: str = ""
    builtin: bool = False


BUILTIN_REPOS: dict[str, Repo] = {
    "anthropics": Repo("anthropics",
                       "https://codeload.github.com/anthropics/skills/zip/refs/heads/main",
                       "skills", True),
    "superpowers": Repo("superpowers",
                        "https://codeload.github.com/obra/superpowers/zip/refs/heads/main",
                        "skills", True),
}


@dataclass(frozen=True)
class SkillInfo:
    repo: str
    name: str
    description: str
    folder: PurePosixPath  # inside the repository source
    error: str | None = None


def resolve_source(source: str, ref: str | None = None) -> str:
    """A local path, an archive URL, or a GitHub ``owner/repo`` / repository URL."""
    local = Path(source).expanduser()
    if local.exists():
        return str(local.resolve())
    gh = re.match(r"^(?:https?://github\.com/)?([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?$",
                  source)
    if gh and (not source.startswith(("http://", "https://"))
               or source.startswith("https://github.com/")):
        owner, name = gh.group(1), gh.group(2)
        if ref:
            return f"https://codeload.github.com/{owner}/{name}/zip/refs/heads/{ref}"
        return f"https://github.com/{owner}/{name}/archive/HEAD.zip"  # the default branch
    if re.match(r"^https?://", source):
        return source
    raise SkillError(f"{source!r} is not a directory, an archive or an http(s) URL")


class SkillsManager:
    def __init__(self, home: Path, skills_dir: Path, *, limits: Limits | None = None,
                 console: Any = None, http: httpx.Client | None = None) -> None:
        self.home = home
        self.skills_dir = skills_dir
        self.limits = limits or archive.DEFAULT_LIMITS
        self.console = console  # a rich Console for a download's progress bar (None: quiet)
        self.http = http
        self.state_path = home / "skills.json"
        self.cache_dir = home / "cache" / "skills"

    # -- state ---------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        state = load_state(self.state_path)
        state.setdefault("repos", {})
        state.setdefault("installed", {})
        return state

    def _save(self, state: dict[str, Any]) -> None:
        atomic_write(self.state_path, json.dumps(state, indent=2, sort_keys=True) + "\n",
                     mode=0o600)

    def repos(self) -> dict[str, Repo]:
        out = dict(BUILTIN_REPOS)
        for name, r in self._state()["repos"].items():
            out[name] = Repo(name, r["source"], r.get("subdir", ""))
        return out

    def add_repo(self, name: str, source: str, *, subdir: str = "", ref: str | None = None) -> Repo:
        if not REPO_NAME_RE.match(name):
            raise SkillError(f"invalid repository name {name!r}")
        if name in BUILTIN_REPOS:
            raise SkillError(f"{name!r} is a built-in repository")
        repo = Repo(name, resolve_source(source, ref), subdir.strip("/"))
        state = self._state()
        state["repos"][name] = {"source": repo.source, "subdir": repo.subdir}
        self._save(state)
        return repo

    def remove_repo(self, name: str) -> None:
        if name in BUILTIN_REPOS:
            raise SkillError(f"{name!r} is a built-in repository and cannot be removed")
        state = self._state()
        if state["repos"].pop(name, None) is None:
            raise SkillError(f"no repository named {name!r}")
        self._save(state)
        for suffix in (".archive", ".json"):
            (self.cache_dir / f"{name}{suffix}").unlink(missing_ok=True)

    def installed(self) -> dict[str, Any]:
        installed = self._state()["installed"]
        return installed if isinstance(installed, dict) else {}

    # -- fetching ------------------------------------------------------------------------
    def _download(self, url: str, dest: Path) -> None:
        limit = self.limits.max_download
        client = self.http or httpx.Client(follow_redirects=True, timeout=60.0)
        try:
            with client.stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise SkillError(f"download failed: {url} answered HTTP {resp.status_code}")
                length = int(resp.headers.get("content-length") or 0) or None
                if length and length > limit:
                    raise UnsafeArchiveError(
                        f"{url}: archive is {length // (1024 * 1024)} MiB, over the "
                        f"{limit // (1024 * 1024)} MiB download limit")
                got = 0
                with self._progress(url, length) as advance, open(dest, "wb") as fh:
                    for chunk in resp.iter_bytes(64 * 1024):
                        got += len(chunk)
                        if got > limit:
                            raise UnsafeArchiveError(
                                f"{url}: archive is over the {limit // (1024 * 1024)} MiB "
                                "download limit")
                        fh.write(chunk)
                        advance(len(chunk))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise SkillError(f"download failed: cannot connect to {url} ({exc}): is this "
                             "machine offline? A local directory or archive needs no "
                             "network") from None
        except httpx.HTTPError as exc:
            raise SkillError(f"download failed: {url}: {exc}") from None
        finally:
            if self.http is None:
                client.close()

    @contextlib.contextmanager
    def _progress(self, url: str, length: int | None) -> Any:
        """A progress bar on ``self.console`` (rich, imported only then), else nothing."""
        if self.console is None:
            yield lambda n: None
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task(f"downloading {url.rsplit('/', 1)[-1]}", total=length)
            yield lambda n: progress.update(task, advance=n)

    def open_repo(self, repo: Repo, *, refresh: bool = False) -> Source:
        """A validated source for ``repo``: a directory, a local archive, or a cached download.
        A refused download is deleted; nothing reaches the cache."""
        local = Path(repo.source)
        if not re.match(r"^https?://", repo.source):
            if not local.exists():
                raise SkillError(f"{repo.name}: {repo.source} does not exist")
            return open_source(local, self.limits)
        cached = self.cache_dir / f"{repo.name}.archive"
        meta_path = self.cache_dir / f"{repo.name}.json"
        meta = load_state(meta_path)
        if not refresh and cached.exists() and meta.get("source") == repo.source:
            return open_source(cached, self.limits)
        with tempfile.TemporaryDirectory(prefix="codeswitch-skills-") as tmp:
            download = Path(tmp) / "archive"
            self._download(repo.source, download)
            open_source(download, self.limits).close()  # validate before keeping anything
            data = download.read_bytes()
        atomic_write(cached, data, mode=0o600)
        meta = {"source": repo.source, "sha256": hashlib.sha256(data).hexdigest(),
                "fetched_at": datetime.now(UTC).isoformat()}
        atomic_write(meta_path, json.dumps(meta, indent=2) + "\n", mode=0o600)
        return open_source(cached, self.limits)

    # -- listing -------------------------------------------------------------------------
    def scan(self, repo: Repo, *, refresh: bool = False) -> list[SkillInfo]:
        with self.open_repo(repo, refresh=refresh) as source:
            return self._scan(repo, source)

    def _scan(self, repo: Repo, source: Source) -> list[SkillInfo]:
        prefix = PurePosixPath(repo.subdir) if repo.subdir else PurePosixPath(".")
        folders = sorted(
            {e.path.parent for _, e in entries_under(source, prefix)
             if e.kind == "file" and e.path.name == "SKILL.md"},
            key=lambda p: (len(p.parts), str(p)),
        )
        outer: list[PurePosixPath] = []
        for folder in folders:  # a SKILL.md inside another skill is part of that skill
            if not any(o == PurePosixPath(".") or o in folder.parents for o in outer):
                outer.append(folder)
        by_path = {e.path: e for e in source.entries}
        out = []
        for folder in outer:
            entry = by_path[folder / "SKILL.md"]
            try:
                name, desc = validate_skill_md(source.read(entry).decode("utf-8", "replace"))
                out.append(SkillInfo(repo.name, name, desc, folder))
            except SkillValidationError as exc:
                out.append(SkillInfo(repo.name, folder.name, "", folder, str(exc)))
        return out

    def find(self, name: str, repo: str | None = None, *, refresh: bool = False
             ) -> tuple[Repo, SkillInfo]:
        repos = self.repos()
        if repo is not None and repo not in repos:
            raise SkillError(f"no repository named {repo!r}")
        candidates = [repos[repo]] if repo else list(repos.values())
        hits: list[tuple[Repo, SkillInfo]] = []
        errors: list[str] = []
        for r in candidates:
            try:
                hits += [(r, s) for s in self.scan(r, refresh=refresh) if s.name == name]
            except SkillError as exc:
                if repo:
                    raise
                errors.append(str(exc))
        if not hits:
            more = f" ({'; '.join(errors)})" if errors else ""
            raise SkillError(f"no skill named {name!r} in {repo or 'any repository'}{more}")
        if len(hits) > 1:
            where = ", ".join(r.name for r, _ in hits)
            raise SkillError(f"{name!r} is in several repositories ({where}): pass --repo")
        return hits[0]

    # -- installing ----------------------------------------------------------------------
    def install(self, name: str, *, repo: str | None = None, force: bool = False,
                refresh: bool = False, replace: bool = False) -> SkillInfo:
        found_repo, info = self.find(name, repo, refresh=refresh)
        if info.error:
            raise SkillValidationError(f"{found_repo.name}/{info.folder}: {info.error}")
        dest = self.skills_dir / info.name
        installed = self.installed()
        if dest.exists() or dest.is_symlink():
            if info.name in installed and not replace:
                raise SkillError(f"{info.name} is already installed: use `skills update`")
            if info.name not in installed and not force:
                raise SkillError(f"{dest} exists and was not installed by codeswitch "
                                 "(use --force to replace it)")
        with self.open_repo(found_repo) as source:
            count = self._place(source, info, dest)
        state = self._state()
        state["installed"][info.name] = {
            "repo": found_repo.name, "source": found_repo.source, "folder": str(info.folder),
            "files": count, "installed_at": datetime.now(UTC).isoformat(),
        }
        self._save(state)
        return info

    def _place(self, source: Source, info: SkillInfo, dest: Path) -> int:
        parent = dest.parent
        created_parent = not parent.exists()
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{info.name}.codeswitch-", dir=parent))
        try:
            count = extract(source, info.folder, tmp)
            skill_md = tmp / "SKILL.md"
            if skill_md.is_symlink() or not skill_md.is_file():
                raise SkillValidationError(f"{info.name}: SKILL.md is missing after extraction")
            name, _ = validate_skill_md(skill_md.read_text(encoding="utf-8", errors="replace"))
            if name != info.name:
                raise SkillValidationError(f"{info.name}: SKILL.md changed while installing")
            old = None
            if dest.exists() or dest.is_symlink():
                old = parent / f".{info.name}.old-{os.getpid()}"
                remove_tree(old)
                os.rename(dest, old)
            os.rename(tmp, dest)
            if old is not None:
                remove_tree(old)
            return count
        except BaseException:
            remove_tree(tmp)
            if created_parent:
                with contextlib.suppress(OSError):
                    parent.rmdir()
            raise

    def remove(self, name: str) -> None:
        state = self._state()
        if name not in state["installed"]:
            raise SkillError(f"{name!r} was not installed by codeswitch; not removing it")
        dest = self.skills_dir / name
        if dest.exists() or dest.is_symlink():
            trash = self.skills_dir / f".{name}.removing-{os.getpid()}"
            os.rename(dest, trash)
            shutil.rmtree(trash, ignore_errors=True)
        del state["installed"][name]
        self._save(state)

    def update(self, name: str | None = None) -> list[str]:
        installed = self.installed()
        names = [name] if name else sorted(installed)
        if name and name not in installed:
            raise SkillError(f"{name!r} was not installed by codeswitch")
        done = []
        refreshed: set[str] = set()
        for skill in names:
            repo = installed[skill]["repo"]
            self.install(skill, repo=repo, replace=True, refresh=repo not in refreshed)
            refreshed.add(repo)
            done.append(skill)
        return done
