"""Upper dir -> OCI layer tar: whiteouts, opaque dirs, hardlinks, xattrs; and the image unpacker reads it back."""

from __future__ import annotations

import os
import tarfile

import pytest

from tests.storage.helpers import make_upper
from virtkit.core.errors import Unsupported
from virtkit.storage.layer import write_layer


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: mknod, trusted.* xattrs")


def test_layer_entries(tmp_path):
    upper = str(tmp_path / "upper")
    make_upper(upper, big=1 << 16)
    tar = str(tmp_path / "layer.tar")
    write_layer(upper, tar)
    with tarfile.open(tar) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert "etc/.wh.deleted" in members and members["etc/.wh.deleted"].isfile()
    assert "etc/deleted" not in members
    assert "opq/.wh..wh..opq" in members and members["opq"].isdir()
    assert not any("trusted.overlay" in k for m in members.values() for k in m.pax_headers)
    conf = members["etc/app/conf"]
    assert (conf.uid, conf.gid, conf.mode, conf.uname) == (1000, 1001, 0o4750, "")
    assert conf.pax_headers["SCHILY.xattr.user.note"] == "hello"
    assert members["etc/hardlink"].islnk() and members["etc/hardlink"].linkname == "etc/app/conf"
    assert members["etc/link"].issym() and members["etc/link"].linkname == "app/conf"
    assert members["fifo"].isfifo()
    again = str(tmp_path / "again.tar")
    write_layer(upper, again)
    with open(tar, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()


def test_unpacker_reads_it_back_as_overlay_upper(tmp_path):
    from virtkit.images.unpack import unpack_layer

    upper = str(tmp_path / "upper")
    make_upper(upper, big=1 << 16)
    tar = str(tmp_path / "layer.tar")
    write_layer(upper, tar)
    out = tmp_path / "out"
    unpack_layer(tar, out)
    st = os.lstat(out / "etc/deleted")
    assert st.st_rdev == 0 and (st.st_mode & 0o170000) == 0o020000           # a whiteout again
    assert os.getxattr(out / "opq", "trusted.overlay.opaque") == b"y"
    assert (out / "etc/app/conf").read_text() == "key=value\n"
    assert os.getxattr(out / "etc/app/conf", "user.note") == b"hello"


def test_redirected_dirs_are_refused(tmp_path):
    upper = tmp_path / "upper"
    (upper / "moved").mkdir(parents=True)
    os.setxattr(upper / "moved", "trusted.overlay.redirect", b"/old")
    with pytest.raises(Unsupported, match="redirect"):
        write_layer(str(upper), str(tmp_path / "l.tar"))
