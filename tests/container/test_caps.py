"""Capabilities: names, validation, and capset/bounding/ambient for real in a forked child."""

from __future__ import annotations

import ctypes
import os
import time

import pytest

from tests.container.forked import in_child
from virtkit.container import caps
from virtkit.core.errors import InvalidArgument

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hold capabilities")




def test_names_and_numbers():
    assert caps.CAPS["CAP_CHOWN"] == 0
    assert caps.CAPS["CAP_NET_RAW"] == 13
    assert caps.CAPS["CAP_SYS_ADMIN"] == 21
    assert caps.CAPS["CAP_CHECKPOINT_RESTORE"] == 40
    assert len(caps.CAPS) == 41


def test_virtkit_default_drops_raw_sockets_and_mknod():
    assert "CAP_NET_RAW" in caps.DEFAULT_CAPS and "CAP_MKNOD" in caps.DEFAULT_CAPS
    assert "CAP_NET_RAW" not in caps.VIRTKIT_DEFAULT_CAPS and "CAP_MKNOD" not in caps.VIRTKIT_DEFAULT_CAPS
    assert set(caps.VIRTKIT_DEFAULT_CAPS) < set(caps.DEFAULT_CAPS)


def test_validate_names_unknown_capability():
    caps.validate(None)
    caps.validate({"bounding": caps.DEFAULT_CAPS, "ambient": []})
    with pytest.raises(InvalidArgument, match="CAP_FLY"):
        caps.validate({"effective": ["CAP_CHOWN", "CAP_FLY"]})
    with pytest.raises(InvalidArgument, match="process.capabilities.sideways"):
        caps.validate({"sideways": []})


def _mask(names):
    return sum(1 << caps.CAPS[n] for n in names)


@pytest.mark.root
@needs_root
def test_apply_sets_exactly_the_requested_sets():
    want = {"bounding": caps.VIRTKIT_DEFAULT_CAPS, "effective": caps.VIRTKIT_DEFAULT_CAPS,
            "permitted": caps.VIRTKIT_DEFAULT_CAPS, "inheritable": [], "ambient": []}

    def child():
        caps.drop_bounding(want)
        caps.apply(want)
        return caps.current()

    got = in_child(child)
    assert got["CapBnd"] == _mask(caps.VIRTKIT_DEFAULT_CAPS)
    assert got["CapEff"] == _mask(caps.VIRTKIT_DEFAULT_CAPS)
    assert got["CapPrm"] == _mask(caps.VIRTKIT_DEFAULT_CAPS)
    assert got["CapInh"] == 0
    assert got["CapAmb"] == 0


@pytest.mark.root
@needs_root
def test_ambient_raise():
    want = {"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL", "CAP_CHOWN"],
            "permitted": ["CAP_KILL", "CAP_CHOWN"], "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]}

    def child():
        caps.drop_bounding(want)
        caps.apply(want)
        return caps.current()

    got = in_child(child)
    assert got["CapAmb"] == _mask(["CAP_KILL"])
    assert got["CapInh"] == _mask(["CAP_KILL"])


@pytest.mark.root
@needs_root
def test_dropped_sys_time_makes_clock_settime_fail_eperm():
    # what this process may hold (a sandbox may lack some), less CAP_SYS_TIME
    keep = [c for c in caps.names(caps.current()["CapPrm"]) if c != "CAP_SYS_TIME"]
    want = {"bounding": keep, "effective": keep, "permitted": keep, "inheritable": []}

    def child():
        caps.drop_bounding(want)
        caps.apply(want)
        libc = ctypes.CDLL(None, use_errno=True)

        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]
        now = Timespec(int(time.time()), 0)
        res = libc.clock_settime(0, ctypes.byref(now))  # CLOCK_REALTIME; refused before it changes
        return [res, ctypes.get_errno(), caps.current()["CapBnd"] >> caps.CAPS["CAP_SYS_TIME"] & 1]

    res, err, bnd = in_child(child)
    assert (res, err, bnd) == (-1, 1, 0)


@pytest.mark.root
@needs_root
def test_ambient_without_inheritable_is_refused_before_anything_changes():
    bad = {"permitted": ["CAP_KILL"], "effective": ["CAP_KILL"], "ambient": ["CAP_KILL"]}

    def child():
        before = caps.current()
        try:
            caps.apply(bad)
        except InvalidArgument as exc:
            return [str(exc), caps.current() == before]
        return ["no error", False]

    message, unchanged = in_child(child)
    assert "ambient" in message and unchanged
