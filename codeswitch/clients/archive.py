"""Read untrusted skill archives (zip, tar, tar.gz) and local directories safely.

Opening a source checks every entry before anything is extracted: absolute paths, ``..``
components, backslashes, duplicate or conflicting entries, entries under a symlink, symlinks
that resolve outside the root, hard links and device files are refused, as are more
entries, bigger files or more bytes in total than the limits allow, and zip members whose
compression ratio betrays a bomb. A gzip stream is inflated into a temporary file with a
byte cap, so a tar bomb stops at the cap. Extraction then counts the bytes it actually
writes (headers can lie), creates files with O_EXCL|O_NOFOLLOW and makes symlinks last.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from codeswitch.clients._errors import UnsafeArchiveError

__all__ = ["DEFAULT_LIMITS", "Entry", "Limits", "Source", "extract", "open_source"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_download: int = 100 * MiB
    max_total: int = 200 * MiB  # all entries, uncompressed
    max_file: int = 50 * MiB
    max_entries: int = 20_000
    max_ratio: int = 100  # zip member compression ratio, checked above 1 MiB


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Entry:
    path: PurePosixPath  # relative to the source root, top-level folder stripped
    kind: Literal["file", "dir", "symlink"]
    size: int = 0
    target: str | None = None  # symlink target, as stored
    mode: int = 0o644
    ref: Any = None  # ZipInfo, TarInfo or a Path


def _clean(raw: str, source: str) -> PurePosixPath | None:
    if "\x00" in raw:
        raise UnsafeArchiveError(f"{source}: entry {raw!r} has a NUL byte in its name")
    if "\\" in raw:
        raise UnsafeArchiveError(f"{source}: entry {raw!r} has a backslash in its path")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        raise UnsafeArchiveError(f"{source}: entry {raw!r} has an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{source}: entry {raw!r} escapes the archive (path traversal)")
    return PurePosixPath(*parts) if parts else None


def _inside(base: PurePosixPath, link: PurePosixPath, target: str) -> bool:
    """Does ``link -> target`` resolve to a path inside ``base``?"""
    if target.startswith("/") or "\\" in target:
        return False
    joined = posixpath.normpath(posixpath.join(str(link.parent), target))
    if joined == ".." or joined.startswith("../") or joined.startswith("/"):
        return False
    rel = PurePosixPath(joined)
    return base == PurePosixPath(".") or rel == base or base in rel.parents


class Source:
    """A validated set of entries plus a way to read each file."""

    def __init__(self, label: str, entries: list[Entry], limits: Limits) -> None:
        self.label = label
        self.limits = limits
        self.entries = self._validate(self._strip_top(entries))
        self._cleanup: list[Any] = []

    def _strip_top(self, entries: list[Entry]) -> list[Entry]:
        firsts = {e.path.parts[0] for e in entries}
        if len(firsts) != 1 or all(len(e.path.parts) == 1 for e in entries):
            return entries
        (top,) = firsts
        if any(e.path.parts == (top,) and e.kind != "dir" for e in entries):
            return entries
        return [
            Entry(PurePosixPath(*e.path.parts[1:]), e.kind, e.size, e.target, e.mode, e.ref)
            for e in entries if len(e.path.parts) > 1
        ]

    def _validate(self, entries: list[Entry]) -> list[Entry]:
        limits, label = self.limits, self.label
        if len(entries) > limits.max_entries:
            raise UnsafeArchiveError(f"{label}: more than {limits.max_entries} entries")
        seen: dict[PurePosixPath, Entry] = {}
        total = 0
        for e in entries:
            if e.path in seen:
                if e.kind == "dir" and seen[e.path].kind == "dir":
                    continue
                raise UnsafeArchiveError(f"{label}: duplicate entry {e.path}")
            seen[e.path] = e
            if e.kind == "file":
                if e.size > limits.max_file:
                    raise UnsafeArchiveError(
                        f"{label}: {e.path} is {e.size // MiB} MiB, over the "
                        f"{limits.max_file // MiB} MiB limit per file")
                total += e.size
                if total > limits.max_total:
                    raise UnsafeArchiveError(
                        f"{label}: expands to more than {limits.max_total // MiB} MiB "
                        "(oversized archive or zip bomb)")
            if e.kind == "symlink" and not _inside(PurePosixPath("."), e.path, e.target or ""):
                raise UnsafeArchiveError(
                    f"{label}: symlink {e.path} -> {e.target} points outside the archive")
        for e in seen.values():
            for parent in e.path.parents:
                if parent == PurePosixPath("."):
                    continue
                p = seen.get(parent)
                if p is not None and p.kind == "symlink":
                    raise UnsafeArchiveError(f"{label}: {e.path} lies under symlink {parent}")
                if p is not None and p.kind == "file":
                    raise UnsafeArchiveError(f"{label}: {e.path} lies under file {parent}")
        return list(seen.values())

    def open(self, entry: Entry) -> IO[bytes]:
        raise NotImplementedError

    def read(self, entry: Entry, cap: int = 1 * MiB) -> bytes:
        with self.open(entry) as fh:
            data = fh.read(cap + 1)
        if len(data) > cap:
            raise UnsafeArchiveError(f"{self.label}: {entry.path} is larger than expected")
        return data

    def close(self) -> None:
        for item in self._cleanup:
            with contextlib.suppress(Exception):
                item()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ZipSource(Source):
    def __init__(self, path: Path, limits: Limits) -> None:
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise UnsafeArchiveError(f"{path.name}: not a valid zip archive ({exc})") from None
        try:
            infos = self._zip.infolist()
            if len(infos) > limits.max_entries:
                raise UnsafeArchiveError(f"{path.name}: more than {limits.max_entries} entries")
            entries = []
            for info in infos:
                clean = _clean(info.filename, path.name)
                if clean is None:
                    continue
                mode = info.external_attr >> 16
                ratio = info.file_size / max(info.compress_size, 1)
                if info.file_size > MiB and ratio > limits.max_ratio:
                    raise UnsafeArchiveError(
                        f"{path.name}: {clean} has a compression ratio over {limits.max_ratio}:1 "
                        "(zip bomb)")
                if info.is_dir():
                    entries.append(Entry(clean, "dir", ref=info))
                elif stat.S_ISLNK(mode):
                    if info.file_size > 4096:
                        raise UnsafeArchiveError(f"{path.name}: symlink {clean} is too long")
                    target = self._zip.read(info).decode("utf-8", "replace")
                    entries.append(Entry(clean, "symlink", target=target, ref=info))
                else:
                    perm = 0o755 if mode & 0o111 else 0o644
                    entries.append(Entry(clean, "file", info.file_size, mode=perm, ref=info))
            super().__init__(path.name, entries, limits)
        except BaseException:
            self._zip.close()
            raise
        self._cleanup.append(self._zip.close)

    def open(self, entry: Entry) -> IO[bytes]:
        return self._zip.open(entry.ref)


class _TarSource(Source):
    def __init__(self, path: Path, limits: Limits, label: str) -> None:
        try:
            self._tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed in close()
        except (tarfile.TarError, OSError) as exc:
            raise UnsafeArchiveError(f"{label}: not a valid tar archive ({exc})") from None
        try:
            entries: list[Entry] = []
            while (info := self._tar.next()) is not None:
                if len(entries) >= limits.max_entries:
                    raise UnsafeArchiveError(f"{label}: more than {limits.max_entries} entries")
                if info.type in (tarfile.XGLTYPE, tarfile.XHDTYPE):
                    continue
                clean = _clean(info.name, label)
                if clean is None:
                    continue
                if info.isdir():
                    entries.append(Entry(clean, "dir", ref=info))
                elif info.issym():
                    entries.append(Entry(clean, "symlink", target=info.linkname, ref=info))
                elif info.islnk():
                    raise UnsafeArchiveError(f"{label}: {clean} is a hard link (not supported)")
                elif info.isreg():
                    perm = 0o755 if info.mode & 0o111 else 0o644
                    entries.append(Entry(clean, "file", info.size, mode=perm, ref=info))
                else:
                    raise UnsafeArchiveError(f"{label}: {clean} is a device or fifo")
            super().__init__(label, entries, limits)
        except tarfile.TarError as exc:
            self._tar.close()
            raise UnsafeArchiveError(f"{label}: broken tar archive ({exc})") from None
        except BaseException:
            self._tar.close()
            raise
        self._cleanup.append(self._tar.close)

    def open(self, entry: Entry) -> IO[bytes]:
        fh = self._tar.extractfile(entry.ref)
        if fh is None:
            raise UnsafeArchiveError(f"{self.label}: cannot read {entry.path}")
        return fh


class _DirSource(Source):
    def __init__(self, root: Path, limits: Limits) -> None:
        self._root = root
        entries: list[Entry] = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            base = Path(dirpath)
            for name in [*dirnames, *filenames]:
                full = base / name
                rel = PurePosixPath(full.relative_to(root).as_posix())
                st = full.lstat()
                if stat.S_ISLNK(st.st_mode):
                    entries.append(Entry(rel, "symlink", target=os.readlink(full), ref=full))
                elif stat.S_ISDIR(st.st_mode):
                    entries.append(Entry(rel, "dir", ref=full))
                elif stat.S_ISREG(st.st_mode):
                    perm = 0o755 if st.st_mode & 0o111 else 0o644
                    entries.append(Entry(rel, "file", st.st_size, mode=perm, ref=full))
                else:
                    raise UnsafeArchiveError(f"{root}: {rel} is a device, fifo or socket")
                if len(entries) > limits.max_entries:
                    raise UnsafeArchiveError(f"{root}: more than {limits.max_entries} entries")
            dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
        super().__init__(str(root), entries, limits)

    def _strip_top(self, entries: list[Entry]) -> list[Entry]:
        return entries  # a directory is its own root

    def open(self, entry: Entry) -> IO[bytes]:
        fd = os.open(entry.ref, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        return os.fdopen(fd, "rb")


def _gunzip(path: Path, limits: Limits) -> Path:
    cap = limits.max_total + 10 * MiB  # room for tar headers
    fd, name = tempfile.mkstemp(prefix="codeswitch-skill-", suffix=".tar")
    written = 0
    try:
        with gzip.open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
            while chunk := src.read(MiB):
                written += len(chunk)
                if written > cap:
                    raise UnsafeArchiveError(
                        f"{path.name}: expands to more than {cap // MiB} MiB (gzip bomb)")
                dst.write(chunk)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        os.unlink(name)
        raise UnsafeArchiveError(f"{path.name}: broken gzip stream ({exc})") from None
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def open_source(path: Path, limits: Limits = DEFAULT_LIMITS) -> Source:
    """Open and validate a directory or a zip / tar / tar.gz file (by content, not name)."""
    if path.is_dir():
        return _DirSource(path, limits)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic.startswith(b"PK"):
        return _ZipSource(path, limits)
    if magic.startswith(b"\x1f\x8b"):
        plain = _gunzip(path, limits)
        try:
            source: Source = _TarSource(plain, limits, path.name)
        except BaseException:
            plain.unlink()
            raise
        source._cleanup.append(plain.unlink)
        return source
    if tarfile.is_tarfile(path):
        return _TarSource(path, limits, path.name)
    raise UnsafeArchiveError(f"{path.name}: not a zip, tar or tar.gz archive")


def _under(prefix: PurePosixPath, path: PurePosixPath) -> PurePosixPath | None:
    if prefix == PurePosixPath("."):
        return path
    if path == prefix:
        return PurePosixPath(".")
    if prefix in path.parents:
        return path.relative_to(prefix)
    return None


def entries_under(source: Source, prefix: PurePosixPath) -> Iterator[tuple[PurePosixPath, Entry]]:
    for e in source.entries:
        rel = _under(prefix, e.path)
        if rel is not None and rel != PurePosixPath("."):
            yield rel, e


def extract(source: Source, prefix: PurePosixPath, dest: Path) -> int:
    """Write the entries under ``prefix`` into the existing empty directory ``dest``.
    Returns the number of files written. Raises UnsafeArchiveError on anything unexpected."""
    limits = source.limits
    chosen = sorted(entries_under(source, prefix), key=lambda item: len(item[0].parts))
    for _rel, e in chosen:
        if e.kind == "symlink" and not _inside(prefix, e.path, e.target or ""):
            raise UnsafeArchiveError(
                f"{source.label}: symlink {e.path} -> {e.target} points outside the skill")
    total = files = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for rel, e in chosen:
        out = dest.joinpath(*rel.parts)
        if e.kind == "dir":
            out.mkdir(parents=True, exist_ok=True)
        elif e.kind == "file":
            out.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            with source.open(e) as src, os.fdopen(os.open(out, flags, e.mode), "wb") as dst:
                while chunk := src.read(MiB):
                    written += len(chunk)
                    total += len(chunk)
                    if written > max(e.size, 0) or written > limits.max_file \
                            or total > limits.max_total:
                        raise UnsafeArchiveError(
                            f"{source.label}: {e.path} holds more data than it declares (bomb)")
                    dst.write(chunk)
            os.chmod(out, e.mode)
            files += 1
    for rel, e in chosen:
        if e.kind == "symlink":
            out = dest.joinpath(*rel.parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(e.target or "", out)
    return files


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
