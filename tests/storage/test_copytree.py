"""copy_tree keeps everything an overlay upper dir holds (root: chown, mknod, trusted.* xattrs)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.storage.helpers import describe, make_upper
from virtkit.core.errors import SystemFailure
from virtkit.storage.copytree import copy_tree

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: chown, mknod, trusted.* xattrs")


@pytest.mark.parametrize("workers", [0, 4])
def test_copy_is_exact(tmp_path, workers):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_upper(src)
    size = copy_tree(src, dst, workers=workers)
    assert describe(dst) == describe(src)
    assert os.lstat(dst).st_mtime_ns == os.lstat(src).st_mtime_ns
    assert os.lstat(os.path.join(dst, "etc/hardlink")).st_ino == os.lstat(os.path.join(dst, "etc/app/conf")).st_ino
    assert os.lstat(os.path.join(dst, "sparse")).st_blocks * 512 < 1 << 20      # holes stay holes
    du = int(subprocess.run(["du", "-s", "-B1", src], capture_output=True, text=True).stdout.split()[0])
    assert abs(size - du) <= 64 << 10, (size, du)


def test_copy_matches_cp_a(tmp_path):
    src = str(tmp_path / "src")
    make_upper(src, big=1 << 20)
    copy_tree(src, str(tmp_path / "ours"))
    subprocess.run(["cp", "-a", src, str(tmp_path / "cp")], check=True)
    assert describe(str(tmp_path / "ours")) == describe(str(tmp_path / "cp"))


def test_errors_are_clear(tmp_path):
    with pytest.raises(SystemFailure, match="missing"):
        copy_tree(str(tmp_path / "missing"), str(tmp_path / "dst"))
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    with pytest.raises(SystemFailure, match="File exists"):
        copy_tree(str(tmp_path / "src"), str(tmp_path / "dst"))
