"""mount(2)/umount2(2) for storage (ext4 volumes on loop devices) and reading /proc/self/mountinfo."""

from __future__ import annotations

import ctypes
import os
import re

from virtkit.core.errors import SystemFailure

MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str | None = None) -> None:
    rc = _libc.mount(os.fsencode(source), os.fsencode(target), fstype.encode(), flags,
                     data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise SystemFailure(f"mount {source} ({fstype}) on {target}: {os.strerror(err)}")


def umount(target: str, *, lazy: bool = False) -> None:
    rc = _libc.umount2(os.fsencode(target), UMOUNT_NOFOLLOW | (MNT_DETACH if lazy else 0))
    if rc != 0:
        err = ctypes.get_errno()
        raise SystemFailure(f"unmount {target}: {os.strerror(err)}")


def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mountpoints() -> list[tuple[str, str, str]]:
    """(mount point, filesystem type, source) of every mount this process sees, in mount order."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            out.append((_unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2])))
    return out


def is_mounted(path: str) -> bool:
    want = os.path.realpath(path)
    return any(mp == want for mp, _t, _s in mountpoints())
