"""unpack_layer: metadata, overlay whiteouts (checked through a real overlayfs mount), and each unsafe trick."""

from __future__ import annotations

import ctypes
import os
import stat
from pathlib import Path

import pytest
from images_helpers import E, as_root

from virtkit.core.errors import InvalidArgument, UnsafeArchive
from virtkit.images.unpack import OPAQUE_XATTR, unpack_layer

# struct vfs_cap_data, revision 2, effective, permitted = CAP_NET_BIND_SERVICE (bit 10).
CAP_NET_BIND_SERVICE = "\x01\x00\x00\x02" + "\x00\x04\x00\x00" + "\x00" * 12


def _mount_overlay(lowers_top_first: list[Path], target: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    opts = "lowerdir=" + ":".join(str(p) for p in lowers_top_first)
    if libc.mount(b"overlay", str(target).encode(), b"overlay", 1, opts.encode()) != 0:  # MS_RDONLY
        err = ctypes.get_errno()
        raise OSError(err, f"mount overlay: {os.strerror(err)}")


def _umount(target: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(str(target).encode(), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount: {os.strerror(err)}")


@as_root
def test_metadata_is_preserved(tmp_path: Path, tar_factory) -> None:
    tar = tar_factory([
        E("dir", "d", mode=0o750, uid=12, gid=34, mtime=1_111_111_111),
        E("file", "d/suid", b"#!x\n", mode=0o4755, uid=5, gid=6, mtime=1_222_222_222),
        E("file", "d/attr", b"x", xattrs={"user.virtkit": "yes", "security.capability": CAP_NET_BIND_SERVICE}),
        E("hardlink", "d/alias", link="d/suid"),
        E("symlink", "d/passwd", link="/etc/passwd", uid=7, gid=8),
        E("symlink", "d/up", link="../../../x"),
        E("fifo", "d/pipe", mode=0o600),
        E("file", "implicit/parent/file", b"deep"),
    ])
    dest = tmp_path / "layer"
    unpack_layer(tar, dest)
    d = dest / "d"
    st = d.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)) == (0o750, 12, 34, 1_111_111_111)
    st = (d / "suid").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)) == (0o4755, 5, 6, 1_222_222_222)
    assert os.getxattr(d / "attr", "user.virtkit") == b"yes"
    assert os.getxattr(d / "attr", "security.capability") == CAP_NET_BIND_SERVICE.encode()
    assert (d / "alias").stat().st_ino == st.st_ino and st.st_nlink == 2
    # Symlinks in the image are kept as they are: they resolve inside the container, never here.
    assert os.readlink(d / "passwd") == "/etc/passwd" and os.readlink(d / "up") == "../../../x"
    assert os.lstat(d / "passwd").st_uid == 7
    assert stat.S_ISFIFO(os.lstat(d / "pipe").st_mode)
    assert (dest / "implicit" / "parent" / "file").read_bytes() == b"deep"


@as_root
def test_later_entries_replace_earlier_ones(tmp_path: Path, tar_factory) -> None:
    tar = tar_factory([
        E("symlink", "x", link="/etc"), E("file", "x", b"now a file"),
        E("dir", "y"), E("file", "y/in", b"1"), E("symlink", "y", link="elsewhere"),
    ])
    dest = tmp_path / "layer"
    unpack_layer(tar, dest)
    assert (dest / "x").read_bytes() == b"now a file" and not (dest / "x").is_symlink()
    assert os.readlink(dest / "y") == "elsewhere"


