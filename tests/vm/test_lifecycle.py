"""Booting real VMs under QEMU (TCG here): few boots, shared where a test can reuse one."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from virtkit.config import Home
from virtkit.core.errors import InvalidArgument, InvalidState, SystemFailure
from virtkit.core.models import Instance
from virtkit.vm.qemu import qmp
from virtkit.vm.qemu.driver import QemuDriver

from .conftest import needs_qemu, vm_processes

pytestmark = needs_qemu


def _instance(name: str, **spec: object) -> Instance:
    return Instance(id=os.urandom(16).hex(), name=name, type="vm", state="created", image="busybox", spec=spec)


def _wait_exit(drv: QemuDriver, inst: Instance, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while drv.exit_status(inst) is None:
        assert time.monotonic() < deadline, open(drv.log_path(inst)).read()
        time.sleep(0.05)


def _wait_console(drv: QemuDriver, inst: Instance, text: bytes, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if text in drv.console_output(inst):
            return
        assert time.monotonic() < deadline, f"no {text!r} on the console"
        time.sleep(0.02)


def test_busybox_vm_prints_the_cloud_kernel_version_and_returns_its_status(driver: QemuDriver) -> None:
    inst = _instance("uname", command=["sh", "-c", "uname -r; exit 7"])
    driver.create(inst)
    info = driver.info(inst)
    assert info["accel"] in ("tcg", "kvm") and info["accel_reason"]
    assert driver.status(inst) == "created"
    try:
        pid = driver.start(inst)
        assert pid > 0
        _wait_exit(driver, inst)
        status = driver.exit_status(inst)
        assert status is not None and (status.code, status.reason) == (7, "exited")
        assert driver.status(inst) == "stopped"
        console = open(driver.log_path(inst)).read()
        assert re.search(rf"^{re.escape(info['release'])}\r?$", console, re.M), console
        assert info["release"].endswith("-cloud-amd64")
    finally:
        driver.delete(inst)
    assert not os.path.exists(driver.vm_dir(inst))


@pytest.fixture(scope="module")
def running_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[QemuDriver, Instance]]:
    """One long-running guest shared by the tests below, in file order: pause/resume, stats, stop, kill."""
    home = Home(str(tmp_path_factory.mktemp("vm") / "vkhome"))
    home.ensure()
    drv = QemuDriver(home, None)
    inst = _instance("long", command=["sh", "-c", "echo ready; while true; do sleep 1; done"], memory="128M")
    drv.create(inst)
    drv.start(inst)
    _wait_console(drv, inst, b"ready")
    try:
        yield drv, inst
    finally:
        drv.delete(inst)


def test_pause_and_resume_through_qmp(running_vm: tuple[QemuDriver, Instance]) -> None:
    drv, inst = running_vm
    assert drv.status(inst) == "running"
    drv.pause(inst)
    assert qmp.query_status(drv.qmp_socket(inst))["status"] == "paused"
    assert drv.status(inst) == "paused"
    drv.resume(inst)
    assert qmp.query_status(drv.qmp_socket(inst))["status"] == "running"
    assert drv.status(inst) == "running"
    assert drv.exit_status(inst) is None


def test_stats_come_from_qemu(running_vm: tuple[QemuDriver, Instance]) -> None:
    drv, inst = running_vm
    stats = drv.stats(inst)
    assert stats["cpu_seconds"] > 0 and stats["memory_rss_bytes"] > 0
    assert stats["vcpus"] == 1 and stats["memory_bytes"] == 128 << 20


def test_stop_powers_the_guest_down_through_acpi(running_vm: tuple[QemuDriver, Instance]) -> None:
    drv, inst = running_vm
    drv.pause(inst)                      # a paused VM is resumed to hear the power button
    t0 = time.monotonic()
    drv.stop(inst, timeout=20)
    assert time.monotonic() - t0 < 15, "the guest ignored the ACPI powerdown"
    status = drv.exit_status(inst)
    assert status is not None and (status.code, status.reason) == (143, "stopped by ACPI powerdown")
    assert drv.status(inst) == "stopped"
    with pytest.raises(InvalidState):
        drv.pause(inst)


_START_ELSEWHERE = """
import sys
from virtkit.config import Home
from virtkit.core.models import Instance
from virtkit.vm.qemu.driver import QemuDriver
inst = Instance(id=sys.argv[2], name="long", type="vm", state="stopped", image="busybox")
print(QemuDriver(Home(sys.argv[1]), None).start(inst))
"""


def test_qemu_outlives_the_process_that_started_it_and_its_kill_is_seen(
        running_vm: tuple[QemuDriver, Instance]) -> None:
    drv, inst = running_vm
    # restarted by another process that then exits (as virtkitd would): QEMU runs on, this driver sees it,
    # and the previous run's exit marker on the console does not count for the new run
    out = subprocess.run([sys.executable, "-c", _START_ELSEWHERE, drv.home.root, inst.id],
                         capture_output=True, text=True, check=True)
    pid = int(out.stdout.strip())
    assert drv.exit_status(inst) is None and drv.status(inst) == "running"
    assert os.getppid() != pid and drv.stats(inst)["pid"] == pid
    _wait_console(drv, inst, b"ready")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while drv.exit_status(inst) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    status = drv.exit_status(inst)
    assert status is not None and (status.code, status.reason) == (137, "killed by SIGKILL")
    assert drv.status(inst) == "stopped"


@pytest.mark.parametrize("spec, message", [
    ({"memory": 0}, r"memory: a VM needs at least 64M"),
    ({"cpus": (os.cpu_count() or 1) + 1}, r"cpus: \d+ vCPUs asked, but this host has \d+ CPUs"),
    ({"kernel": "/nonexistent/vmlinuz"}, r"kernel: no such file: /nonexistent/vmlinuz"),
    ({"kernel": "/etc/hostname"}, r"kernel: not a bzImage"),
    ({"accel": "quantum"}, r"accel: must be one of"),
])
def test_bad_input_is_a_clear_error_and_leaves_nothing(driver: QemuDriver, home: Home, spec: dict,
                                                      message: str) -> None:
    before = vm_processes()
    inst = _instance("bad", command=["true"], **spec)
    with pytest.raises(InvalidArgument, match=message):
        driver.create(inst)
    assert not os.path.exists(driver.vm_dir(inst))
    assert not os.path.exists(os.path.join(home.root, "vms")) or not os.listdir(os.path.join(home.root, "vms"))
    assert vm_processes() <= before         # nothing new (a waiter of an earlier test may be ending)


@pytest.mark.skipif(not os.path.isdir("/sys/module/kvm_pvm"), reason="this host's KVM is not PVM")
def test_forcing_kvm_on_this_pvm_host_fails_clearly(driver: QemuDriver) -> None:
    inst = _instance("kvm", command=["true"], accel="kvm")
    with pytest.raises(InvalidArgument, match="accel: kvm cannot work on this host: .*PVM"):
        driver.create(inst)
    assert not os.path.exists(driver.vm_dir(inst))


def test_a_qemu_that_cannot_start_is_a_clear_error(driver: QemuDriver) -> None:
    inst = _instance("broken", command=["true"])
    driver.create(inst)
    try:
        os.unlink(os.path.join(driver.vm_dir(inst), "vmlinux"))
        with pytest.raises(SystemFailure, match="failed to start.*vmlinux"):
            driver.start(inst)
        assert driver.status(inst) == "stopped"
    finally:
        driver.delete(inst)


def test_initramfs_holds_busybox_init_and_the_virtio_modules_in_dependency_order() -> None:
    from virtkit.vm.qemu import initramfs, kernel

    kern = kernel.default_kernel()
    names = [os.path.basename(m) for m in kern.modules]
    for m in ("virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "virtio_blk.ko", "virtio_net.ko",
              "virtio_console.ko"):
        assert m in names
    assert names.index("virtio_ring.ko") < names.index("virtio.ko") < names.index("virtio_mmio.ko")
    with open(initramfs.build(kern, kernel.busybox()), "rb") as f:
        data = f.read()
    from .test_parts import _read_newc

    entries = _read_newc(data)
    assert entries["init"][1].startswith(b"#!/bin/busybox sh")
    assert entries["bin/busybox"][1][:4] == b"\x7fELF"
    assert entries["lib/modules/order"][1].decode().split() == names


def test_how_qemu_ended_is_told_apart_without_a_console_marker(driver: QemuDriver) -> None:
    """QEMU ends with status 0 both on a guest power-off and on SIGTERM: its stderr tells them apart."""
    import json

    inst = _instance("ended", command=["true"])
    driver.create(inst)
    try:
        d = driver.vm_dir(inst)
        with open(os.path.join(d, "run.json"), "w") as f:
            json.dump({"argv": [], "console_offset": 0}, f)
        with open(os.path.join(d, "exit.json"), "w") as f:
            json.dump({"code": 0, "reason": "exited", "finished_at": 1.0}, f)
        with open(os.path.join(d, "qemu.log"), "w") as f:
            f.write("qemu-system-x86_64: terminating on signal 15 from pid 1234 (python3)\n")
        status = driver.exit_status(inst)
        assert status is not None and (status.code, status.reason) == (143, "killed by SIGTERM")
        os.unlink(os.path.join(d, "qemu.log"))
        with open(driver.log_path(inst), "w") as f:
            f.write("virtkit-exit-status: 5\n")
        status = driver.exit_status(inst)
        assert status is not None and (status.code, status.reason) == (5, "exited")
        assert driver.status(inst) == "stopped"
    finally:
        driver.delete(inst)
