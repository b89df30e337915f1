"""ext4 image files: made sparse with mkfs.ext4, mounted through an autoclear loop device, unmounted."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time

from virtkit.core.errors import SystemFailure, Unsupported
from virtkit.storage import loop, mounts

MIN_SIZE = 2 << 20           # below this mkfs.ext4 cannot fit a journal
MAX_SIZE = 16 << 40          # the largest file ext4 (4 KiB blocks) holds: the image lives on such a host fs
MOUNT_FLAGS = mounts.MS_NODEV


def mkfs_tool() -> str:
    tool = shutil.which("mkfs.ext4") or ("/sbin/mkfs.ext4" if os.path.exists("/sbin/mkfs.ext4") else None)
    if tool is None:
        raise Unsupported("volumes with a size need mkfs.ext4 (Debian package e2fsprogs)")
    return tool


def make_image(path: str, size: int) -> None:
    """A sparse file of `size` bytes holding a fresh ext4 filesystem whose root belongs to root."""
    tool = mkfs_tool()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
    except OSError as exc:
        raise SystemFailure(f"cannot create disk image {path}: {exc.strerror}") from exc
    # -m 0: no blocks reserved for root, the whole size is the quota; root_owner: not the caller's uid
    r = subprocess.run([tool, "-q", "-F", "-m", "0", "-E", "root_owner=0:0", path],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemFailure(f"mkfs.ext4 {path} failed: {(r.stderr or r.stdout).strip()}")


def mount_image(image: str, target: str) -> str:
    """Mount `image` on `target`; returns the loop device. The device goes away with the mount."""
    dev, fd = loop.attach(image)
    try:
        mounts.mount(dev.path, target, "ext4", MOUNT_FLAGS)
    except BaseException:
        os.close(fd)
        loop.detach(dev)
        raise
    os.close(fd)        # the mount now holds the device; autoclear detaches it at unmount
    return dev.path


def unmount_image(image: str, target: str) -> None:
    """Unmount `target` (lazily if a process still has it open) and make sure no loop device stays on `image`."""
    while mounts.is_mounted(target):
        try:
            mounts.umount(target)
        except SystemFailure:
            try:
                mounts.umount(target, lazy=True)
            except SystemFailure as exc:
                if not mounts.is_mounted(target):
                    break
                raise exc
    busy = False
    for dev in loop.devices_of(image):
        try:
            loop.detach(dev)
        except SystemFailure as exc:
            # busy: still mounted elsewhere (a lazy unmount in progress); autoclear finishes the job
            if getattr(exc.__cause__, "errno", None) != errno.EBUSY:
                raise
            busy = True
    # The kernel finishes a detach (ours, or autoclear's at unmount) in a work queue: wait for it, so that
    # what the caller sees next (a volume removed, a leak check) is a device already gone.
    deadline = time.monotonic() + 5
    while not busy and loop.devices_of(image) and time.monotonic() < deadline:
        time.sleep(0.005)
