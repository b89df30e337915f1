"""Waking up when an instance's files change (output appended, exit recorded), through inotify(7)."""

from __future__ import annotations

import os
import select

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

class DirWatch:
    """Watches one directory for files created, renamed into it, or modified; `wait` returns early on any.

    Falls back to plain sleeping when inotify is unavailable (e.g. out of watches), so callers only lose latency.
    """

    def __init__(self, path: str) -> None:
        self.fd = -1
        from virtkit.container.syscalls import _libc as lib

        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return
        mask = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
        if lib.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
            os.close(fd)
            return
        self.fd = fd

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds; True when something changed."""
        if self.fd < 0:
            select.select([], [], [], timeout)
            return False
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> DirWatch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
