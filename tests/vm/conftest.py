"""Fixtures of the VM tests: a home per test, the QEMU driver, and a leak check for QEMU and its waiters."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import pytest

from virtkit.config import Home
from virtkit.vm.qemu.driver import QemuDriver


def vm_processes() -> set[int]:
    """QEMUs of virtkit (named virtkit-<id>), virtkit-vmm processes and their waiters, by command line."""
    pids: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if (b"qemu-system" in cmd and b"virtkit-" in cmd) or b"virtkit.vm.qemu.waiter" in cmd \
                or b"virtkit.vm.kvm.cli" in cmd:
            pids.add(int(entry))
    return pids


@pytest.fixture(scope="session", autouse=True)
def no_vm_leaks() -> Iterator[None]:
    before = vm_processes()
    yield
    deadline = time.monotonic() + 5
    while (leaked := vm_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not leaked, f"the VM tests left QEMU processes behind: {sorted(leaked)}"


needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None or os.geteuid() != 0,
    reason="needs root and qemu-system-x86_64 (Debian: apt-get install qemu-system-x86)",
)


@pytest.fixture
def home(tmp_path: object) -> Home:
    h = Home(os.path.join(str(tmp_path), "vkhome"))
    h.ensure()
    return h


@pytest.fixture
def driver(home: Home) -> QemuDriver:
    return QemuDriver(home, None)
