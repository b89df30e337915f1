"""A home's directories (config.Home)."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess

import pytest

from virtkit.config import _FS_IOC_GETFLAGS, _FS_TOPDIR_FL, Home, spread_subdirs


def _flags(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(4)))[0])
    finally:
        os.close(fd)


def _fstype(path: str) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True, check=True).stdout.strip()


def test_instances_and_their_state_are_made_where_ext4_spreads_them(tmp_path):
    if _fstype(str(tmp_path)) not in ("ext2/ext3",):    # stat -f names ext4 so
        pytest.skip(f"{tmp_path} is not on ext2/3/4 (the flag is theirs alone)")
    home = Home(str(tmp_path / "home"))
    home.ensure()
    # what `lsattr -d` shows as T: new directories in them go to a group with room (see spread_subdirs)
    assert _flags(home.containers) & _FS_TOPDIR_FL
    assert _flags(home.runtime_root) & _FS_TOPDIR_FL
    out = subprocess.run(["lsattr", "-d", home.containers], capture_output=True, text=True, check=True).stdout
    assert "T" in out.split()[0], out


def test_spreading_is_a_no_op_where_the_file_system_has_no_such_flag(tmp_path):
    spread_subdirs(str(tmp_path / "missing"))            # gone: nothing to mark, no error
    spread_subdirs("/proc")                              # no FS_IOC_GETFLAGS there: no error either
