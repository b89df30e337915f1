"""Suite-wide leak check: the run fails if it leaves mounts, cgroups or processes of virtkit behind."""

from __future__ import annotations

import os
import time

import pytest


def _virtkit_mounts() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f if "virtkit" in line or "vkhome" in line}


def _virtkit_cgroups() -> set[str]:
    found: set[str] = set()
    root = "/sys/fs/cgroup"
    for dirpath, dirs, _files in os.walk(root):
        for d in dirs:
            if "virtkit" in d:
                found.add(os.path.join(dirpath, d))
        if dirpath.count("/") >= root.count("/") + 2:
            dirs[:] = []
    return found


def _virtkit_processes() -> set[int]:
    """Daemons, supervisors and runtimes of virtkit (a test that leaks a container leaks one of these too)."""
    me = os.getpid()
    pids: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        markers = (b"virtkit.api.daemon", b"virtkit.container.supervisor", b"virtkit-runtime",
                   b"virtkit.vm.qemu.waiter", b"virtkit.vm.kvm.cli")
        if any(m in cmd for m in markers) or (b"qemu-system" in cmd and b"virtkit-" in cmd):
            pids.add(int(entry))
    return pids


@pytest.fixture(scope="session", autouse=True)
def no_leaks_after_the_suite() -> object:
    if os.geteuid() != 0:
        yield
        return
    before = (_virtkit_mounts(), _virtkit_cgroups(), _virtkit_processes())
    yield
    deadline = time.monotonic() + 5      # processes told to stop may take a moment to go
    while True:
        after = (_virtkit_mounts(), _virtkit_cgroups(), _virtkit_processes())
        leaked = [a - b for a, b in zip(after, before, strict=False)]
        if not any(leaked) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    what = ("mounts", "cgroups", "processes")
    problems = {w: sorted(map(str, x)) for w, x in zip(what, leaked, strict=False) if x}
    assert not problems, f"the test run left virtkit objects behind: {problems}"
