"""Named network namespaces kept as bind-mounted files under the home (not /var/run/netns: homes never collide).

A namespace is made by unshare(CLONE_NEWNET) in a short-lived thread, which then bind-mounts its
/proc/thread-self/ns/net onto the file and goes back to the daemon's namespace. Work inside a namespace
(netlink sockets opened there) runs the same way: a fresh thread that enters it, so no thread of the daemon
is ever left in the wrong namespace, even when the work fails half-way.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from virtkit.core.errors import SystemFailure

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise SystemFailure(f"{what}: {os.strerror(err)}")


def in_thread(fn: Callable[[], T]) -> T:
    """Run fn in a fresh OS thread (its namespace changes die with it); re-raise what it raised."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=body, name="virtkit-netns")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def create(path: str, setup: Callable[[], T] | None = None) -> T | None:
    """Make a new network namespace pinned at `path`; run `setup` inside it before leaving (e.g. lo up)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)

    def body() -> T | None:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.close(fd)
        try:
            _check(_libc.mount(b"/proc/thread-self/ns/net", path.encode(), None, MS_BIND, None),
                   f"bind mount of a network namespace on {path}")
        except BaseException:
            os.unlink(path)
            raise
        return setup() if setup else None

    try:
        return in_thread(body)
    except FileExistsError as exc:
        raise SystemFailure(f"network namespace file {path} exists already") from exc


def run_in(path: str, fn: Callable[[], T]) -> T:
    """Run fn with the calling OS thread inside the namespace pinned at `path`."""

    def body() -> T:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.setns(fd, CLONE_NEWNET), f"setns into {path}")
        finally:
            os.close(fd)
        return fn()

    return in_thread(body)


def remove(path: str) -> None:
    """Unmount and delete the namespace file; a missing one is fine (rm after a failed create)."""
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise SystemFailure(f"umount {path}: {os.strerror(err)}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def is_pinned(path: str) -> bool:
    """True when `path` is a mounted namespace (a reboot or a crash may leave just the plain file)."""
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == path for line in f)
    except OSError:
        return False
