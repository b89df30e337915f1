"""Loop devices through their ioctls (linux/loop.h): attach a file, find the device of a file, detach.

Devices are attached with LO_FLAGS_AUTOCLEAR: the kernel detaches one by itself when its last user (the
mount) goes away, so an unmount cannot leave a loop device behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from dataclasses import dataclass

from virtkit.core.errors import SystemFailure

# ioctl numbers and flags, named as in linux/loop.h
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_NAME_SIZE = 64
LOOP_MAJOR = 7

# struct loop_info64: 5 x u64, 4 x u32, file name[64], crypt name[64], key[32], 2 x u64 init
_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
# struct loop_config: u32 fd, u32 block_size, struct loop_info64, u64 reserved[8]
_CONFIG = struct.Struct(f"=II{_INFO64.size}s8Q")
CONTROL = "/dev/loop-control"


@dataclass(frozen=True)
class LoopDevice:
    number: int

    @property
    def path(self) -> str:
        return f"/dev/loop{self.number}"


def _info64(backing: str, flags: int) -> bytes:
    name = os.fsencode(backing)[: LO_NAME_SIZE - 1]
    return _INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, flags, name, b"", b"", 0, 0)


def _open_node(number: int) -> int:
    path = f"/dev/loop{number}"
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        # /dev without devtmpfs (some containers): the kernel made the device, we make its node
        os.mknod(path, 0o600 | stat.S_IFBLK, os.makedev(LOOP_MAJOR, number))
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)


def attach(backing: str, *, read_only: bool = False, autoclear: bool = True) -> tuple[LoopDevice, int]:
    """Attach `backing` to a free loop device; returns it and an open fd of it (the caller closes the fd).

    With autoclear the device stays attached only while that fd or a mount of it holds it.
    """
    flags = (LO_FLAGS_AUTOCLEAR if autoclear else 0) | (LO_FLAGS_READ_ONLY if read_only else 0)
    try:
        ctl = os.open(CONTROL, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise SystemFailure(f"loop devices: cannot open {CONTROL}: {exc.strerror}") from exc
    try:
        file_fd = os.open(backing, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
    except OSError as exc:
        os.close(ctl)
        raise SystemFailure(f"loop devices: cannot open {backing}: {exc.strerror}") from exc
    try:
        for _ in range(64):     # another process may take the free device between GET_FREE and CONFIGURE
            try:
                number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
                dev_fd = _open_node(number)
            except OSError as exc:
                raise SystemFailure(f"loop devices: no free device: {exc.strerror}") from exc
            try:
                _configure(dev_fd, file_fd, backing, flags)
            except OSError as exc:
                os.close(dev_fd)
                if exc.errno == errno.EBUSY:
                    continue
                raise SystemFailure(f"loop devices: attaching {backing} to /dev/loop{number}: {exc.strerror}") \
                    from exc
            return LoopDevice(number), dev_fd
        raise SystemFailure(f"loop devices: every free device was taken before {backing} could be attached")
    finally:
        os.close(file_fd)
        os.close(ctl)


def _configure(dev_fd: int, file_fd: int, backing: str, flags: int) -> None:
    info = _info64(backing, flags)
    try:
        fcntl.ioctl(dev_fd, LOOP_CONFIGURE, _CONFIG.pack(file_fd, 0, info, *([0] * 8)))
        return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTTY):   # kernels before 5.8 lack LOOP_CONFIGURE
            raise
    fcntl.ioctl(dev_fd, LOOP_SET_FD, file_fd)
    try:
        fcntl.ioctl(dev_fd, LOOP_SET_STATUS64, info)
    except OSError:
        fcntl.ioctl(dev_fd, LOOP_CLR_FD, 0)
        raise


def detach(device: LoopDevice) -> None:
    """Detach now (or, while mounted and autoclear is set, as soon as it is unmounted)."""
    try:
        fd = os.open(device.path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD, 0)
    except OSError as exc:
        if exc.errno != errno.ENXIO:       # ENXIO: not attached (already cleared)
            raise SystemFailure(f"loop devices: detaching {device.path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def devices_of(backing: str) -> list[LoopDevice]:
    """Loop devices attached to `backing` (read from sysfs, as losetup -j does)."""
    want = os.path.realpath(backing)
    found = []
    try:
        entries = os.listdir("/sys/block")
    except OSError:
        return []
    for entry in entries:
        if not entry.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{entry}/loop/backing_file") as f:
                path = f.read().rstrip("\n")
        except OSError:
            continue
        if path.removesuffix(" (deleted)") == want:
            found.append(LoopDevice(int(entry[4:])))
    return found
