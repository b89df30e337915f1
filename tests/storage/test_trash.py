"""Trees removed through the trash are gone from their place at once and deleted soon after."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from virtkit.storage.trash import Trash


def test_discarded_tree_leaves_its_place_at_once_and_the_trash_empties(tmp_path):
    tree = tmp_path / "containers" / "abc"
    (tree / "upper" / "etc").mkdir(parents=True)
    (tree / "upper" / "etc" / "hosts").write_text("x")
    trash = Trash(str(tmp_path / "trash"))
    trash.discard(str(tree))
    assert not tree.exists()
    tree.mkdir()                                # the name is free for the next instance at once
    deadline = time.monotonic() + 5
    while os.listdir(tmp_path / "trash") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert os.listdir(tmp_path / "trash") == []


def test_a_missing_tree_is_no_error_and_leftovers_are_emptied_by_a_new_trash(tmp_path):
    Trash(str(tmp_path / "trash")).discard(str(tmp_path / "never-was"))
    left = tmp_path / "trash" / "left-by-an-earlier-daemon"
    (left / "d").mkdir(parents=True)
    Trash(str(tmp_path / "trash")).empty_later()
    deadline = time.monotonic() + 5
    while left.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left.exists()


def test_emptying_follows_no_symlink_and_enters_no_mount(tmp_path, capfd):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    tree = tmp_path / "trash" / "t1"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    (tree / "a" / "to-outside").symlink_to(outside)            # a link to a directory: the link goes, not its target
    os.mkfifo(tree / "a" / "fifo")
    mnt = tree / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "vk-trash-test", str(mnt)], check=True)
    try:
        (mnt / "data").write_text("on another file system")
        Trash(str(tmp_path / "trash")).empty()
        assert (outside / "keep").read_text() == "mine"
        assert (mnt / "data").exists()                           # not entered: a mount is not the trash's
        assert sorted(os.listdir(tree)) == ["mnt"]               # all else went
        assert "cannot delete all of" in capfd.readouterr().err
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    Trash(str(tmp_path / "trash")).empty()                       # tried again (the next daemon): gone now
    assert not tree.exists()
