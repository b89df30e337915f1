"""Trees removed through the trash are gone from their place at once and deleted soon after."""

from __future__ import annotations

import os
import time

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
