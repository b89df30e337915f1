"""Exact copies of directory trees (overlay upper dirs): ownership, modes, times, all xattrs (trusted.overlay.*
included), hardlinks, sparse files, and special files (overlayfs whiteouts are 0/0 character devices).

The walk runs in the calling thread and makes the directories; worker threads create and fill the files
(data copied in kernel by copy_file_range). Creating inodes costs the kernel far more than Python's share
of the work, so a few threads copy a tree of small files faster than one (cp -a is one). Directory times
are set last, once every file in them exists.
"""

from __future__ import annotations

import errno
import os
import stat
from concurrent.futures import Future, ThreadPoolExecutor

from virtkit.core.errors import SystemFailure

_CHUNK = 1 << 30
_MAX_PENDING = 4096          # queued files before the walk waits for the workers (bounds memory)


def default_workers() -> int:
    return min(8, 2 * (os.cpu_count() or 1))


def copy_tree(src: str, dst: str, *, workers: int | None = None) -> int:
    """Copy directory `src` to `dst` (which must not exist); returns the bytes used (du-style, links once)."""
    copier = _Copier(default_workers() if workers is None else workers)
    try:
        copier.run(src, dst)
    finally:
        copier.close()
    return copier.size


class _Copier:
    def __init__(self, workers: int) -> None:
        self.links: dict[tuple[int, int], str] = {}
        self.size = 0
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="copytree") if workers else None
        self.pending: list[Future[None]] = []
        self.dirs: list[tuple[str, str, os.stat_result]] = []     # children before parents

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def run(self, src: str, dst: str) -> None:
        try:
            st = os.lstat(src)
        except OSError as exc:
            raise SystemFailure(f"copy {src}: {exc.strerror}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise SystemFailure(f"copy {src}: not a directory")
        try:
            self._dir(src, dst, st)
            self._drain()
            for s, d, dst_st in self.dirs:
                _meta_path(s, d, dst_st, symlink=False)
        except OSError as exc:
            raise SystemFailure(f"copy {exc.filename or src}: {exc.strerror}") from exc

    def _drain(self) -> None:
        pending, self.pending = self.pending, []
        error: BaseException | None = None
        for fut in pending:
            try:
                fut.result()
            except BaseException as exc:          # wait for all, report the first
                error = error or exc
        if error is not None:
            raise error

    def _dir(self, src: str, dst: str, st: os.stat_result) -> None:
        os.mkdir(dst, 0o700)
        self.size += st.st_blocks * 512
        with os.scandir(src) as it:
            entries = list(it)
        for e in entries:
            s, d = e.path, os.path.join(dst, e.name)
            est = e.stat(follow_symlinks=False)
            mode = est.st_mode
            if stat.S_ISDIR(mode):
                self._dir(s, d, est)
                continue
            if est.st_nlink > 1:
                key = (est.st_dev, est.st_ino)
                first = self.links.get(key)
                if first is not None:
                    os.link(first, d)
                    continue
                self.links[key] = d
            self.size += est.st_blocks * 512
            if stat.S_ISREG(mode):
                if self.pool is not None and est.st_nlink == 1:
                    self.pending.append(self.pool.submit(_copy_file, s, d, est))
                    if len(self.pending) >= _MAX_PENDING:
                        self._drain()
                else:                   # made here, so a later hardlink to it finds it
                    _copy_file(s, d, est)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(s), d)
                _meta_path(s, d, est, symlink=True)
            else:                       # character (whiteouts) and block devices, fifos, sockets
                os.mknod(d, stat.S_IFMT(mode) | 0o600, est.st_rdev)
                _meta_path(s, d, est, symlink=False)
        self.dirs.append((src, dst, st))


def _copy_file(src: str, dst: str, st: os.stat_result) -> None:
    try:
        sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                _copy_data(sfd, dfd, st)
                _meta_fd(sfd, dfd, st)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = src
        raise


def _copy_data(sfd: int, dfd: int, st: os.stat_result) -> None:
    size = st.st_size
    if size == 0:
        return
    if st.st_blocks * 512 >= size:          # not sparse: one stretch
        _copy_range(sfd, dfd, 0, size)
        return
    pos = 0
    while pos < size:
        try:
            data = os.lseek(sfd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:    # only a hole is left
                break
            raise
        hole = os.lseek(sfd, data, os.SEEK_HOLE)
        _copy_range(sfd, dfd, data, hole - data)
        pos = hole
    os.ftruncate(dfd, size)                 # a trailing hole


def _copy_range(sfd: int, dfd: int, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        try:
            n = os.copy_file_range(sfd, dfd, min(end - offset, _CHUNK), offset, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = _copy_slow(sfd, dfd, offset, end)
        if n == 0:                          # the file shrank under us
            break
        offset += n


def _copy_slow(sfd: int, dfd: int, offset: int, end: int) -> int:
    buf = os.pread(sfd, min(end - offset, 1 << 20), offset)
    done = 0
    while done < len(buf):
        done += os.pwrite(dfd, buf[done:], offset + done)
    return len(buf)


def _xattrs(src: int | str, *, follow: bool = True) -> list[tuple[str, bytes]]:
    try:
        names = os.listxattr(src, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return []
        raise
    return [(n, os.getxattr(src, n, follow_symlinks=follow)) for n in names]


def _meta_fd(sfd: int, dfd: int, st: os.stat_result) -> None:
    os.fchown(dfd, st.st_uid, st.st_gid)
    os.fchmod(dfd, stat.S_IMODE(st.st_mode))        # after chown, which clears set-id bits
    for name, value in _xattrs(sfd):                 # after chown too: it clears security.capability
        os.setxattr(dfd, name, value)
    os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _meta_path(src: str, dst: str, st: os.stat_result, *, symlink: bool) -> None:
    os.lchown(dst, st.st_uid, st.st_gid)
    if not symlink:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    for name, value in _xattrs(src, follow=False):
        try:
            os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError as exc:
            if not (symlink and exc.errno == errno.EPERM):   # user.* cannot sit on a symlink
                raise
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
