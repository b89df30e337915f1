"""Waking up when an instance's files change (output appended, exit recorded), through inotify(7).

One inotify instance per process, shared by every watcher, read by one thread. Why not one instance per
watcher: closing an inotify instance that has held a watch waits for the kernel's fsnotify mark reaper (an SRCU
grace period, ~7.5 ms measured here), and a follower of `virtkit run --rm` closes its watch on every run.
Adding and removing a watch on a live instance costs microseconds.
"""

from __future__ import annotations

import os
import select
import struct
import threading

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_IGNORED = 0x00008000
IN_Q_OVERFLOW = 0x00004000
IN_CLOEXEC = 0o2000000
MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
_EVENT = struct.Struct("iIII")      # wd, mask, cookie, len (then len bytes of name)


class _Hub:
    """The process's inotify instance: watch descriptors shared by every watcher of the same directory."""

    def __init__(self) -> None:
        import ctypes

        self.lib = ctypes.CDLL(None, use_errno=True)    # libc's inotify calls (virtkitd's side: ctypes is loaded)
        self.lock = threading.Lock()
        self.waiters: dict[int, set[threading.Event]] = {}     # wd -> the events of its watchers
        self.fd = self.lib.inotify_init1(IN_CLOEXEC)             # blocking: only the reader thread reads it
        if self.fd >= 0:
            threading.Thread(target=self._read, name="inotify", daemon=True).start()

    def add(self, path: str, event: threading.Event) -> int:
        """The watch descriptor of `path` (shared), or -1 when inotify refuses (out of watches, no such dir)."""
        if self.fd < 0:
            return -1
        with self.lock:
            wd = self.lib.inotify_add_watch(self.fd, os.fsencode(path), MASK)
            if wd >= 0:
                self.waiters.setdefault(wd, set()).add(event)
            return int(wd)

    def remove(self, wd: int, event: threading.Event) -> None:
        with self.lock:
            events = self.waiters.get(wd)
            if events is None:
                return
            events.discard(event)
            if not events:
                del self.waiters[wd]
                self.lib.inotify_rm_watch(self.fd, wd)   # EINVAL when the directory is gone already: harmless

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                return
            woken: set[threading.Event] = set()
            with self.lock:
                pos = 0
                while pos + _EVENT.size <= len(data):
                    wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                    pos += _EVENT.size + length
                    if mask & IN_Q_OVERFLOW:        # events lost: wake everyone, they re-read their files
                        for events in self.waiters.values():
                            woken |= events
                        continue
                    woken |= self.waiters.get(wd, set())
                    if mask & IN_IGNORED:           # the directory went away: the kernel dropped the watch
                        for event in self.waiters.pop(wd, ()):
                            woken.add(event)
            for event in woken:
                event.set()


_hub: _Hub | None = None
_hub_pid = -1
_hub_lock = threading.Lock()


def _shared_hub() -> _Hub:
    """This process's hub (a forked child makes its own: it did not inherit the reader thread)."""
    global _hub, _hub_pid
    with _hub_lock:
        if _hub is None or _hub_pid != os.getpid():
            _hub, _hub_pid = _Hub(), os.getpid()
        return _hub


class DirWatch:
    """Watches one directory for files created, renamed into it, or modified; `wait` returns early on any.

    Falls back to plain sleeping when inotify is unavailable (e.g. out of watches), so callers only lose latency.
    """

    def __init__(self, path: str) -> None:
        self.event = threading.Event()
        self.hub = _shared_hub()
        self.wd = self.hub.add(path, self.event)

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds; True when something changed since the last wait (or the start)."""
        if self.wd < 0:
            select.select([], [], [], timeout)
            return False
        changed = self.event.wait(timeout)
        self.event.clear()
        return changed

    def close(self) -> None:
        if self.wd >= 0:
            self.hub.remove(self.wd, self.event)
            self.wd = -1

    def __enter__(self) -> DirWatch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
