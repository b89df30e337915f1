"""The shared inotify watcher: wakes every watcher of a directory, keeps working as watchers come and go."""

from __future__ import annotations

import os
import time

from virtkit.container.watch import DirWatch


def test_two_watchers_of_one_dir_both_wake_and_closing_one_keeps_the_other(tmp_path):
    a, b = DirWatch(str(tmp_path)), DirWatch(str(tmp_path))
    assert a.wd >= 0 and a.wd == b.wd          # one kernel watch, shared
    assert not a.wait(0.05)                     # nothing happened yet
    (tmp_path / "exit.json").write_text("{}")
    assert a.wait(2) and b.wait(2)
    a.close()
    with open(tmp_path / "log", "ab") as f:
        f.write(b"more")
    assert b.wait(2)
    b.close()


def test_a_watch_on_a_removed_directory_wakes_and_then_only_sleeps(tmp_path):
    d = tmp_path / "inst"
    d.mkdir()
    w = DirWatch(str(d))
    os.rmdir(d)
    assert w.wait(2)                            # the kernel dropped the watch: the waiter is told
    t = time.monotonic()
    w.wait(0.1)
    assert time.monotonic() - t < 1
    w.close()


def test_an_unwatchable_path_falls_back_to_sleeping(tmp_path):
    w = DirWatch(str(tmp_path / "missing"))
    assert w.wd < 0
    t = time.monotonic()
    assert not w.wait(0.1)
    assert time.monotonic() - t >= 0.09
    w.close()
