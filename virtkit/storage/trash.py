"""Removing directory trees off the caller's path: rename into the home's trash, delete there in the background.

Why: deleting a container's directory right after its init exits waits for the kernel to finish tearing down
the container's mount namespace (the overlay's upper and work dirs are still busy): 15-40 ms measured here on a
`virtkit run --rm` of /bin/true, more than the rest of the removal. A rename within the home is atomic and takes
microseconds; the name is free for reuse at once, and the tree goes away moments later. Trees left by a daemon
that stopped before deleting them are deleted when the next one starts (`empty`).
"""

from __future__ import annotations

import os
import sys
import threading
import uuid


class Trash:
    def __init__(self, root: str) -> None:
        self.root = root
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def discard(self, path: str) -> None:
        """`path` is gone from where it was when this returns; its tree is deleted in the background."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        try:
            os.rename(path, os.path.join(self.root, uuid.uuid4().hex))
        except FileNotFoundError:
            return
        except OSError:          # another file system (EXDEV) or the like: delete it here and now
            _remove_tree(path)
            return
        self._start()
        self._wake.set()

    def empty(self) -> None:
        """Delete everything in the trash now (the caller waits)."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return
        for name in names:
            _remove_tree(os.path.join(self.root, name))

    def empty_later(self) -> None:
        """Delete what is in the trash (left by an earlier daemon) in the background."""
        if os.path.isdir(self.root):
            self._start()
            self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="trash", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        try:    # background work: behind the requests of this daemon's other threads (nice is per thread)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except OSError:
            pass
        while True:
            self._wake.wait()
            self._wake.clear()
            self.empty()


def _remove_tree(path: str) -> None:
    """rm -rf in C without the GIL (_linux.remove_tree: this runs beside virtkitd's request threads); what cannot
    go (a mount left inside, an immutable file) stays, and is tried again when the next daemon empties the trash."""
    from virtkit.container import _linux

    try:
        _linux.remove_tree(os.fsencode(path))
    except OSError as exc:
        print(f"virtkitd: trash: cannot delete all of {path}: {exc.strerror}", file=sys.stderr, flush=True)
