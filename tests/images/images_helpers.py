"""Helpers of the image tests: layer tars built from a short spec, a sentinel outside every store."""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_skip_unless_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (chown, whiteout mknod, trusted.* xattrs, mounts, chroot)")


def as_root(fn):
    """Mark a test `root` and skip it, saying why, when not running as root."""
    return pytest.mark.root(_skip_unless_root(fn))


@dataclass
class E:
    """One tar entry: kind is file, dir, symlink, hardlink, chr, blk or fifo."""

    kind: str
    name: str
    data: bytes = b""
    link: str = ""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: int = 1_000_000_000
    xattrs: dict[str, str] = field(default_factory=dict)


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}


def make_tar(path: Path, entries: list[E]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = _TYPES[e.kind]
            ti.mode = e.mode if e.mode is not None else (0o755 if e.kind == "dir" else 0o644)
            ti.uid, ti.gid, ti.mtime = e.uid, e.gid, e.mtime
            ti.linkname = e.link
            if e.kind in ("chr", "blk"):
                ti.devmajor, ti.devminor = 1, 3
            ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            if e.kind == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return path


@dataclass
class Sentinel:
    """A directory outside every store/dest whose content must never change."""

    dir: Path
    file: Path

    def snapshot(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.dir.iterdir())}
