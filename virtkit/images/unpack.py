"""Safe unpacking of one OCI layer tar into a directory usable as an overlayfs lowerdir.

Every entry is written relative to a directory fd that was opened without following symlinks, so
nothing can ever be created outside `dest`. Names with `..`, absolute names, entries whose parent path
crosses a symlink (planted earlier in this layer or visible in a lower layer), escaping hardlinks and
device nodes are refused with UnsafeArchive; on any failure `dest` is removed whole.

OCI whiteouts become overlayfs ones: `.wh.NAME` -> a 0/0 character device `NAME`, `.wh..wh..opq` ->
xattr `trusted.overlay.opaque=y` on the directory.
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from virtkit.core.errors import IntegrityError, InvalidArgument, SystemFailure, UnsafeArchive

from ._digestio import LayerReader

__all__ = ["OPAQUE_MARKER", "OPAQUE_XATTR", "WHITEOUT_PREFIX", "check_implicit_parents", "unpack_layer",
           "unpack_layer_report"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_PAX_XATTR = "SCHILY.xattr."
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20


def unpack_layer(tar_path: str | Path, dest: str | Path, lower_layers: Sequence[Path] = ()) -> None:
    """Unpack the (optionally compressed) layer tar at `tar_path` into `dest`.

    `dest` must not exist or be an empty directory. `lower_layers` are the already unpacked layers
    below this one, lowest first (as ImageStore.layer_paths returns them); they are only read, to
    refuse entries that would be written through a symlink visible in the merged view.
    """
    unpack_layer_report(tar_path, dest, lower_layers)


def unpack_layer_report(tar_path: str | Path, dest: str | Path, lower_layers: Sequence[Path] = (),
                        expect: tuple[str, str] | None = None) -> list[str]:
    """unpack_layer, returning the parent directories the layer used without naming them itself.

    Those are the only paths through which a *different* stack of lower layers could make this layer
    write through a symlink; check_implicit_parents re-checks them when the unpacked layer is reused.
    `expect` = (blob digest, diff_id): both are checked in the same pass that unpacks (IntegrityError, and
    nothing left in `dest`, when either differs).
    """
    dest = Path(dest)
    try:
        os.mkdir(dest, 0o755)
    except FileExistsError:
        if not dest.is_dir() or dest.is_symlink() or any(dest.iterdir()):
            raise InvalidArgument(f"dest: {dest} must be a new or empty directory") from None
    unpacker = _Unpacker(dest, [Path(p) for p in lower_layers])
    try:
        unpacker.run(Path(tar_path), expect)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return sorted("/".join(p) for p in unpacker.implicit_parents)


def check_implicit_parents(parents: Sequence[str], lower_layers: Sequence[Path], layer: str) -> None:
    """Refuse, naming `layer`, if any of `parents` is a symlink in the merged view of `lower_layers`."""
    checker = _Unpacker(Path("/nonexistent"), [Path(p) for p in lower_layers])
    for parent in parents:
        checker._check_lowers(f"{layer}: {parent}/", tuple(_split_name(parent)))


def _split_name(name: str, what: str = "entry") -> list[str]:
    """Turn a tar name into path components, refusing absolute names and `..`."""
    if "\0" in name:
        raise UnsafeArchive(f"{what} {name!r}: name contains a NUL byte")
    if name.startswith("/"):
        raise UnsafeArchive(f"{what} {name!r}: absolute name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{what} {name!r}: name has a '..' component")
    return parts


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


class _Unpacker:
    def __init__(self, dest: Path, lowers: list[Path]) -> None:
        self.dest = dest
        self.lowers_top_first = list(reversed(lowers))
        self.is_root = os.geteuid() == 0
        # Directories this layer names explicitly: they hide whatever a lower layer has at that path.
        self.explicit_dirs: set[tuple[str, ...]] = {()}
        self.opaque_dirs: set[tuple[str, ...]] = set()
        self.lower_checked: set[tuple[str, ...]] = set()
        self.implicit_parents: set[tuple[str, ...]] = set()
        # Directory mtimes are applied last: adding children would change them again.
        self.dir_times: list[tuple[tuple[str, ...], int]] = []
        self.root_fd = -1
        self.chain: list[tuple[str, int]] = []

    def run(self, tar_path: Path, expect: tuple[str, str] | None = None) -> None:
        self.root_fd = os.open(self.dest, _DIR_FLAGS)
        reader: LayerReader | None = None
        try:
            try:
                # plain, gzip or zstd (which tarfile cannot read itself), decompressed and hashed in one pass
                reader = LayerReader(tar_path, what=f"layer {expect[0] if expect else tar_path}")
                tf = tarfile.open(fileobj=reader, mode="r|")  # type: ignore[call-overload]  # noqa: SIM115
            except (tarfile.TarError, OSError, zlib.error) as exc:
                raise InvalidArgument(f"layer {tar_path}: not a readable tar archive: {exc}") from exc
            with tf:
                member: tarfile.TarInfo | None = None
                try:
                    for member in tf:
                        self._entry(member, tf)
                except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
                    raise InvalidArgument(f"layer {tar_path}: corrupt tar archive: {exc}") from exc
                except OSError as exc:
                    where = f"entry {member.name!r}" if member is not None else f"layer {tar_path}"
                    raise SystemFailure(f"{where}: {exc}") from exc
            if reader is not None and expect is not None:
                reader.drain()
                if reader.digest != expect[0]:
                    raise IntegrityError(f"blob {expect[0]} is corrupt: its content hashes to {reader.digest}")
                if reader.diff_id != expect[1]:
                    raise IntegrityError(f"layer {expect[0]}: its tar hashes to {reader.diff_id}, but the image"
                                         f" config says its diff_id is {expect[1]}")
            self._apply_dir_times()
        finally:
            self._forget_chain()
            os.close(self.root_fd)
            if reader is not None:
                reader.close()

    # -- path walking -------------------------------------------------------------------------------

    def _open_parent(self, name: str, parts: list[str], create: bool = True) -> int:
        """Return an fd (the caller's to close) of the directory that will hold parts[-1], walking without
        following symlinks.

        The directories of the last walk stay open (self.chain): entries come sorted, so the next one mostly
        shares its parents and only the new components are checked and opened. Anything that removes a path
        from the tree drops the chain (_forget_chain) first.
        """
        parents = parts[:-1]
        k = 0
        while k < len(self.chain) and k < len(parents) and self.chain[k][0] == parents[k]:
            k += 1
        for _, cfd in self.chain[k:]:
            os.close(cfd)
        del self.chain[k:]
        fd = self.chain[-1][1] if self.chain else self.root_fd
        for i in range(k, len(parents)):
            comp = parents[i]
            prefix = tuple(parents[: i + 1])
            st = _lstat_at(fd, comp)
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise UnsafeArchive(
                    f"entry {name!r}: parent {'/'.join(prefix)!r} is a symlink in this layer;"
                    " writing through it is refused")
            if prefix not in self.explicit_dirs and not self._under_opaque(prefix):
                self.implicit_parents.add(prefix)
                self._check_lowers(name, prefix)
            if st is None:
                if not create:
                    raise UnsafeArchive(f"entry {name!r}: {'/'.join(prefix)!r} does not exist")
                os.mkdir(comp, 0o755, dir_fd=fd)
            elif not stat.S_ISDIR(st.st_mode):
                if not create:
                    raise UnsafeArchive(f"entry {name!r}: {'/'.join(prefix)!r} is not a directory")
                # Tar semantics: a later entry replaces an earlier non-directory on its path.
                os.unlink(comp, dir_fd=fd)
                os.mkdir(comp, 0o755, dir_fd=fd)
            try:
                fd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafeArchive(f"entry {name!r}: parent {'/'.join(prefix)!r} changed under us")\
                        from exc
                raise
            self.chain.append((comp, fd))
        return os.dup(fd)

    def _forget_chain(self) -> None:
        for _, cfd in self.chain:
            os.close(cfd)
        self.chain = []

    def _under_opaque(self, prefix: tuple[str, ...]) -> bool:
        return any(prefix[:i] in self.opaque_dirs for i in range(len(prefix)))

    def _check_lowers(self, name: str, prefix: tuple[str, ...]) -> None:
        """Refuse if `prefix` resolves to a symlink in the merged view of the lower layers."""
        if not self.lowers_top_first or prefix in self.lower_checked:
            return
        visible = list(self.lowers_top_first)
        for depth in range(1, len(prefix) + 1):
            rel = os.path.join(*prefix[:depth])
            nxt: list[Path] = []
            for layer in visible:
                try:
                    st = os.lstat(layer / rel)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if stat.S_ISLNK(st.st_mode) and not nxt:
                    raise UnsafeArchive(
                        f"entry {name!r}: parent {rel!r} is a symlink in a lower layer;"
                        " writing through it is refused")
                if not stat.S_ISDIR(st.st_mode):
                    break  # a whiteout or non-directory hides everything below it
                nxt.append(layer)
                if _xattr(layer / rel, OPAQUE_XATTR) == b"y":
                    break
            if not nxt:
                break
            visible = nxt
        self.lower_checked.add(prefix)

    # -- entries ------------------------------------------------------------------------------------

    def _entry(self, m: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        name = m.name
        parts = _split_name(name)
        if not parts:
            if m.isdir():
                self._meta(self.root_fd, None, m, is_dir=True)
                self.dir_times.append(((), int(m.mtime)))
                return
            raise UnsafeArchive(f"entry {name!r}: names the layer root but is not a directory")
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(name, parts)
            return
        if m.ischr() or m.isblk():
            raise UnsafeArchive(f"entry {name!r}: device nodes are not allowed in a layer")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk() or m.isfifo()):
            raise UnsafeArchive(f"entry {name!r}: unsupported tar entry type {m.type!r}")
        link_src: tuple[int, str] | None = None
        if m.islnk():
            link_src = self._hardlink_source(name, m.linkname)
        fd = self._open_parent(name, parts)
        try:
            self._write(fd, base, tuple(parts), m, tf, link_src)
        finally:
            os.close(fd)
            if link_src is not None:
                os.close(link_src[0])

    def _write(self, fd: int, base: str, key: tuple[str, ...], m: tarfile.TarInfo, tf: tarfile.TarFile,
               link_src: tuple[int, str] | None) -> None:
        existing = _lstat_at(fd, base)
        if m.isdir():
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                os.unlink(base, dir_fd=fd)
                existing = None
            if existing is None:
                os.mkdir(base, 0o700, dir_fd=fd)
            self.explicit_dirs.add(key)
            dfd = os.open(base, _DIR_FLAGS, dir_fd=fd)
            try:
                self._meta(dfd, None, m, is_dir=True)
            finally:
                os.close(dfd)
            self.dir_times.append((key, int(m.mtime)))
            return
        if existing is not None:
            self._remove_at(fd, base, existing)
        if m.isreg():
            self._write_file(fd, base, m, tf)
        elif m.issym():
            os.symlink(m.linkname, base, dir_fd=fd)
            self._meta(fd, base, m, is_dir=False, is_link=True)
        elif m.islnk():
            assert link_src is not None
            os.link(link_src[1], base, src_dir_fd=link_src[0], dst_dir_fd=fd, follow_symlinks=False)
        else:  # FIFO
            os.mkfifo(base, 0o600, dir_fd=fd)
            self._meta(fd, base, m, is_dir=False)

    def _write_file(self, dir_fd: int, base: str, m: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        src = tf.extractfile(m)
        ffd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=dir_fd)
        try:
            if src is not None:
                _copy(src, ffd)
            self._meta(ffd, None, m, is_dir=False)
        finally:
            os.close(ffd)

    def _hardlink_source(self, name: str, target: str) -> tuple[int, str]:
        tparts = _split_name(target, what=f"entry {name!r}: hardlink target")
        if not tparts:
            raise UnsafeArchive(f"entry {name!r}: hardlink to the layer root")
        try:
            fd = self._open_parent(name, tparts, create=False)
        except UnsafeArchive as exc:
            raise UnsafeArchive(f"entry {name!r}: hardlink target {target!r} is unsafe: {exc}") from exc
        st = _lstat_at(fd, tparts[-1])
        if st is None or stat.S_ISDIR(st.st_mode):
            os.close(fd)
            what = "does not exist in this layer" if st is None else "is a directory"
            raise UnsafeArchive(f"entry {name!r}: hardlink target {target!r} {what}")
        return fd, tparts[-1]

    def _whiteout(self, name: str, parts: list[str]) -> None:
        base = parts[-1]
        fd = self._open_parent(name, parts)
        try:
            if base == OPAQUE_MARKER:
                self.opaque_dirs.add(tuple(parts[:-1]))
                os.setxattr(fd, OPAQUE_XATTR, b"y")
                return
            if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
                return  # other AUFS metadata (.wh..wh.plnk etc.) has no meaning for overlayfs
            target = base[len(WHITEOUT_PREFIX):]
            if target in ("", ".", ".."):
                raise UnsafeArchive(f"entry {name!r}: whiteout of an invalid name")
            existing = _lstat_at(fd, target)
            if existing is not None:
                self._remove_at(fd, target, existing)
            # The only device node ever written: overlayfs' whiteout, a 0/0 character device.
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=fd)
        finally:
            os.close(fd)

    def _remove_at(self, dir_fd: int, base: str, st: os.stat_result) -> None:
        self._forget_chain()   # `base` may be one of the chain's directories
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(base, dir_fd=dir_fd)
        else:
            os.unlink(base, dir_fd=dir_fd)

    # -- metadata -----------------------------------------------------------------------------------

    def _meta(self, fd: int, base: str | None, m: tarfile.TarInfo, is_dir: bool, is_link: bool = False) -> None:
        """Apply owner, mode, xattrs and (for non-directories) mtime to fd, or to `base` inside dir fd."""
        target: int | str = fd if base is None else base
        at = {} if base is None else {"dir_fd": fd, "follow_symlinks": False}
        if self.is_root:
            os.chown(target, m.uid, m.gid, **at)  # type: ignore[arg-type]
        if not is_link:
            # chown clears setuid/setgid, so the mode comes after it.
            if base is None:
                os.chmod(fd, stat.S_IMODE(m.mode))
            else:
                os.chmod(base, stat.S_IMODE(m.mode), dir_fd=fd)
        for key, value in m.pax_headers.items():
            if key.startswith(_PAX_XATTR):
                self._set_xattr(fd, base, key[len(_PAX_XATTR):], value, m.name)
        if not is_dir:
            ns = int(m.mtime * 1_000_000_000)
            os.utime(target, ns=(ns, ns), **at)  # type: ignore[arg-type]

    def _set_xattr(self, fd: int, base: str | None, key: str, value: str, name: str) -> None:
        if key.startswith("trusted.overlay."):
            raise UnsafeArchive(f"entry {name!r}: carries overlayfs-private xattr {key!r}")
        raw = value.encode("utf-8", "surrogateescape")
        try:
            if base is None:
                os.setxattr(fd, key, raw)
            else:
                # setxattr has no dir_fd form; /proc/self/fd/N resolves to the already-safe directory.
                os.setxattr(f"/proc/self/fd/{fd}/{base}", key, raw, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EPERM) and not self.is_root:
                return
            raise SystemFailure(f"entry {name!r}: setting xattr {key!r} failed: {exc.strerror}") from exc

    def _apply_dir_times(self) -> None:
        for key, mtime in self.dir_times:
            if key == ():
                fd = os.dup(self.root_fd)
            else:
                try:
                    # The "parent" of a dummy child of `key` is the directory `key` itself.
                    fd = self._open_parent("/".join(key), [*key, "-"], create=False)
                except UnsafeArchive:
                    continue  # replaced by a later entry
            try:
                os.utime(fd, ns=(mtime * 10**9, mtime * 10**9))
            finally:
                os.close(fd)


def _copy(src: IO[bytes], fd: int) -> None:
    while chunk := src.read(_COPY_CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


def _xattr(path: Path, key: str) -> bytes | None:
    try:
        return os.getxattr(path, key, follow_symlinks=False)
    except OSError:
        return None
