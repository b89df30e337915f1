"""The runtime's system calls (syscalls.py over the _linux extension): errors name the call and what it was given."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from virtkit.container import _linux
from virtkit.container import syscalls as sc
from virtkit.core.errors import SystemFailure


def test_a_failed_mount_names_source_and_destination(tmp_path):
    with pytest.raises(SystemFailure, match=r"^mount none on /the/label: (No such device|Operation not permitted)$"):
        sc.mount("none", str(tmp_path), "nosuchfs", 0, None, label="/the/label")


def test_arguments_of_the_wrong_kind_are_refused_before_any_call():
    with pytest.raises(TypeError, match="expected bytes or None, not str"):
        _linux.mount("str", b"/x", None, 0, None)
    with pytest.raises(ValueError, match="embedded null byte"):
        _linux.mount(b"a\0b", b"/x", None, 0, None)
    with pytest.raises(ValueError, match="whole number of BPF instructions"):
        _linux.seccomp_filter(0, b"\0" * 7)


def test_openat2_raises_oserror_with_the_path(tmp_path):
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(FileNotFoundError) as err:
            sc.openat2(fd, "missing", os.O_RDONLY, resolve=sc.RESOLVE_IN_ROOT)
        assert err.value.filename == "missing"
        (tmp_path / "here").write_text("x")
        got = sc.openat2(fd, "here", os.O_RDONLY, resolve=sc.RESOLVE_IN_ROOT)
        assert os.read(got, 1) == b"x" and os.get_inheritable(got) is False
        os.close(got)
    finally:
        os.close(fd)


def test_ioctl_returns_the_buffer_the_kernel_filled():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        out = sc.ioctl(s.fileno(), 0x8913, struct.pack("16sH14x", b"lo", 0))     # SIOCGIFFLAGS
        assert struct.unpack("16sH14x", out)[1] & 0x8                           # IFF_LOOPBACK
        with pytest.raises(SystemFailure, match="ioctl SIOCGIFFLAGS nosuch0"):
            sc.ioctl(s.fileno(), 0x8913, struct.pack("16sH14x", b"nosuch0", 0), label="SIOCGIFFLAGS nosuch0")
    finally:
        s.close()


def test_prctl_returns_the_kernels_answer():
    assert sc.prctl(sc.PR_GET_DUMPABLE) in (0, 1, 2)


@pytest.mark.root
def test_fork_sibling_makes_its_parents_child_as_pid_1():
    """A process forks a sibling into a new pid namespace: the sibling is PID 1 there, and its exit status goes
    to the grandparent (here), which reaps it, not to the process that forked it."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            pid = sc.fork_sibling(sc.CLONE_NEWPID)
            if pid == 0:
                os.write(w, f"{os.getpid()} {os.getppid()}\n".encode())
                os._exit(7)
            os.write(w, f"{pid}\n".encode())
            os._exit(0)
        finally:
            os._exit(2)
    os.close(w)
    assert os.waitpid(middle, 0)[1] == 0
    with os.fdopen(r) as f:
        lines = sorted(f.read().split("\n"))
    assert lines[1] == "1 0", lines             # PID 1, its parent outside its namespace
    sibling = int(lines[2])
    assert os.waitstatus_to_exitcode(os.waitpid(sibling, 0)[1]) == 7     # ours to reap


def test_fork_sibling_refuses_a_threaded_caller_and_flags_that_share():
    import threading

    with pytest.raises(ValueError, match="only name namespaces"):
        _linux.fork_sibling(0x100)          # CLONE_VM
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        with pytest.raises(SystemFailure, match="single-threaded"):
            sc.fork_sibling(0)
    finally:
        stop.set()
        t.join()