@as_root
def test_whiteouts_and_opaque_dirs_work_in_a_real_overlay(tmp_path: Path, tar_factory) -> None:
    lower = tmp_path / "lower"
    unpack_layer(tar_factory([
        E("file", "gone", b"old"), E("dir", "d"), E("file", "d/a", b"a"), E("file", "d/b", b"b"),
        E("dir", "opq"), E("file", "opq/hidden", b"h"), E("dir", "opq/sub"),
    ]), lower)
    upper = tmp_path / "upper"
    unpack_layer(tar_factory([
        E("file", ".wh.gone"), E("dir", "d"), E("file", "d/.wh.a"),
        E("dir", "opq"), E("file", "opq/.wh..wh..opq"), E("file", "opq/new", b"n"),
    ]), upper, [lower])

    st = os.lstat(upper / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert stat.S_ISCHR(os.lstat(upper / "d" / "a").st_mode)
    assert os.getxattr(upper / "opq", OPAQUE_XATTR) == b"y"
    assert not any(p.name.startswith(".wh.") for p in upper.rglob("*"))

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    _mount_overlay([upper, lower], mnt)
    try:
        assert not (mnt / "gone").exists()
        assert sorted(os.listdir(mnt / "d")) == ["b"]
        assert sorted(os.listdir(mnt / "opq")) == ["new"]
        assert (mnt / "opq" / "new").read_bytes() == b"n"
    finally:
        _umount(mnt)


@as_root
def test_a_directory_may_replace_a_lower_symlink(tmp_path: Path, tar_factory, sentinel) -> None:
    lower = tmp_path / "lower"
    unpack_layer(tar_factory([E("symlink", "etc", link=str(sentinel.dir))]), lower)
    upper = tmp_path / "upper"
    unpack_layer(tar_factory([E("dir", "etc"), E("file", "etc/conf", b"c")]), upper, [lower])
    assert (upper / "etc" / "conf").read_bytes() == b"c"


# -- one test per trick: UnsafeArchive naming the entry, dest gone, nothing written outside ----------


def _refused(tar: Path, dest: Path, entry: str, lowers: list[Path] | None = None) -> None:
    with pytest.raises(UnsafeArchive) as info:
        unpack_layer(tar, dest, lowers or [])
    assert repr(entry) in str(info.value), str(info.value)
    assert not dest.exists()


def test_dotdot_name_is_refused(tmp_path: Path, tar_factory, sentinel) -> None:
    tar = tar_factory([E("file", "ok", b"1"), E("file", "../outside/sentinel", b"pwned")])
    _refused(tar, tmp_path / "layer", "../outside/sentinel")


def test_dotdot_inside_a_name_is_refused(tmp_path: Path, tar_factory, sentinel) -> None:
    tar = tar_factory([E("dir", "a"), E("file", "a/../../outside/new", b"pwned")])
    _refused(tar, tmp_path / "layer", "a/../../outside/new")


def test_absolute_name_is_refused(tmp_path: Path, tar_factory, sentinel) -> None:
    name = str(sentinel.dir / "new")
    tar = tar_factory([E("file", "ok", b"1"), E("file", name, b"pwned")])
    _refused(tar, tmp_path / "layer", name)


@as_root
def test_write_through_symlink_in_same_layer_is_refused(tmp_path: Path, tar_factory, sentinel) -> None:
    tar = tar_factory([E("symlink", "evil", link=str(sentinel.dir)), E("file", "evil/new", b"pwned")])
    _refused(tar, tmp_path / "layer", "evil/new")


@as_root
def test_write_through_relative_escaping_symlink_is_refused(tmp_path: Path, tar_factory, sentinel) -> None:
    tar = tar_factory([E("dir", "a"), E("symlink", "a/up", link="../../outside"), E("file", "a/up/sentinel", b"x")])
    _refused(tar, tmp_path / "layer", "a/up/sentinel")


@as_root
def test_whiteout_through_symlink_is_refused(tmp_path: Path, tar_factory, sentinel) -> None:
    tar = tar_factory([E("symlink", "evil", link=str(sentinel.dir)), E("file", "evil/.wh.sentinel")])
    _refused(tar, tmp_path / "layer", "evil/.wh.sentinel")


@as_root
def test_write_through_symlink_in_lower_layer_is_refused(tmp_path: Path, tar_factory, sentinel) -> None:
    lower = tmp_path / "lower"
    unpack_layer(tar_factory([E("dir", "usr"), E("symlink", "usr/lib", link=str(sentinel.dir))]), lower)
    tar = tar_factory([E("file", "ok", b"1"), E("file", "usr/lib/sentinel", b"pwned")])
    _refused(tar, tmp_path / "layer", "usr/lib/sentinel", [lower])
    assert os.readlink(lower / "usr" / "lib") == str(sentinel.dir)  # lower layers are only read


@as_root
def test_lower_symlink_hidden_by_a_whiteout_is_not_a_problem(tmp_path: Path, tar_factory) -> None:
    bottom = tmp_path / "bottom"
    unpack_layer(tar_factory([E("symlink", "lib", link="/")]), bottom)
    middle = tmp_path / "middle"
    unpack_layer(tar_factory([E("file", ".wh.lib")]), middle, [bottom])
    top = tmp_path / "top"
    unpack_layer(tar_factory([E("file", "lib/x", b"x")]), top, [bottom, middle])
    assert (top / "lib" / "x").read_bytes() == b"x"


@as_root
def test_hardlink_escaping_the_layer_is_refused(tmp_path: Path, tar_factory, sentinel) -> None:
    tar = tar_factory([E("file", "ok", b"1"), E("hardlink", "h", link="../outside/sentinel")])
    _refused(tar, tmp_path / "layer", "h")


@as_root
def test_hardlink_to_absolute_host_path_is_refused(tmp_path: Path, tar_factory, sentinel) -> None:
    tar = tar_factory([E("hardlink", "h", link=str(sentinel.file))])
    _refused(tar, tmp_path / "layer", "h")


@as_root
def test_hardlink_through_a_symlink_is_refused(tmp_path: Path, tar_factory, sentinel) -> None:
    tar = tar_factory([E("symlink", "s", link=str(sentinel.dir)), E("hardlink", "h", link="s/sentinel")])
    _refused(tar, tmp_path / "layer", "h")


@as_root
def test_hardlink_to_a_missing_target_is_refused(tmp_path: Path, tar_factory) -> None:
    tar = tar_factory([E("hardlink", "h", link="nowhere")])
    _refused(tar, tmp_path / "layer", "h")


@as_root
def test_char_device_is_refused(tmp_path: Path, tar_factory, sentinel) -> None:
    tar = tar_factory([E("file", "ok", b"1"), E("chr", "dev/mem")])
    _refused(tar, tmp_path / "layer", "dev/mem")


@as_root
def test_block_device_is_refused(tmp_path: Path, tar_factory, sentinel) -> None:
    tar = tar_factory([E("file", "ok", b"1"), E("blk", "dev/sda")])
    _refused(tar, tmp_path / "layer", "dev/sda")


@as_root
def test_overlay_private_xattr_is_refused(tmp_path: Path, tar_factory) -> None:
    tar = tar_factory([E("dir", "d", xattrs={"trusted.overlay.redirect": "/etc"})])
    _refused(tar, tmp_path / "layer", "d")


def test_dest_must_be_new_or_empty(tmp_path: Path, tar_factory) -> None:
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(InvalidArgument, match="dest"):
        unpack_layer(tar_factory([E("file", "a", b"a")]), dest)
    assert (dest / "keep").read_text() == "mine"


def test_corrupt_archive_is_invalid_and_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 50)
    with pytest.raises(InvalidArgument):
        unpack_layer(bad, tmp_path / "layer")
    assert not (tmp_path / "layer").exists()
