"""The one seam for the runtime's privileged syscalls (the `_linux` extension, _linux.c), with the kernel's constant
names.

Every wrapper raises SystemFailure naming the call, its arguments and the errno text, so an error that
happens inside a container's setup reads like "mount proc on /proc: Permission denied".
"""

from __future__ import annotations

import os

from virtkit.container import _linux
from virtkit.core.errors import SystemFailure

TYPE_CHECKING = False
if TYPE_CHECKING:  # collections.abc imports collections: ~2.5 ms of every runtime start
    from collections.abc import Callable
    from typing import Any

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

def _checked(what: str, call: Callable[..., Any], *args: Any) -> Any:
    """call(*args), its OSError turned into SystemFailure "<what>: <errno text>"."""
    try:
        return call(*args)
    except OSError as exc:
        raise SystemFailure(f"{what}: {exc.strerror}") from None


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None,
          *, label: str | None = None) -> None:
    """mount(2); `label` is the destination as the user wrote it, for the error message."""
    try:
        _linux.mount(_b(source), os.fsencode(target), _b(fstype), flags, _b(data))
    except OSError as exc:      # the message is made only on failure: a container start mounts ~50 times
        what = fstype or ("bind" if flags & MS_BIND else "mount")
        raise SystemFailure(f"mount {source or what} on {label or target}: {exc.strerror}") from None


# mount_setattr(2)'s MOUNT_ATTR_*: a detached mount's flags (fsmount)
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
MOUNT_ATTR_NOSYMFOLLOW = 0x200000


def fsmount(fstype: str, params: list[tuple[str, str | None]], attrs: int, *, label: str) -> int:
    """A new `fstype` file system with these parameters (value None: a flag), mounted nowhere yet: the fd owns
    the detached mount (closing it unmounts it); move_mount attaches it."""
    try:
        return _linux.fsmount(fstype.encode(), [(k.encode(), _b(v)) for k, v in params], attrs)
    except OSError as exc:
        raise SystemFailure(f"mount {fstype} for {label}: {exc.strerror}") from None


def place_mount(from_fd: int, to_fd: int, *, label: str, recursive: bool = False) -> None:
    """A new mount of the file system the (detached) mount from_fd holds (`recursive`: with the mounts on it), onto
    the directory (or file) to_fd, an O_PATH fd: open_tree(OPEN_TREE_CLONE) and move_mount."""
    _checked(f"mount on {label}", _linux.place_mount, from_fd, to_fd, recursive)


def set_mount_attrs(fd: int, attrs: int, *, label: str) -> None:
    """mount_setattr(2): MOUNT_ATTR_* `attrs` set on the mount fd holds."""
    _checked(f"mount attributes of {label}", _linux.set_mount_attrs, fd, attrs)


def umount2(target: str, flags: int = 0) -> None:
    _checked(f"umount {target}", _linux.umount2, os.fsencode(target), flags)


def pivot_root(new_root: str, put_old: str) -> None:
    _checked(f"pivot_root {new_root}", _linux.pivot_root, os.fsencode(new_root), os.fsencode(put_old))


def fork_sibling(flags: int) -> int:
    """os.fork() whose child is this process's parent's child (CLONE_PARENT), in the new namespaces `flags`
    names (CLONE_NEWPID: as its PID 1). The caller must be single-threaded (see _linux.c)."""
    if len(os.listdir("/proc/self/task")) != 1:
        raise SystemFailure("fork_sibling: only a single-threaded process may fork this way")
    return int(_checked(f"clone(CLONE_PARENT|{flags:#x})", _linux.fork_sibling, flags))


def unshare(flags: int) -> None:
    _checked(f"unshare({flags:#x})", _linux.unshare, flags)


def setns(fd: int, nstype: int, *, label: str = "") -> None:
    _checked(f"setns {label or fd}", _linux.setns, fd, nstype)


def sethostname(name: str) -> None:
    _checked(f"sethostname {name!r}", _linux.sethostname, name.encode())


def setdomainname(name: str) -> None:
    _checked(f"setdomainname {name!r}", _linux.setdomainname, name.encode())


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0, *, label: str = "") -> int:
    return int(_checked(label or f"prctl({option})", _linux.prctl, option, arg2, arg3, arg4, arg5))


def setresuid(ruid: int, euid: int, suid: int) -> None:
    _checked(f"setresuid({euid})", os.setresuid, ruid, euid, suid)


def setresgid(rgid: int, egid: int, sgid: int) -> None:
    _checked(f"setresgid({egid})", os.setresgid, rgid, egid, sgid)


def setgroups(gids: list[int]) -> None:
    _checked(f"setgroups({gids})", os.setgroups, gids)


def mknod(path: str, mode: int, major: int, minor: int, *, dir_fd: int | None = None) -> None:
    try:
        os.mknod(path, mode, os.makedev(major, minor), dir_fd=dir_fd)
    except OSError as exc:
        raise SystemFailure(f"mknod {path}: {exc.strerror}") from exc


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2), always O_CLOEXEC; raises OSError (with the path) as os.open does."""
    try:
        return int(_linux.openat2(dir_fd, os.fsencode(path), flags | os.O_CLOEXEC, mode, resolve))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None


def ioctl(fd: int, request: int, arg: bytes, *, label: str = "") -> bytes:
    """ioctl(2) on an in/out buffer, as fcntl.ioctl does, without loading the fcntl extension (~0.8 ms of a
    container start: a shared library opened)."""
    return bytes(_checked(f"ioctl {label or hex(request)}", _linux.ioctl, fd, request, arg))


def capset(effective: int, permitted: int, inheritable: int) -> None:
    _checked("capabilities: capset", _linux.capset, effective, permitted, inheritable)


def seccomp_filter(prog: bytes, flags: int = 0) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER) of a classic-BPF program; raises OSError (the caller explains EACCES)."""
    _linux.seccomp_filter(flags, prog)


def setrlimit(resource: int, soft: int, hard: int) -> None:
    """setrlimit(2); RLIM_INFINITY is 2**64-1 (-1 is taken to mean it)."""
    _linux.setrlimit(resource, soft & (2**64 - 1), hard & (2**64 - 1))


def fd_path(fd: int) -> str:
    """The magic-link path mount(2) can target without resolving the destination again."""
    return f"/proc/self/fd/{fd}"
