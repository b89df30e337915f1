"""ext4 image files on autoclear loop devices (root): quota, unmount leaves no device, errors are clear."""

from __future__ import annotations

import errno
import os

import pytest

from tests.storage.helpers import loops_on, mounts_under
from virtkit.core.errors import SystemFailure
from virtkit.storage import ext4, loop
from virtkit.storage.volumes import VolumeFiles


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0 or not os.path.exists(loop.CONTROL):
        pytest.skip("needs root and /dev/loop-control")


def test_mount_quota_unmount_leaves_nothing(tmp_path):
    img, mnt = str(tmp_path / "disk.ext4"), tmp_path / "mnt"
    mnt.mkdir()
    ext4.make_image(img, 4 << 20)
    assert os.stat(img).st_blocks * 512 < 4 << 20                # sparse
    dev = ext4.mount_image(img, str(mnt))
    try:
        assert dev.startswith("/dev/loop") and loops_on(img) == [f"/dev/{dev[5:]}: {img}"]
        assert os.stat(mnt).st_uid == 0
        with open(mnt / "fill", "wb") as f, pytest.raises(OSError) as exc:
            for _ in range(8):
                f.write(b"\0" * (1 << 20))
                f.flush()
                os.fsync(f.fileno())
        assert exc.value.errno == errno.ENOSPC
    finally:
        ext4.unmount_image(img, str(mnt))
    assert mounts_under(str(tmp_path)) == [] and loops_on(img) == []


def test_unmount_with_a_busy_mount_is_lazy_and_still_frees_the_device(tmp_path):
    img, mnt = str(tmp_path / "disk.ext4"), tmp_path / "mnt"
    mnt.mkdir()
    ext4.make_image(img, 4 << 20)
    ext4.mount_image(img, str(mnt))
    f = open(mnt / "held", "w")            # keeps the filesystem busy
    try:
        ext4.unmount_image(img, str(mnt))
        assert mounts_under(str(tmp_path)) == []
    finally:
        f.close()
    for _ in range(100):                   # autoclear detaches once the last reference goes
        if not loops_on(img):
            break
        import time

        time.sleep(0.02)
    assert loops_on(img) == []


def test_volume_files_roundtrip(tmp_path):
    files = VolumeFiles(str(tmp_path / "volumes"))
    files.create("q", "ext4", 4 << 20)
    files.create("d", "dir", None)
    files.mount("q")
    files.mount("q")                       # idempotent: one mount, one device
    assert files.is_mounted("q") and len(loops_on(files.image_path("q"))) == 1
    assert files.usage("q", "ext4") is not None
    files.remove("q")
    files.remove("d")
    assert os.listdir(tmp_path / "volumes") == []
    assert mounts_under(str(tmp_path)) == [] and loops_on(str(tmp_path)) == []


def test_cleanup_drops_temp_leftovers_and_keeps_unknown_dirs(tmp_path):
    files = VolumeFiles(str(tmp_path / "volumes"))
    files.create("known", "dir", None)
    os.makedirs(tmp_path / "volumes" / ".tmp-half-1234" / "data")
    os.makedirs(tmp_path / "volumes" / "stranger" / "data")
    removed, unknown = files.cleanup({"known"})
    assert [os.path.basename(p) for p in removed] == [".tmp-half-1234"]
    assert [os.path.basename(p) for p in unknown] == ["stranger"]
    assert sorted(os.listdir(tmp_path / "volumes")) == ["known", "stranger"]
    with pytest.raises(SystemFailure, match="exists but no volume of that name is recorded"):
        files.create("stranger", "dir", None)
    assert os.path.isdir(tmp_path / "volumes" / "stranger" / "data")


def test_errors_are_clear(tmp_path):
    with pytest.raises(SystemFailure, match="cannot open .*missing"):
        loop.attach(str(tmp_path / "missing"))
    (tmp_path / "junk").write_bytes(b"\0" * (4 << 20))
    (tmp_path / "mnt").mkdir()
    with pytest.raises(SystemFailure, match="mount /dev/loop.*ext4"):
        ext4.mount_image(str(tmp_path / "junk"), str(tmp_path / "mnt"))
    assert loops_on(str(tmp_path)) == []                # the device of the failed mount went too
    (tmp_path / "exists").write_bytes(b"")
    with pytest.raises(SystemFailure, match="File exists"):
        ext4.make_image(str(tmp_path / "exists"), 4 << 20)
