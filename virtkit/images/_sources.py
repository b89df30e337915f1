"""Read-only views of an image archive: a directory or a tar file, addressed by relative names, never escaping.

Both refuse names with `..` or an absolute path, and links (symlinks in a directory, symlinks or hardlinks in a
tar) that resolve outside the archive, with UnsafeArchive naming the entry: nothing of the archive is written
anywhere but into the store's staging area, and only through these.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import Path
from typing import IO

from virtkit.core.errors import InvalidArgument, UnsafeArchive

__all__ = ["DirSource", "Source", "TarSource", "open_source"]

_JSON_LIMIT = 16 << 20


def _norm(name: str, what: str) -> str:
    if "\0" in name:
        raise UnsafeArchive(f"{what} {name!r}: name contains a NUL byte")
    if name.startswith("/"):
        raise UnsafeArchive(f"{what} {name!r}: absolute name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{what} {name!r}: name has a '..' component (path traversal)")
    return "/".join(parts)


class Source:
    label: str

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def open(self, name: str, what: str) -> IO[bytes]:
        raise NotImplementedError

    def size(self, name: str, what: str) -> int:
        raise NotImplementedError

    def read(self, name: str, what: str) -> bytes:
        if self.size(name, what) > _JSON_LIMIT:
            raise InvalidArgument(f"{self.label}: {what} {name!r} is larger than {_JSON_LIMIT >> 20} MiB")
        with self.open(name, what) as f:
            return f.read()

    def close(self) -> None:
        pass

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DirSource(Source):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.real = os.path.realpath(root)
        self.label = str(root)

    def _path(self, name: str, what: str) -> str:
        rel = _norm(name, what)
        path = os.path.join(self.real, rel)
        real = os.path.realpath(path)
        if real != self.real and not real.startswith(self.real + os.sep):
            raise UnsafeArchive(f"{self.label}: {what} {name!r} resolves outside the layout (to {real})")
        return real

    def has(self, name: str) -> bool:
        try:
            return os.path.isfile(self._path(name, "file"))
        except UnsafeArchive:
            return False

    def size(self, name: str, what: str) -> int:
        path = self._path(name, what)
        if not os.path.isfile(path):
            raise InvalidArgument(f"{self.label}: {what} {name!r} is missing")
        return os.path.getsize(path)

    def open(self, name: str, what: str) -> IO[bytes]:
        path = self._path(name, what)
        try:
            return open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise InvalidArgument(f"{self.label}: {what} {name!r} is missing") from None


class TarSource(Source):
    def __init__(self, path: Path) -> None:
        self.label = str(path)
        try:
            self.tf = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
            members = self.tf.getmembers()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise InvalidArgument(f"path: {path} is not a readable tar archive: {exc}") from exc
        self.members: dict[str, tarfile.TarInfo] = {}
        for m in members:
            self.members[_norm(m.name, "archive entry")] = m   # refuses traversal anywhere in the archive
        for m in members:
            if m.issym() or m.islnk():
                self._resolve(_norm(m.name, "archive entry"), "archive entry")

    def _resolve(self, name: str, what: str) -> tarfile.TarInfo | None:
        """The regular-file member `name` names, following links inside the archive only."""
        seen = 0
        cur = _norm(name, what)
        while True:
            m = self.members.get(cur)
            if m is None or not (m.issym() or m.islnk()):
                return m
            seen += 1
            if seen > 16:
                raise UnsafeArchive(f"{self.label}: {what} {name!r}: too many levels of links")
            target = m.linkname
            if m.issym() and not target.startswith("/"):
                target = posixpath.join(posixpath.dirname(cur), target)
            target = posixpath.normpath(target)
            if target.startswith(("/", "../")) or target == "..":
                raise UnsafeArchive(f"{self.label}: {what} {name!r} links outside the archive ({m.linkname!r})")
            cur = target

    def has(self, name: str) -> bool:
        m = self._resolve(name, "file")
        return m is not None and m.isreg()

    def _member(self, name: str, what: str) -> tarfile.TarInfo:
        m = self._resolve(name, what)
        if m is None or not m.isreg():
            raise InvalidArgument(f"{self.label}: {what} {name!r} is missing from the archive")
        return m

    def size(self, name: str, what: str) -> int:
        return int(self._member(name, what).size)

    def open(self, name: str, what: str) -> IO[bytes]:
        f = self.tf.extractfile(self._member(name, what))
        assert f is not None
        return f

    def close(self) -> None:
        self.tf.close()


def open_source(path: Path) -> Source:
    if not path.exists():
        raise InvalidArgument(f"path: {path} does not exist")
    if path.is_dir():
        return DirSource(path)
    if not path.is_file():
        raise InvalidArgument(f"path: {path} is neither a directory nor a file")
    if not tarfile.is_tarfile(path):
        raise InvalidArgument(f"path: {path} is not a tar archive (expected an OCI image layout, as a directory"
                              " or a tar, or a docker-archive tar)")
    return TarSource(path)
