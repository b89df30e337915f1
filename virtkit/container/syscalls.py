"""The one seam for the runtime's privileged syscalls (ctypes on libc), with the kernel's constant names.

Every wrapper raises SystemFailure naming the call, its arguments and the errno text, so an error that
happens inside a container's setup reads like "mount proc on /proc: Permission denied".
"""

from __future__ import annotations

import ctypes
import os
import struct

from virtkit.core.errors import SystemFailure

# clone/unshare flags (linux/sched.h)
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount flags (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

MNT_FORCE = 1
MNT_DETACH = 2

# prctl options (linux/prctl.h)
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

# openat2 (linux/openat2.h)
SYS_openat2 = 437
SYS_pivot_root = 155
SYS_setns = 308
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long


def _fail(what: str) -> SystemFailure:
    err = ctypes.get_errno()
    return SystemFailure(f"{what}: {os.strerror(err)}")


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None,
          *, label: str | None = None) -> None:
    """mount(2); `label` is the destination as the user wrote it, for the error message."""
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        what = fstype or ("bind" if flags & MS_BIND else "mount")
        raise _fail(f"mount {source or what} on {label or target}")


def umount2(target: str, flags: int = 0) -> None:
    if _libc.umount2(_b(target), flags) != 0:
        raise _fail(f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    if _libc.syscall(SYS_pivot_root, _b(new_root), _b(put_old)) != 0:
        raise _fail(f"pivot_root {new_root}")


def unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        raise _fail(f"unshare({flags:#x})")


def setns(fd: int, nstype: int, *, label: str = "") -> None:
    if _libc.setns(fd, nstype) != 0:
        raise _fail(f"setns {label or fd}")


def sethostname(name: str) -> None:
    b = name.encode()
    if _libc.sethostname(b, len(b)) != 0:
        raise _fail(f"sethostname {name!r}")


def setdomainname(name: str) -> None:
    b = name.encode()
    if _libc.setdomainname(b, len(b)) != 0:
        raise _fail(f"setdomainname {name!r}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    rc = _libc.prctl(option, arg2, arg3, arg4, arg5)
    if rc < 0:
        raise _fail(f"prctl({option})")
    return int(rc)


def setresuid(ruid: int, euid: int, suid: int) -> None:
    try:
        os.setresuid(ruid, euid, suid)
    except OSError as exc:
        raise SystemFailure(f"setresuid({euid}): {exc.strerror}") from exc


def setresgid(rgid: int, egid: int, sgid: int) -> None:
    try:
        os.setresgid(rgid, egid, sgid)
    except OSError as exc:
        raise SystemFailure(f"setresgid({egid}): {exc.strerror}") from exc


def setgroups(gids: list[int]) -> None:
    try:
        os.setgroups(gids)
    except OSError as exc:
        raise SystemFailure(f"setgroups({gids}): {exc.strerror}") from exc


def mknod(path: str, mode: int, major: int, minor: int, *, dir_fd: int | None = None) -> None:
    try:
        os.mknod(path, mode, os.makedev(major, minor), dir_fd=dir_fd)
    except OSError as exc:
        raise SystemFailure(f"mknod {path}: {exc.strerror}") from exc


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2) through syscall(): struct open_how {u64 flags; u64 mode; u64 resolve}."""
    how = ctypes.create_string_buffer(struct.pack("QQQ", flags | os.O_CLOEXEC, mode, resolve), 24)
    fd = _libc.syscall(SYS_openat2, ctypes.c_int(dir_fd), _b(path), how, ctypes.c_size_t(24))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def ioctl(fd: int, request: int, arg: bytes, *, label: str = "") -> bytes:
    """ioctl(2) on an in/out buffer, as fcntl.ioctl does, without loading the fcntl extension (~0.8 ms of a
    container start: a shared library opened)."""
    buf = ctypes.create_string_buffer(arg, len(arg))
    if _libc.ioctl(fd, ctypes.c_ulong(request), buf) != 0:
        raise _fail(f"ioctl {label or hex(request)}")
    return buf.raw


def fd_path(fd: int) -> str:
    """The magic-link path mount(2) can target without resolving the destination again."""
    return f"/proc/self/fd/{fd}"
