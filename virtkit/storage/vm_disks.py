"""VM disk files: the base ext4 disk of each image (made once, cached), qcow2 overlays on it, growing their fs.

Base disks live under `$VIRTKIT_HOME/vmdisks/`:
  <hex>.raw          a raw ext4 filesystem of the image's merged rootfs (hex: the image's manifest digest),
                     read-only (0444): QEMU opens it only as an overlay's backing file
  <hex>.json         {"size": bytes, "content": bytes, "files": n}: what the disk was made with
  <hex>.vmlinux/.initrd   the boot files of a system image (vm/qemu/imageboot.py), collected with its disk
  .lock-<hex>        flock()ed while that base is built, so concurrent creates build it once
  .tmp-<pid>-*       a build in progress (or the leftover of a crashed one: removed when its pid is gone)
A VM hard-links its base into its own directory and makes its overlay there with a relative backing file
name, so the cache entry may be collected (the image removed) while VMs still run from it: the inode lives
until the last VM that links it is removed.

The base fs is made big enough (at least 1 GiB, sparse) that the default disk needs no resize; a bigger
disk is grown on the host at create, through a qemu-storage-daemon FUSE export of the overlay and
resize2fs: ~0.1 s here, and the guest needs no tool of its own (busybox has no resize2fs).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from virtkit.core.errors import SystemFailure, Unsupported
from virtkit.storage import ext4, mounts

MS_RDONLY = 1
MIB = 1 << 20
MIN_BASE_SIZE = 1 << 30            # the default disk: room to work in without a resize at create
BASE_ROUND = 256 * MIB
QEMU_IMG = "qemu-img"
STORAGE_DAEMON = "qemu-storage-daemon"
TOOL_TIMEOUT = 300.0


@dataclass(frozen=True)
class BaseDisk:
    path: str            # <root>/<hex>.raw
    digest: str          # the image's manifest digest
    size: int            # bytes: the filesystem's (and the file's) size; the smallest disk of a VM of this image


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise Unsupported(f"VM disks need {name} (Debian package {package})")
    return path


def _run(argv: list[str], what: str, cwd: str | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SystemFailure(f"{what}: {exc}") from exc
    if proc.returncode != 0:
        raise SystemFailure(f"{what} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc.stdout


def _hex(digest: str) -> str:
    return digest.split(":", 1)[-1]


class BaseDisks:
    """The cache of base disks of one virtkit home."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, digest: str) -> str:
        return os.path.join(self.root, f"{_hex(digest)}.raw")

    def cached(self, digest: str) -> BaseDisk | None:
        try:
            with open(os.path.join(self.root, f"{_hex(digest)}.json")) as f:
                meta = json.load(f)
            if os.path.exists(self.path(digest)):
                return BaseDisk(self.path(digest), digest, int(meta["size"]))
        except (OSError, ValueError, KeyError):
            pass
        return None

    @contextmanager
    def _locked(self, digest: str) -> Iterator[None]:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.root, f".lock-{_hex(digest)}"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def get(self, digest: str, layers: Sequence[str]) -> BaseDisk:
        """The base disk of the image with manifest `digest` whose unpacked layers (lowest first) are `layers`."""
        disk = self.cached(digest)
        if disk is not None:
            return disk
        with self._locked(digest):
            disk = self.cached(digest)           # built by another create while we waited
            if disk is None:
                self._clean_stale()
                disk = self._build(digest, layers)
        return disk

    def _build(self, digest: str, layers: Sequence[str]) -> BaseDisk:
        mkfs = ext4.mkfs_tool()
        work = tempfile.mkdtemp(dir=self.root, prefix=f".tmp-{os.getpid()}-")
        try:
            with _merged(layers, os.path.join(work, "rootfs")) as rootfs:
                content, files = _usage(rootfs)
                size = max(MIN_BASE_SIZE, math.ceil((content * 1.3 + 128 * MIB) / BASE_ROUND) * BASE_ROUND)
                raw = os.path.join(work, "disk.raw")
                with open(raw, "wb") as f:
                    f.truncate(size)
                # an inode per 16 KiB (mkfs's default), but never fewer than twice the image's files; -m 0: the
                # guest's root is the only user; lazy_itable_init: unused inode tables stay holes in the file
                inodes = max(size // 16384, files * 2)
                _run([mkfs, "-q", "-F", "-b", "4096", "-m", "0", "-N", str(inodes), "-L", "virtkit-root",
                      "-E", "root_owner=0:0,lazy_itable_init=1", "-d", rootfs, raw], "mkfs.ext4 of the VM base disk")
            os.chmod(raw, 0o444)
            meta = os.path.join(work, "disk.json")
            with open(meta, "w") as f:
                json.dump({"size": size, "content": content, "files": files, "digest": digest,
                           "created_at": time.time()}, f)
            # the disk first, its description last: cached() trusts a base only once both are in place
            os.rename(raw, self.path(digest))
            os.rename(meta, os.path.join(self.root, f"{_hex(digest)}.json"))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return BaseDisk(self.path(digest), digest, size)

    def collect(self, keep: Iterable[str]) -> list[str]:
        """Remove the base disks of images that are gone (their manifest digest is not in `keep`); VMs that
        still use one keep its data through their own hard link. Returns the digests removed."""
        kept = {_hex(d) for d in keep}
        removed = []
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return []
        for entry in entries:
            stem, ext = os.path.splitext(entry)
            if entry.startswith(".lock-") and entry[6:] not in kept:
                self._drop_lock(os.path.join(self.root, entry))
                continue
            if entry.startswith(".") or ext not in (".raw", ".json", ".vmlinux", ".initrd") or stem in kept:
                continue
            try:
                os.unlink(os.path.join(self.root, entry))
            except OSError:
                continue           # gone already; never fail the image store's collection over a cache file
            if ext == ".raw":
                removed.append(f"sha256:{stem}")
        self._clean_stale()
        return removed

    @staticmethod
    def _drop_lock(path: str) -> None:
        """Remove a lock file nobody holds (one that is held belongs to a build in progress)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _clean_stale(self) -> None:
        from virtkit.images._fsutil import pid_alive

        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return
        for entry in entries:
            if not entry.startswith(".tmp-"):
                continue
            try:
                pid = int(entry.split("-")[1])
            except (IndexError, ValueError):
                pid = -1
            if pid == os.getpid() or (pid > 0 and pid_alive(pid)):
                continue
            path = os.path.join(self.root, entry)
            rootfs = os.path.join(path, "rootfs")
            if mounts.is_mounted(rootfs):
                mounts.umount(rootfs, lazy=True)
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _merged(layers: Sequence[str], target: str) -> Iterator[str]:
    """The image's rootfs as one tree: its only layer, or a read-only overlay of its layers (whiteouts and
    opaque dirs applied by overlayfs), unmounted afterwards."""
    if not layers:
        os.makedirs(target)
        yield target
        return
    if len(layers) == 1:
        yield str(layers[0])
        return
    os.makedirs(target)
    # overlayfs takes the top-most lowerdir first; the store lists lowest first
    lower = ":".join(str(p) for p in reversed(layers))
    mounts.mount("overlay", target, "overlay", MS_RDONLY, f"lowerdir={lower}")
    try:
        yield target
    finally:
        mounts.umount(target, lazy=True)


def _usage(root: str) -> tuple[int, int]:
    """(bytes the tree takes in 4 KiB blocks, number of entries)."""
    total, count = 0, 0
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            count += 1
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += (st.st_size + 4095) // 4096 * 4096
    return total, count


# -- overlays -------------------------------------------------------------------------------------------
def create_overlay(path: str, backing: str, size: int, backing_format: str = "raw") -> None:
    """A qcow2 at `path` of virtual size `size` over `backing` (a name relative to path's dir; raw, or a qcow2
    such as a VM template's disk)."""
    tool = _tool(QEMU_IMG, "qemu-utils")
    _run([tool, "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", backing, path, str(size)],
         "qemu-img create of the VM disk", cwd=os.path.dirname(path))


def grow_filesystem(overlay: str, size: int, timeout: float = 60.0) -> None:
    """Grow the ext4 filesystem inside the qcow2 `overlay` to `size` bytes: the overlay is exported as a raw
    file (qemu-storage-daemon, FUSE) for resize2fs, and nothing else has it open meanwhile."""
    daemon = _tool(STORAGE_DAEMON, "qemu-system-common")
    resize = shutil.which("resize2fs") or "/sbin/resize2fs"
    if not os.path.exists("/dev/fuse"):
        raise Unsupported("disk_size: growing a VM disk needs FUSE (/dev/fuse) on this host; leave the size out "
                          "to get the image's default disk")
    export = f"{overlay}.export"
    with open(export, "w"):
        pass
    blockdev = {"driver": "qcow2", "node-name": "disk", "file": {"driver": "file", "filename": overlay}}
    exp = {"type": "fuse", "id": "exp0", "node-name": "disk", "mountpoint": export, "writable": True}
    proc = subprocess.Popen([daemon, "--blockdev", json.dumps(blockdev), "--export", json.dumps(exp)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not mounts.is_mounted(export):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                raise SystemFailure(f"qemu-storage-daemon could not export the VM disk: {err[-500:]}")
            if time.monotonic() > deadline:
                raise SystemFailure("qemu-storage-daemon did not export the VM disk in time")
            time.sleep(0.005)
        _run([resize, export, f"{size // 1024}K"], "resize2fs of the VM disk")
    finally:
        _stop_export(proc, export)


def _stop_export(proc: subprocess.Popen[bytes], export: str) -> None:
    if proc.poll() is None:
        proc.terminate()          # the daemon unmounts its export as it exits
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr:
        proc.stderr.close()
    if mounts.is_mounted(export):
        mounts.umount(export, lazy=True)       # a daemon that died leaves a dead FUSE mount
    try:
        os.unlink(export)
    except OSError:
        pass


def copy_sparse(src: str, dst: str) -> None:
    """Copy a disk or state file, holes kept (and shared extents where the filesystem can reflink)."""
    _run(["cp", "--sparse=always", "--reflink=auto", src, dst], f"copy of {os.path.basename(src)}")


def allocated(path: str) -> int:
    """Bytes a file or tree takes on disk."""
    if os.path.isfile(path):
        return os.stat(path).st_blocks * 512
    from pathlib import Path

    from virtkit.images._fsutil import tree_size

    return tree_size(Path(path))
