"""The init layer (container/initlayer.py): placeholders under the image, where its /etc lets them be."""

from __future__ import annotations

import os
import stat

import pytest

from virtkit.container import initlayer


def test_it_is_made_once_complete_and_left_as_it_is(tmp_path):
    path = initlayer.ensure(str(tmp_path / initlayer.NAME))
    made = sorted(os.path.relpath(os.path.join(d, f), path) for d, _dirs, files in os.walk(path) for f in files)
    assert made == sorted(initlayer.PLACEHOLDERS)
    assert all(os.path.getsize(os.path.join(path, p)) == 0 for p in made)
    before = os.stat(path).st_ino
    assert initlayer.ensure(path) == path and os.stat(path).st_ino == before
    assert os.listdir(tmp_path) == [initlayer.NAME]        # no temporary left beside it


def test_it_fits_an_image_whose_etc_is_a_directory_or_absent(tmp_path):
    top, low = tmp_path / "top", tmp_path / "low"
    top.mkdir()
    low.mkdir()
    assert initlayer.fits([str(top), str(low)])             # no /etc at all
    (low / "etc").mkdir()
    assert initlayer.fits([str(top), str(low)])
    (top / "etc").symlink_to("/usr/etc")                    # the top-most entry decides: a symlink
    assert not initlayer.fits([str(top), str(low)])


@pytest.mark.root
def test_it_fits_where_a_layer_removed_etc(tmp_path):
    top, low = tmp_path / "top", tmp_path / "low"
    top.mkdir()
    low.mkdir()
    (low / "etc").symlink_to("/usr/etc")
    os.mknod(top / "etc", stat.S_IFCHR | 0o600, os.makedev(0, 0))   # an overlayfs whiteout
    assert initlayer.fits([str(top), str(low)])
